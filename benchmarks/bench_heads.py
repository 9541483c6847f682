"""AdaLLaVA-H speed: prefill and per-token decode time of head plans at budgets 0.5 / 0.75 / 1.0
against the cost model's ideal FLOPs ratio, the one-off cost of building sliced weights for a new
plan, and the strategies for batches that mix head plans (rows grouped by plan on sliced weights vs
masked full compute vs one request at a time). Writes benchmarks/results/heads.json.

    python benchmarks/bench_heads.py                    # CPU default: 16 layers, hidden 1024, 16 heads
    python benchmarks/bench_heads.py --layers 32 --hidden 4096 --intermediate 11008 --heads 32 --rank 8 \\
        --dtype bfloat16 --device cuda                  # LLaVA-1.5-7B text shape on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adallava import AdaLlava, AdaptiveConfig
from adallava.engine import hf_compat
from adallava.testing import tiny_inputs  # noqa: E402
from bench_prefill import add_shape_arguments, build  # noqa: E402
from common import machine, time_interleaved, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_shape_arguments(parser)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    layer_model = build(args)
    model = AdaLlava.from_base(layer_model.llava, AdaptiveConfig(switches="head", rank=args.rank)).eval()
    with torch.no_grad():  # random scheduler: sharpen it so plans differ across budgets and rows
        model.scheduler.head.weight.mul_(50)
    dtype = getattr(torch, args.dtype)

    def make_inputs(batch: int) -> dict:
        inputs = tiny_inputs(model.config, [args.text_tokens] * batch, seed=batch)
        inputs = {k: v.to(args.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return inputs

    single = make_inputs(1)

    def prefill(inputs, **kw):
        with torch.no_grad():
            return model(**inputs, logits_to_keep=1, use_cache=True, **kw)

    def decode(inputs, steps, **kw):
        """`steps` decoding steps after a prefill (the prefill is not what this times)."""
        with torch.no_grad():
            out = model(**inputs, use_cache=True, logits_to_keep=1, **kw)
            cache = hf_compat.output_cache(out)
            mask = torch.ones(1, cache.get_seq_length(), dtype=torch.long)
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(steps):
                mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
                step = model(input_ids=token, attention_mask=mask, cache=cache, plan=out.plan,
                             logits_to_keep=1)  # fmt: skip
                token = step.logits[:, -1:].argmax(-1)
            return (time.perf_counter() - start) * 1e3 / steps

    budgets = (1.0, 0.75, 0.5)
    # One-off: building the sliced weights of a plan never seen before.
    model.slices.clear()
    start = time.perf_counter()
    prefill(single, budget=0.75)
    first_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    prefill(single, budget=0.75)
    again_ms = (time.perf_counter() - start) * 1e3

    calls = {f"prefill {b}": (lambda b=b: prefill(single, budget=b)) for b in budgets}
    timings = time_interleaved(calls, args.repeats)
    decode_samples = {b: [] for b in budgets}
    for _ in range(args.repeats):  # interleaved too: one decode run per budget per round
        for b in budgets:
            decode_samples[b].append(decode(single, args.new_tokens, budget=b))

    rows = []
    for b in budgets:
        out = prefill(single, budget=b)
        decode_ms = sorted(decode_samples[b])[len(decode_samples[b]) // 2]
        with torch.no_grad():
            gen = model.generate(
                **single, budget=b, max_new_tokens=args.new_tokens + 1, min_new_tokens=args.new_tokens + 1,
                do_sample=False, return_dict_in_generate=True,
            )  # fmt: skip
        rows.append(
            {
                "budget": b,
                "prefill_ms": timings[f"prefill {b}"]["median_ms"],
                "decode_ms_per_token": decode_ms,
                "ideal_prefill_flops_ratio": float(out.cost.total[0] / out.full_cost.total[0]),
                "ideal_llm_flops_ratio": float(out.cost.llm[0] / out.full_cost.llm[0]),
                "decode_flops": float(gen.decode_cost.total[0]),
                "head_units_on": int(out.plan.heads[0].sum()),
                "mlp_groups_on": int(out.plan.mlp[0].sum()),
            }
        )
    full = rows[0]
    full_decode_flops = rows[0]["decode_flops"]
    for row in rows:
        row["prefill_time_ratio"] = row["prefill_ms"] / full["prefill_ms"]
        row["decode_time_ratio"] = row["decode_ms_per_token"] / full["decode_ms_per_token"]
        row["ideal_decode_flops_ratio"] = row["decode_flops"] / full_decode_flops

    # Mixed head plans in one batch: the three execution strategies.
    mixed = make_inputs(4)
    mixed_budgets = [0.5, 0.75, 1.0, 0.6]
    singles = [{k: v[r : r + 1] for k, v in mixed.items()} for r in range(4)]

    def run_masked():
        model.head_execution = "masked"
        try:
            prefill(mixed, budget=mixed_budgets)
        finally:
            model.head_execution = "sliced"

    strategies = time_interleaved(
        {
            "grouped sliced (default)": lambda: prefill(mixed, budget=mixed_budgets),
            "masked full compute": run_masked,
            "one request at a time": lambda: [
                prefill(x, budget=b) for x, b in zip(singles, mixed_budgets, strict=True)
            ],
            "all at budget 1.0": lambda: prefill(mixed, budget=1.0),
        },
        args.repeats,
    )
    ideal = prefill(mixed, budget=mixed_budgets)
    ideal_ratio = float(ideal.cost.total.sum() / ideal.full_cost.total.sum())

    payload = {
        "benchmark": "heads",
        "shape": vars(args) | {"out": None},
        "machine": machine(),
        "slicing": {
            "first_prefill_ms": first_ms,
            "cached_prefill_ms": again_ms,
            "one_off_ms": first_ms - again_ms,
        },
        "rows": rows,
        "mixed_batch": {"budgets": mixed_budgets, "ideal_flops_ratio": ideal_ratio, "strategies": strategies},
    }
    path = write_json("heads", payload, args.out)
    print(
        f"AdaLLaVA-H, {args.layers} layers x hidden {args.hidden}, {args.heads} heads (rank {args.rank}), "
        f"{args.dtype} on {args.device}"
    )
    print(
        f"{'budget':>6} {'prefill ms':>10} {'ratio':>6} {'ideal':>6} "
        f"{'decode ms/tok':>13} {'ratio':>6} {'ideal':>6}"
    )
    for row in rows:
        print(
            f"{row['budget']:>6} {row['prefill_ms']:>10.1f} {row['prefill_time_ratio']:>6.3f} "
            f"{row['ideal_prefill_flops_ratio']:>6.3f} {row['decode_ms_per_token']:>13.2f} "
            f"{row['decode_time_ratio']:>6.3f} {row['ideal_decode_flops_ratio']:>6.3f}"
        )
    print(
        f"building sliced weights for a new plan: {first_ms - again_ms:.0f} ms once "
        f"(first prefill {first_ms:.0f} ms, cached {again_ms:.0f} ms)"
    )
    print(f"mixed batch {mixed_budgets} (ideal FLOPs ratio {ideal_ratio:.3f} of all-full):")
    for name, timing in strategies.items():
        print(f"  {name:<26} {timing['median_ms']:>9.1f} ms")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
