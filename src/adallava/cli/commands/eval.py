"""`adallava eval`: benchmarks x methods x budgets of one model (docs/evaluation.md).

    adallava eval --model models/tiny-adaptive --data world/test --budgets 0.5,0.75,1.0 --out runs/eval
    adallava eval --model M --data world/test --benchmark pope --methods early-exit,full --out runs/eval
    accelerate launch -m adallava.cli eval --model M --data world/test --out runs/eval   # sharded

Writes OUT/results.json, OUT/results.csv, OUT/predictions/<benchmark>/<method>/budget-<b>/, the adaptive
method's per-input plans OUT/plans_<model>_<method>_<budget>.json (drawn by `adallava plot` / `report`)
and OUT/meta.json (the command, git commit, package versions, machine). FLOPs: `llm_flops` is the LLM's
prefill FLOPs as the paper's Table 1 counts them; `total_flops` adds vision tower, projector, lm_head.
"""

from __future__ import annotations

import argparse

from adallava.cli import flags
from adallava.eval.args import BENCHMARKS, METHODS, EvalArgs

ALIASES = {"benchmarks": ["--benchmark"], "methods": ["--method"]}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on benchmarks at several budgets (adaptive and baseline plans)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flags.add_arguments(parser, EvalArgs, required=True, aliases=ALIASES)
    parser.epilog = f"benchmarks: {', '.join(BENCHMARKS)}; methods: {', '.join(METHODS)}"
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adallava.eval.runner import evaluate  # torch / transformers load only when evaluating

    eval_args = flags.from_namespace(EvalArgs, args)
    rows = evaluate(eval_args)
    if rows:
        print(summary(rows))
        print(f"wrote {len(rows)} rows to {eval_args.out}/results.json and results.csv")
    return 0


def summary(rows: list[dict]) -> str:
    """A plain-text table of the rows: score, LLM prefill GFLOPs (the paper's convention), total prefill
    GFLOPs (+ vision tower, projector, lm_head), violations, time."""
    header = [
        "benchmark",
        "method",
        "budget",
        "score",
        "LLM GFLOPs",
        "total GFLOPs",
        "layers",
        "violations",
        "ms/sample",
        "TTFT ms",
    ]
    lines = [[
        row["benchmark"], row["method"], f"{row['budget']:g}", f"{row['score']:.2f}",
        f"{row['llm_flops'] / 1e9:.4g}", f"{row['total_flops'] / 1e9:.4g}", f"{row['mean_layers']:.2f}",
        str(row["violations"]),
        f"{row['ms_per_sample']:.1f}", "-" if row["ttft_ms"] is None else f"{row['ttft_ms']:.1f}",
    ] for row in rows]  # fmt: skip
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *lines]
    )
