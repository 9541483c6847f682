"""`adallava eval`: benchmarks x methods x budgets of one model (docs/evaluation.md).

    adallava eval --model models/tiny-adaptive --data world/test --budgets 0.5,0.75,1.0 --out runs/eval
    adallava eval --model M --data world/test --benchmark pope --methods early-exit,full --out runs/eval
    accelerate launch -m adallava.cli eval --model M --data world/test --out runs/eval   # sharded

Writes OUT/results.json, OUT/results.csv and OUT/predictions/<benchmark>/<method>/budget-<b>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from adallava.eval.args import BENCHMARKS, DTYPES, METHODS, PROMPT_FORMATS, EvalArgs
from adallava.eval.protocols import PROTOCOLS
from adallava.train_args import field_docs

LISTS = {"benchmarks": str, "budgets": float, "methods": str}
CHOICES = {"protocol": PROTOCOLS, "dtype": DTYPES, "prompt_format": PROMPT_FORMATS}
ALIASES = {"benchmarks": ["--benchmark"], "methods": ["--method"]}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on benchmarks at several budgets (adaptive and baseline plans)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    docs = field_docs(EvalArgs)
    hints = typing.get_type_hints(EvalArgs)
    for field in dataclasses.fields(EvalArgs):
        flag = "--" + field.name.replace("_", "-")
        names = [flag, *ALIASES.get(field.name, [])]
        help_text = docs.get(field.name, "").replace("%", "%%")
        required = field.default is dataclasses.MISSING
        kind = [a for a in typing.get_args(hints[field.name]) if a is not type(None)] or [hints[field.name]]
        if kind[0] is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text)  # fmt: skip
            continue
        kwargs: dict = {"dest": field.name, "help": help_text, "required": required}
        if not required:
            kwargs["default"] = field.default
            if field.default not in (None, ()):
                shown = ",".join(map(str, field.default)) if field.name in LISTS else field.default
                kwargs["help"] += f" (default: {shown})"
        if field.name in LISTS:
            kwargs |= {"type": _list_of(LISTS[field.name], field.name), "metavar": "A,B,..."}
        elif field.name in CHOICES:
            kwargs["choices"] = CHOICES[field.name]
        else:
            kwargs["type"] = kind[0]
        parser.add_argument(*names, **kwargs)
    parser.epilog = f"benchmarks: {', '.join(BENCHMARKS)}; methods: {', '.join(METHODS)}"
    parser.set_defaults(func=run)


def _list_of(kind: type, name: str):
    def parse(text: str) -> tuple:
        values = [part.strip() for part in text.split(",") if part.strip()]
        try:
            return tuple(kind(value) for value in values)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} expects {kind.__name__}s separated "
                                             f"by commas, got {text!r}") from None  # fmt: skip

    return parse


def run(args: argparse.Namespace) -> int:
    from adallava.eval.runner import evaluate  # torch / transformers load only when evaluating

    names = {field.name for field in dataclasses.fields(EvalArgs)}
    eval_args = EvalArgs(**{k: v for k, v in vars(args).items() if k in names})
    rows = evaluate(eval_args)
    if rows:
        print(summary(rows))
        print(f"wrote {len(rows)} rows to {eval_args.out}/results.json and results.csv")
    return 0


def summary(rows: list[dict]) -> str:
    """A plain-text table of the rows: score, prefill GFLOPs, violations, time."""
    header = [
        "benchmark",
        "method",
        "budget",
        "score",
        "LLM GFLOPs",
        "layers",
        "violations",
        "ms/sample",
        "TTFT ms",
    ]
    lines = [[
        row["benchmark"], row["method"], f"{row['budget']:g}", f"{row['score']:.2f}",
        f"{row['llm_flops'] / 1e9:.4g}", f"{row['mean_layers']:.2f}", str(row["violations"]),
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
