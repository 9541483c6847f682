"""Prefill wall-clock at budgets 0.5 / 0.75 / 1.0 on a random AdaLLaVA-L of realistic shape.

Skipped layers must show up as saved time: the report puts the measured time ratio (vs budget 1.0)
next to the ideal ratio of decoder layers run, and the ideal ratio of total prefill FLOPs from the
cost model when available. Writes benchmarks/results/prefill.json.

    python benchmarks/bench_prefill.py                 # CPU default: 16 layers, hidden 1024
    python benchmarks/bench_prefill.py --layers 32 --hidden 4096 --intermediate 11008 --heads 32 \
        --dtype bfloat16 --device cuda                 # LLaVA-1.5-7B text shape on a GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adallava import AdaLlava, AdaptiveConfig  # noqa: E402
from adallava.testing import tiny_inputs, tiny_llava_config  # noqa: E402
from common import machine, time_interleaved, write_json  # noqa: E402


def build(args) -> AdaLlava:
    config = tiny_llava_config(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.heads,
        intermediate_size=args.intermediate,
        vocab_size=args.vocab,
        image_size=args.image_size,
        patch_size=args.patch,
        vision_layers=2,
        vision_hidden=64,
        attn_implementation=args.attn,
    )
    config.text_config.max_position_embeddings = 4096
    torch.manual_seed(0)
    with torch.device(args.device):
        base = LlavaForConditionalGeneration(config).to(getattr(torch, args.dtype)).eval()
    return AdaLlava.from_base(base, AdaptiveConfig()).eval()


def add_shape_arguments(parser: argparse.ArgumentParser, heads: int = 16) -> None:
    """The random model's shape (defaults: a 16-layer, 1024-wide Llama with LLaVA-1.5's 576 image tokens)."""
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=heads)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--patch", type=int, default=14, help="336/14 -> 576 image tokens, as LLaVA-1.5")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_shape_arguments(parser)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build(args)
    inputs = tiny_inputs(model.config, [args.text_tokens] * args.batch, seed=0)
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, args.dtype))
    tokens = inputs["input_ids"].shape[1]

    def prefill(**kw):
        with torch.no_grad():
            return model(**inputs, logits_to_keep=1, use_cache=True, **kw)

    budgets = (1.0, 0.75, 0.5)
    calls = {"base": lambda: prefill()} | {str(b): (lambda b=b: prefill(budget=b)) for b in budgets}
    mixed_budgets = None
    if args.batch >= 4:
        mixed_budgets = torch.tensor([0.5, 0.75, 1.0, 0.75] * (args.batch // 4), device=args.device)
        calls["mixed"] = lambda: prefill(budget=mixed_budgets)
    timings = time_interleaved(calls, args.repeats)

    rows = [{"budget": None, "layers_run": args.layers, **timings["base"]}]
    for budget in budgets:
        out = prefill(budget=budget)
        layers_run = int(out.plan.layers[0].sum())
        flops_ratio = float((out.cost.total / out.full_cost.total).mean())  # the cost model's ideal
        rows.append(
            {
                "budget": budget,
                "layers_run": layers_run,
                "ideal_flops_ratio": flops_ratio,
                **timings[str(budget)],
            }
        )
    full_ms, base_ms = rows[1]["median_ms"], rows[0]["median_ms"]
    for row in rows[1:]:
        row["ideal_layer_ratio"] = row["layers_run"] / args.layers
        row["measured_time_ratio"] = row["median_ms"] / full_ms
        row["time_ratio_vs_base"] = row["median_ms"] / base_ms

    mixed = None
    if mixed_budgets is not None:
        layers = prefill(budget=mixed_budgets).plan.layers.sum().item()
        mixed = {
            "budgets": mixed_budgets.tolist(),
            **timings["mixed"],
            "ideal_layer_ratio": layers / (args.layers * args.batch),
            "measured_time_ratio": timings["mixed"]["median_ms"] / full_ms,
        }

    payload = {
        "benchmark": "prefill",
        "shape": vars(args) | {"out": None, "tokens": tokens},
        "machine": machine(),
        "rows": rows,
        "mixed_batch": mixed,
    }
    path = write_json("prefill", payload, args.out)
    print(
        f"prefill, {args.layers} layers x hidden {args.hidden}, {tokens} tokens, batch {args.batch}, "
        f"{args.dtype} on {args.device}"
    )
    print(
        f"{'budget':>7} {'layers':>6} {'ms':>9} {'time ratio':>10} {'ideal (layers)':>14} "
        f"{'ideal (FLOPs)':>13} {'vs base':>8}"
    )
    print(f"{'base':>7} {args.layers:>6} {rows[0]['median_ms']:>9.1f}")
    for row in rows[1:]:
        print(
            f"{row['budget']:>7} {row['layers_run']:>6} {row['median_ms']:>9.1f} "
            f"{row['measured_time_ratio']:>10.3f} {row['ideal_layer_ratio']:>14.3f} "
            f"{row['ideal_flops_ratio']:>13.3f} {row['time_ratio_vs_base']:>8.3f}"
        )
    if mixed:
        print(
            f"mixed batch {mixed['budgets']}: {mixed['median_ms']:.1f} ms, time ratio "
            f"{mixed['measured_time_ratio']:.3f} vs ideal {mixed['ideal_layer_ratio']:.3f}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
