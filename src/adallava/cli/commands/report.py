"""`adallava report`: RESULTS.md (paper-style tables, plots, the commands behind them) from results folders.

    adallava report --results runs/eval-l runs/eval-h runs/eval-det --out RESULTS.md

See docs/plots.md for the folder conventions (results.json, meta.json / commands.txt, plans_*.json).
FLOPs: "LLM FLOPs" (primary) is the decoder stack's prefill FLOPs, the paper's Table 1 convention;
"Total FLOPs" adds the vision tower, projector and lm_head.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write RESULTS.md: benchmark x budget tables, scheduler table, plots, commands",
        description=(
            "Generate RESULTS.md from `adallava eval` results folders: a Table 1/3-style table (benchmarks "
            "x budgets, per model and method, with LLM prefill FLOPs as the paper counts them and the total "
            "with the vision tower beside it), a Table 2-style table (schedulers: score, FLOPs, violations "
            "per budget), the accuracy-vs-LLM-FLOPs, models-compared, adherence and per-input plan plots "
            "(written beside it), and how each folder was produced (commands, git commit, versions, "
            "machine, from its meta.json). The same folders give the same file."
        ),
    )
    parser.add_argument("--results", nargs="+", type=Path, required=True, help="results folders")
    parser.add_argument(
        "--out", type=Path, default=Path("RESULTS.md"), help="the markdown file (default: RESULTS.md)"
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="folder for the plots (default: plots/ beside --out)"
    )
    parser.add_argument(
        "--table2-benchmark",
        default=None,
        help="benchmark of the scheduler table (default: the first in the paper's order, vqav2 first)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adallava.report.results import build_report

    command = ["adallava", "report", "--results", *map(str, args.results), "--out", str(args.out)]
    if args.plots is not None:
        command += ["--plots", str(args.plots)]
    if args.table2_benchmark is not None:
        command += ["--table2-benchmark", args.table2_benchmark]
    build_report(args.results, args.out, args.plots, args.table2_benchmark, command=shlex.join(command))
    print(f"wrote {args.out}")
    return 0
