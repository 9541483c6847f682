"""lmms-eval's answers on an exported world, scored again by `adallava score --protocol lmms-eval`.

    python -m adallava.integrations.lmms.compare --export DIR --results OUTPUT_PATH [--json]

reads the newest run under lmms-eval's `--output_path` (its `*_results.json` and the
`*_samples_<task>.jsonl` that `--log_samples` wrote beside it), writes each task's answers as the
benchmark's official prediction file under OUTPUT_PATH/adallava_official/<benchmark>/, scores them with
the functions behind `adallava score` (the same arguments; the exact commands are printed), and prints
lmms-eval's reported metrics beside adallava's. Row k of an exported task is sample k of the world's
reader, so a logged `doc_id` names its question; each is checked against the logged prompt.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adallava.eval import scoring
from adallava.eval.readers import mme_results, write_mme_results
from adallava.integrations.lmms.export import read_export
from adallava.integrations.lmms.tasks import TASKS_BY_NAME

PROTOCOL = "lmms-eval"
OFFICIAL = "adallava_official"
MME_SUFFIX = " Please answer yes or no."
RELATIVE_TOLERANCE = 1e-9  # float sums in another order; anything larger is a real difference


@dataclass(frozen=True)
class Scorer:
    """How `adallava score BENCHMARK` is called: `flags` maps each flag to the world file (a key of the
    world manifest's `files`) or to "predictions"; `run` is the function behind the command (same
    arguments, by name); `metrics` reads lmms-eval's metric names off its result, in lmms-eval's scale."""

    run: Callable[..., Any]
    flags: dict[str, tuple[str, str]]  # flag -> (function parameter, world file key or "predictions")
    metrics: Callable[[Any], dict[str, float]]


def _pope_metrics(result) -> dict[str, float]:
    o = result.overall
    return {"pope_accuracy": o.accuracy / 100, "pope_precision": o.precision / 100,
            "pope_recall": o.recall / 100, "pope_f1_score": o.f1 / 100,
            "pope_yes_ratio": o.yes_ratio / 100}  # fmt: skip


def _mme_metrics(result) -> dict[str, float]:
    return {"mme_perception_score": result.perception, "mme_cognition_score": result.cognition}


def _exact_match(result) -> dict[str, float]:
    return {"exact_match": result.score / 100}


SCORERS: dict[str, Scorer] = {
    "pope": Scorer(
        scoring.score_pope_files,
        {"--questions": ("questions", "questions"), "--annotation-dir": ("annotation_dir", "annotation_dir"),
         "--predictions": ("predictions", "predictions")},
        _pope_metrics,
    ),
    "mme": Scorer(scoring.score_mme_dir, {"--results-dir": ("results_dir", "predictions")}, _mme_metrics),
    "scienceqa": Scorer(
        scoring.score_scienceqa_files,
        {"--problems": ("problems", "problems"), "--split-file": ("split_file", "split_file"),
         "--predictions": ("predictions", "predictions")},
        _exact_match,
    ),
    "textvqa": Scorer(
        scoring.score_textvqa_files,
        {"--annotations": ("annotations", "annotations"), "--predictions": ("predictions", "predictions")},
        _exact_match,
    ),
    "vqav2": Scorer(
        scoring.score_vqav2_files,
        {"--questions": ("questions", "questions"), "--annotations": ("annotations", "annotations"),
         "--predictions": ("predictions", "predictions")},
        _exact_match,
    ),
    "mmbench": Scorer(
        scoring.score_mmbench_files,
        {"--data": ("data", "path"), "--predictions": ("predictions", "predictions")},
        lambda result: {"gpt_eval_score": result.score},
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One lmms-eval run: its results.json content and, per task, the logged samples."""

    results_file: Path
    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]]


def read_run(output_path: str | Path) -> Run:
    """The newest run under lmms-eval's --output_path: `<prefix>_results.json` and the
    `<prefix>_samples_<task>.jsonl` files beside it (lmms-eval names both with the run's timestamp)."""
    output_path = Path(output_path)
    found = sorted(output_path.rglob("*_results.json"), key=lambda p: (p.name, str(p)))
    found = [p for p in found if p.parent.name != "submissions"]
    if not found:
        raise ValueError(
            f"{output_path}: no lmms-eval *_results.json (run lmms-eval with --output_path there)"
        )
    results_file = found[-1]
    prefix = results_file.name[: -len("_results.json")]
    samples = {}
    for path in sorted(results_file.parent.glob(f"{prefix}_samples_*.jsonl")):
        task = path.name[len(f"{prefix}_samples_") : -len(".jsonl")]
        samples[task] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return Run(results_file, json.loads(results_file.read_text(encoding="utf-8")), samples)


def logged_answers(rows: Sequence[Mapping[str, Any]], samples: Sequence, task: str) -> dict[int, str]:
    """doc_id -> the answer lmms-eval scored (its filtered response), each doc checked against the world:
    the question of sample doc_id must appear in the logged prompt (`input`)."""
    answers = {}
    for row in rows:
        doc_id = int(row["doc_id"])
        if not 0 <= doc_id < len(samples):
            raise ValueError(
                f"{task}: logged doc_id {doc_id} is not a row of the world ({len(samples)} rows)"
            )
        question = samples[doc_id].question.replace(MME_SUFFIX, "")  # lmms-eval's MME prompt drops it
        logged = str(row.get("input", ""))
        if question.lower() not in logged.lower():
            raise ValueError(
                f"{task}: doc {doc_id} was asked {logged!r}, but the world's row {doc_id} is {question!r}: "
                "these answers are not from this export of this world"
            )
        response = row["filtered_resps"]
        answers[doc_id] = response[0] if isinstance(response, list) else response
    return answers


def write_predictions(benchmark: str, samples: Sequence, answers: Mapping[int, str], folder: Path) -> Path:
    """The benchmark's official prediction file (folder, for MME) for the answered samples: LLaVA answers
    jsonl (POPE, ScienceQA, TextVQA by question id, MMBench by index at round 0), VQAv2's results JSON,
    or MME's results folder. Returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    answered = [(samples[doc_id], text) for doc_id, text in sorted(answers.items())]
    if benchmark == "mme":
        predictions = {sample.question_id: text for sample, text in answered}
        chosen = [sample for sample, _ in answered]
        write_mme_results(mme_results(chosen, predictions), folder / "results")
        return folder / "results"
    if benchmark == "vqav2":
        path = folder / "results.json"
        rows = [{"question_id": int(sample.question_id), "answer": text} for sample, text in answered]
        path.write_text(json.dumps(rows) + "\n", encoding="utf-8")
        return path
    path = folder / "answers.jsonl"
    lines = []
    for sample, text in answered:
        line = {"question_id": sample.question_id, "prompt": sample.prompt, "text": text}
        if benchmark == "mmbench":
            line["round_id"] = 0
        lines.append(json.dumps(line) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def score_command(benchmark: str, world_files: Mapping[str, Path], predictions: Path) -> list[str]:
    """`adallava score` arguments for this benchmark's official files and predictions."""
    argv = ["adallava", "score", benchmark, "--protocol", PROTOCOL]
    for flag, (_, source) in SCORERS[benchmark].flags.items():
        argv += [flag, str(predictions if source == "predictions" else world_files[source])]
    return argv


def adallava_score(benchmark: str, world_files: Mapping[str, Path], predictions: Path):
    """What `score_command` prints, computed by the same function with the same arguments."""
    scorer = SCORERS[benchmark]
    kwargs = {param: predictions if source == "predictions" else world_files[source]
              for param, source in scorer.flags.values()}  # fmt: skip
    return scorer.run(**kwargs, protocol=PROTOCOL)


@dataclass(frozen=True)
class Comparison:
    task: str
    metric: str
    lmms_eval: float
    adallava: float
    command: str

    @property
    def equal(self) -> bool:
        return math.isclose(self.lmms_eval, self.adallava, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12)


def compare(export_dir: str | Path, output_path: str | Path) -> list[Comparison]:
    """Every metric lmms-eval reported for the exported tasks of its newest run, beside adallava's."""
    from adallava.data.world import read_manifest
    from adallava.eval.world import load_benchmark

    export = read_export(export_dir)
    world = Path(export["world"])
    world_benchmarks = read_manifest(world)["benchmarks"]
    run = read_run(output_path)
    official = Path(output_path) / OFFICIAL
    rows = []
    for task, logged in run.samples.items():
        spec = TASKS_BY_NAME.get(task)
        if spec is None or task not in export["tasks"]:
            continue
        samples = load_benchmark(world, spec.benchmark)
        answers = logged_answers(logged, samples, task)
        if len(answers) != len(samples):
            raise ValueError(
                f"{task}: lmms-eval answered {len(answers)} of the world's {len(samples)} questions "
                "(--limit?); `adallava score` scores complete prediction files: run lmms-eval without --limit"
            )
        predictions = write_predictions(spec.benchmark, samples, answers, official / spec.benchmark)
        files = {key: world / path for key, path in world_benchmarks[spec.benchmark]["files"].items()}
        command = " ".join(score_command(spec.benchmark, files, predictions))
        ours = SCORERS[spec.benchmark].metrics(adallava_score(spec.benchmark, files, predictions))
        reported = run.results["results"].get(task, {})
        for metric, value in ours.items():
            theirs = reported.get(f"{metric},none")
            if isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
                rows.append(Comparison(task, metric, float(theirs), float(value), command))
    if not rows:
        raise ValueError(
            f"{output_path}: the newest run has no samples of the exported tasks (use --log_samples)"
        )
    return rows


def render(rows: Sequence[Comparison]) -> str:
    """A Markdown table: task, metric, lmms-eval's value, adallava's, equal."""
    lines = [
        "| task | metric | lmms-eval | adallava score --protocol lmms-eval | equal |",
        "|---|---|---:|---:|---|",
    ]
    for row in rows:
        lines.append(f"| {row.task} | {row.metric} | {row.lmms_eval:.6g} | {row.adallava:.6g} | "
                     f"{'yes' if row.equal else 'NO'} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adallava.integrations.lmms.compare",
        description="lmms-eval's reported scores on an exported world beside `adallava score --protocol "
        "lmms-eval` on the same answers. Exit 1 if any metric differs.",
    )
    parser.add_argument("--export", type=Path, required=True, help="the `adallava world export` folder")
    parser.add_argument("--results", type=Path, required=True, help="lmms-eval's --output_path of the run")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    rows = compare(args.export, args.results)
    if args.json:
        print(json.dumps([{**asdict(row), "equal": row.equal} for row in rows], indent=1))
    else:
        print(render(rows))
        print("\n".join(["", "adallava score commands:", *dict.fromkeys(row.command for row in rows)]))
    return 0 if all(row.equal for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
