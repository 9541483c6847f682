"""`adallava demo`: the adaptive engine end to end on a tiny random Llava (no download, seconds).

Until the bundled trained models exist, this is the README's main command. It says plainly that the
model is random: the answers are noise, but the plans, the budgets they keep, the FLOPs and the
timings are real.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from adallava.core.config import AdaptiveConfig
from adallava.engine.llava import AdaLlava
from adallava.testing import tiny_inputs, tiny_llava


def parse_budgets(text: str) -> list[float | str]:
    """'0.5,0.75,1.0' -> [0.5, 0.75, 1.0]; FLOPs caps such as '2G' stay strings."""
    budgets: list[float | str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"--budgets {text!r} has an empty item; write e.g. 0.5,0.75,1.0")
        try:
            budgets.append(float(item))
        except ValueError:
            budgets.append(item)
    return budgets


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the adaptive engine on a tiny random model (no trained model needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--budgets", default="0.5,0.75,1.0", help="one budget per request (default: %(default)s)"
    )
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the random model")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    budgets = parse_budgets(args.budgets)
    base = tiny_llava(seed=args.seed, num_layers=args.layers)
    torch.manual_seed(args.seed)
    model = AdaLlava.from_base(base, AdaptiveConfig()).eval()
    with torch.no_grad():  # a random head gives near-ties; sharpen it so plans visibly depend on input
        model.scheduler.head.weight.mul_(50)
    inputs = tiny_inputs(base.config, [4 + 3 * i for i in range(len(budgets))], "left", seed=args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            budget=budgets,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
        )
    elapsed_ms = (time.perf_counter() - start) * 1e3
    width = inputs["input_ids"].shape[1]
    rows = []
    for r, budget in enumerate(budgets):
        rows.append(
            {
                "budget": budget,
                "fraction": float(out.budget[r]),
                "plan": out.plan.executed_layers()[r],
                "tokens": out.sequences[r, width:].tolist(),
                "prefill_flops": out.prefill_cost.summary(r),
                "full_prefill_flops": out.full_prefill_cost.summary(r),
                "decode_flops": out.decode_cost.summary(r),
            }
        )
    if args.json:
        print(
            json.dumps(
                {"model": "tiny random Llava (untrained)", "batch_ms": elapsed_ms, "rows": rows}, indent=2
            )
        )
        return 0
    print(
        f"NOTE: a tiny RANDOM Llava ({args.layers} layers, untrained): its answers are noise. The plans, the "
        "budgets they keep and the FLOPs are real.\n"
    )
    print(
        f"{'budget':>8}  {'layers run':<{args.layers + 6}} {'LLM FLOPs':>11} {'of full':>8} "
        f"{'total FLOPs':>12}"
    )
    for row in rows:
        strip = "".join("█" if i in row["plan"] else "·" for i in range(args.layers))
        llm, full = row["prefill_flops"]["llm"], row["full_prefill_flops"]["llm"]
        print(
            f"{row['budget']!s:>8}  {strip:<{args.layers}} {len(row['plan']):>2}/{args.layers:<4} "
            f"{llm / 1e6:>10.2f}M {llm / full:>8.3f} {row['prefill_flops']['total'] / 1e6:>11.2f}M"
        )
    print(
        f"\none batch of {len(budgets)} mixed-budget requests, {args.max_new_tokens} new tokens: "
        f"{elapsed_ms:.0f} ms"
    )
    return 0
