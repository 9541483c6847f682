"""`adallava flops`: prefill FLOPs, bytes and a roofline time for layer-switch budgets.

    adallava flops --config llava-1.5-7b/config.json --image-tokens 576 --text-tokens 110 \\
        --budgets 0.6,0.85,1.0 --hardware a100
"""

from __future__ import annotations

import argparse
import json

from adallava.core.budget import budget_fractions, min_fraction, parse_flops, upper_units_for_fraction
from adallava.core.cost.flops import prefill_cost
from adallava.core.cost.hardware import DTYPE_BYTES, PRESETS, get_hardware, roofline_time
from adallava.core.cost.shapes import ModelShape


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="prefill FLOPs / bytes / roofline time of a model under layer-switch budgets",
        description=(
            "Analytic prefill cost of one request (2 FLOPs per multiply-add, matmuls only, lm_head over "
            "the last token as in generation) for each budget: the prefix layers plus the most upper "
            "layers the budget buys."
        ),
    )
    parser.add_argument("--config", required=True, help="a Hugging Face config.json, or a folder holding one")
    parser.add_argument(
        "--image-tokens",
        type=int,
        default=None,
        help="image tokens in the LLM input (default: one image's worth from the config, e.g. 576)",
    )
    parser.add_argument("--text-tokens", type=int, required=True, help="text tokens in the LLM input")
    parser.add_argument(
        "--num-images", type=int, default=None, help="images through the vision tower (default 1 if any)"
    )
    parser.add_argument(
        "--budgets",
        default="1.0",
        help="comma-separated budgets: fractions of the full decoder-stack FLOPs in [P/N, 1], "
        "or absolute caps such as 3.5T (default: 1.0)",
    )
    parser.add_argument(
        "--num-prefix-layers", type=int, default=None, help="always-run layers P (default: N // 2)"
    )
    parser.add_argument(
        "--hardware",
        default="a100",
        help=f"roofline preset: {', '.join(sorted(PRESETS))} (aliases a100, h100; default a100 = a100-80gb)",
    )
    parser.add_argument(
        "--dtype", default="fp16", choices=sorted(DTYPE_BYTES), help="weights/activations dtype"
    )
    parser.add_argument(
        "--peak-flops", default=None, help="override the hardware's peak FLOP/s (e.g. 2T), all dtypes"
    )
    parser.add_argument(
        "--bandwidth", default=None, help="override the memory bandwidth in bytes/s (e.g. 200G)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)


def flops_rows(
    config: str,
    text_tokens: int,
    budgets: list[float | str],
    image_tokens: int | None = None,
    num_images: int | None = None,
    num_prefix_layers: int | None = None,
    hardware: str = "a100",
    dtype: str = "fp16",
    peak_flops: float | None = None,
    bandwidth: float | None = None,
) -> list[dict]:
    """One dict per budget: budget (fraction), layers run, llm / vision / lm_head / total FLOPs,
    bytes moved and roofline time_s of the prefill (lm_head over 1 token)."""
    shape = ModelShape.from_config(config)
    N = shape.num_layers
    P = N // 2 if num_prefix_layers is None else num_prefix_layers
    if not 0 <= P <= N:
        raise ValueError(f"--num-prefix-layers must be in [0, {N}] for this {N}-layer model, got {P}")
    if image_tokens is None:
        image_tokens = shape.image_tokens_per_image
    if image_tokens < 0 or text_tokens < 0 or image_tokens + text_tokens == 0:
        raise ValueError("--image-tokens and --text-tokens must be >= 0 and not both 0")
    device = get_hardware(hardware, peak_flops, bandwidth)
    device.peak(dtype)  # fail early on an unsupported dtype
    full = prefill_cost(shape, image_tokens, text_tokens, logits_tokens=1, num_images=num_images).llm
    fractions = budget_fractions(budgets, len(budgets), min_fraction(N, P), [full] * len(budgets)).tolist()
    rows = []
    for requested, fraction in zip(budgets, fractions, strict=True):
        run = P + upper_units_for_fraction(N, P, fraction)
        cost = prefill_cost(
            shape,
            image_tokens,
            text_tokens,
            layers=[i < run for i in range(N)],
            logits_tokens=1,
            num_images=num_images,
            dtype_bytes=DTYPE_BYTES[dtype],
        )
        rows.append(
            {
                "budget": fraction,
                "requested": requested,
                "layers": run,
                "num_layers": N,
                "vision": cost.vision,
                "llm": cost.llm,
                "lm_head": cost.lm_head,
                "total": cost.total,
                "bytes": cost.bytes.total,
                "time_s": roofline_time(cost, device, dtype),
                "image_tokens": image_tokens,
                "text_tokens": text_tokens,
                "hardware": device.name,
                "dtype": dtype,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    budgets = [_budget_value(text) for text in args.budgets.split(",") if text.strip()]
    if not budgets:
        raise ValueError("--budgets is empty; give e.g. --budgets 0.6,0.85,1.0")
    rows = flops_rows(
        config=args.config,
        text_tokens=args.text_tokens,
        budgets=budgets,
        image_tokens=args.image_tokens,
        num_images=args.num_images,
        num_prefix_layers=args.num_prefix_layers,
        hardware=args.hardware,
        dtype=args.dtype,
        peak_flops=None if args.peak_flops is None else parse_flops(args.peak_flops),
        bandwidth=None if args.bandwidth is None else parse_flops(args.bandwidth),
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    first = rows[0]
    N = first["num_layers"]
    P = N // 2 if args.num_prefix_layers is None else args.num_prefix_layers
    print(
        f"# prefill of {first['image_tokens']} image + {first['text_tokens']} text tokens; "
        "lm_head over 1 token (as in generation)"
    )
    vision = _si(first["vision"], "FLOPs")
    print(f"# FLOPs: 2 per multiply-add, matmuls only; vision tower + projector = {vision} of the total")
    print(f"# layer switches: P={P} of N={N} layers always run; a budget buys floor(N*b) layers")
    print(f"# est. time: roofline lower bound on {first['hardware']} ({first['dtype']})")
    header = ["budget", "layers run", "LLM FLOPs", "total FLOPs", "bytes", "est. time"]
    table = [
        [
            f"{row['budget']:.2f}",
            f"{row['layers']}/{N}",
            _si(row["llm"]),
            _si(row["total"]),
            _si(row["bytes"], "B"),
            f"{row['time_s'] * 1e3:.2f} ms",
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    return 0


def _budget_value(text: str) -> float | str:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return text  # a cap such as "3.5T"; `budget_fractions` validates it


def _si(value: float, unit: str = "") -> str:
    """5.42e12 -> '5.42 T', (8e8, "B") -> '800.00 MB'."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".strip()
