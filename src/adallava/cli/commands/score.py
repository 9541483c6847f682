"""`adallava score BENCHMARK ...`: score existing predictions in the official file formats, with the
LLaVA-1.5 protocol (default) or lmms-eval's. Prints a table, or JSON with --json."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from adallava.eval import scoring
from adallava.eval.protocols import PROTOCOLS

TITLES = {
    "vqav2": "VQAv2",
    "textvqa": "TextVQA",
    "pope": "POPE",
    "mme": "MME",
    "scienceqa": "ScienceQA-IMG",
    "mmbench": "MMBench",
}


class Benchmark(NamedTuple):
    """One `adallava score` subcommand: its help, how it scores, and its own flags (after the shared
    --json and --protocol)."""

    help: str
    run: Callable[[argparse.Namespace], Any]
    arguments: list[tuple[str, dict[str, Any]]]


def _path(flag: str, help_text: str) -> tuple[str, dict[str, Any]]:
    """A required path argument: `--flag PATH`."""
    return flag, {"type": Path, "required": True, "help": help_text}


ANSWERS = "LLaVA answers jsonl"
BENCHMARKS: dict[str, Benchmark] = {
    "vqav2": Benchmark(
        "VQAv2 accuracy (EvalAI answer processing + official vqaEval.py)",
        lambda a: scoring.score_vqav2_files(a.questions, a.annotations, a.predictions, a.protocol),
        [
            _path("--questions", "v2_OpenEnded_mscoco_<split>_questions.json"),
            _path("--annotations", "v2_mscoco_<split>_annotations.json"),
            _path("--predictions", "results JSON [{question_id, answer}]"),
        ],
    ),
    "textvqa": Benchmark(
        "TextVQA accuracy (LLaVA's m4c evaluator)",
        lambda a: scoring.score_textvqa_files(a.annotations, a.predictions, a.protocol),
        [_path("--annotations", "TextVQA_0.5.1_val.json"), _path("--predictions", ANSWERS)],
    ),
    "pope": Benchmark(
        "POPE accuracy / precision / recall / F1 / yes-ratio per category (LLaVA's eval_pope.py)",
        lambda a: scoring.score_pope_files(a.questions, a.annotation_dir, a.predictions, a.protocol),
        [
            _path("--questions", "LLaVA's llava_pope_test.jsonl"),
            _path("--annotation-dir", "folder of coco_pope_<category>.json"),
            _path("--predictions", ANSWERS),
        ],
    ),
    "mme": Benchmark(
        "MME perception / cognition scores (official eval_tool/calculation.py)",
        lambda a: scoring.score_mme_dir(a.results_dir, a.protocol),
        [_path("--results-dir", "folder of <subtask>.txt: image, question, truth, prediction")],
    ),
    "scienceqa": Benchmark(
        "ScienceQA-IMG accuracy (LLaVA's eval_science_qa.py letter parsing)",
        lambda a: scoring.score_scienceqa_files(a.problems, a.split_file, a.predictions, a.protocol, a.split),
        [
            _path("--problems", "problems.json"),
            _path("--split-file", "pid_splits.json"),
            ("--split", {"default": "test", "help": "split to score (default: test)"}),
            _path("--predictions", ANSWERS),
        ],
    ),
    "mmbench": Benchmark(
        "MMBench circular accuracy with rule-based option matching",
        lambda a: scoring.score_mmbench_files(a.data, a.predictions, a.protocol),
        [
            _path("--data", "MMBench TSV (e.g. mmbench_dev_20230712.tsv)"),
            _path("--predictions", "LLaVA answers jsonl (question_id, round_id)"),
        ],
    ),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`adallava score BENCHMARK`: one subcommand per entry of BENCHMARKS."""
    parser = subparsers.add_parser(
        "score",
        help="score existing predictions in the official benchmark formats",
        description="Score predictions with metrics identical to the scoring behind LLaVA-1.5's numbers "
        "(--protocol llava) or lmms-eval's (--protocol lmms-eval). See docs/benchmarks.md.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, benchmark in BENCHMARKS.items():
        sub = benchmarks.add_parser(name, help=benchmark.help, description=benchmark.help)
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.add_argument(
            "--protocol", choices=PROTOCOLS, default="llava", help="scoring protocol (default: llava)"
        )
        for flag, options in benchmark.arguments:
            sub.add_argument(flag, **options)
        sub.set_defaults(func=_runner(name, benchmark.run))


def _runner(name: str, run: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def main(args: argparse.Namespace) -> int:
        try:
            result = run(args)
        except (FileNotFoundError, ValueError):
            raise
        except OSError as error:  # a folder where a file was expected, permissions, ...
            raise ValueError(str(error)) from None
        for note in _notes(name, result):
            print(f"note: {note}", file=sys.stderr)
        if args.json:
            print(json.dumps({"benchmark": name, **asdict(result)}, indent=2))
        else:
            print(render(f"{TITLES[name]} (protocol {result.protocol}, n={result.n})", asdict(result)))
        return 0

    return main


def _notes(name: str, result: Any) -> list[str]:
    notes = []
    if name == "mme" and result.missing_subtasks:
        notes.append(f"no results for subtask(s) {', '.join(result.missing_subtasks)}; sums cover the others")
    if name == "mmbench" and result.passes == result.n:
        notes.append("one answer per question: circular accuracy equals single-pass accuracy")
    return notes


def render(title: str, data: dict[str, Any]) -> str:
    """A plain-text table: scalar metrics first, then one block per dict (rows x columns)."""
    lines = [title]
    scalars = [(key, value) for key, value in data.items() if not isinstance(value, (dict, list, tuple))]
    lines += _table(
        ["metric", "value"], [[key, _format(value)] for key, value in scalars if key not in ("protocol", "n")]
    )
    for key, value in data.items():
        if isinstance(value, (list, tuple)) and value:
            lines += ["", f"{key}: {', '.join(map(str, value))}"]
        if not isinstance(value, dict) or not value:
            continue
        inner = list(value.values())
        if all(isinstance(item, dict) for item in inner):
            columns = list(inner[0])
            rows = [[name] + [_format(item[column]) for column in columns] for name, item in value.items()]
            lines += [""] + _table([key, *columns], rows)
        else:
            lines += [""] + _table([key, "value"], [[name, _format(item)] for name, item in value.items()])
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [str(first).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        )

    return [line(header), *(line(row) for row in rows)]


def _format(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
