"""What `adallava eval` writes: predictions in each official scorer's format (so `adallava score`
re-scores them) with details.jsonl (each answer's plan and FLOPs), the benchmark's metric, one results
row per (benchmark, method, budget) with FLOPs, budget violations, timing and plan statistics,
DIR/results.json + DIR/results.csv, the adaptive method's per-input plans (DIR/plans_*.json, drawn by
`adallava plot` / `adallava report` as Fig. 5) and how the folder was made (DIR/meta.json)
(docs/evaluation.md).

FLOPs: `llm_flops` (the primary number) is the LLM's prefill FLOPs, i.e. the decoder stack's matmuls
at 2 FLOPs per multiply-add: the paper's Table 1 convention (LLM-Viewer counting, docs/cost-model.md)
and what budgets are fractions of. `total_flops` adds the vision tower, projector and lm_head."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from adallava.core.budget import over_budget
from adallava.eval import metrics, readers
from adallava.eval.answer_processing import evalai_normalize
from adallava.eval.args import BENCHMARKS, METHODS
from adallava.eval.benchmarks import Benchmark, Item
from adallava.eval.engine import Timing
from adallava.inference.answering import Answer

RESULTS_JSON, RESULTS_CSV, META_JSON = "results.json", "results.csv", "meta.json"
# What the FLOPs fields count; meta.json carries it (docs/cost-model.md has the formulas).
FLOPS_FIELDS = {
    "llm_flops": "PRIMARY. Mean LLM prefill FLOPs per answer: the decoder stack's matmuls, 2 FLOPs per "
    "multiply-add (the paper's Table 1 convention, LLM-Viewer counting); budgets are fractions of it",
    "total_flops": "Mean total prefill FLOPs per answer: vision tower + projector + LLM + lm_head",
    "full_llm_flops": "Mean LLM prefill FLOPs of the same requests on the full model",
    "decode_flops": "Mean FLOPs of the decoding steps (decoder stack and lm_head)",
}
CSV_COLUMNS = (
    "benchmark", "method", "budget", "score", "n", "answers", "llm_flops", "total_flops", "full_llm_flops",
    "decode_flops", "violations", "budget_use", "ms_per_sample", "ttft_ms", "mean_layers", "distinct_plans",
    "layer_usage", "metrics", "model", "protocol", "predictions", "score_command",
)  # fmt: skip


# ---- scoring ------------------------------------------------------------------------------------------
def predictions_of(benchmark: str, items: Sequence[Item], answers: Sequence[Answer]) -> dict:
    """The metric's predictions: question_id -> text ((index, round_id) -> text for MMBench)."""
    if benchmark == "mmbench":
        return {
            (int(item.sample.question_id), item.round_id): a.text
            for item, a in zip(items, answers, strict=True)
        }
    return {item.sample.question_id: a.text for item, a in zip(items, answers, strict=True)}


def score(benchmark: Benchmark, predictions: Mapping, protocol: str):
    """The benchmark's metric result dataclass (`.score` on 0-100)."""
    samples = list(benchmark.samples)
    if benchmark.name == "mme":
        return metrics.score_mme(readers.mme_results(samples, predictions), protocol)
    return getattr(metrics, f"score_{benchmark.name}")(samples, predictions, protocol)


# ---- predictions --------------------------------------------------------------------------------------
def write_predictions(
    benchmark: Benchmark, folder: Path, items: Sequence[Item], answers: Sequence[Answer], model_id: str
) -> Path:
    """Predictions in the official scorer's format, plus details.jsonl (each answer's plan and FLOPs).
    Returns the path `adallava score` takes: results.json (VQAv2), results/ (MME) or answers.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_jsonl(folder / "details.jsonl", [_details(i, a) for i, a in zip(items, answers, strict=True)])
    name = benchmark.name
    if name == "vqav2":  # as scripts/convert_vqav2_for_submission.py uploads it
        path = folder / "results.json"
        rows = [
            {"question_id": item.sample.question_id, "answer": evalai_normalize(answer.text)}
            for item, answer in zip(items, answers, strict=True)
        ]
        path.write_text(json.dumps(rows) + "\n", encoding="utf-8")
        return path
    if name == "mme":
        path = folder / "results"
        texts = {item.sample.question_id: a.text for item, a in zip(items, answers, strict=True)}
        readers.write_mme_results(readers.mme_results(list(benchmark.samples), texts), path)
        return path
    path = folder / "answers.jsonl"  # LLaVA's model_vqa*.py answers file
    lines = []
    for item, answer in zip(items, answers, strict=True):
        line = {"question_id": item.sample.question_id, "prompt": item.sample.prompt, "text": answer.text}
        if name == "mmbench":
            line["round_id"] = item.round_id
        lines.append(line | {"model_id": model_id, "metadata": {}})
    _write_jsonl(path, lines)
    return path


def _details(item: Item, answer: Answer) -> dict[str, Any]:
    """A details.jsonl line: the question, the answer, its executed layers and what it cost."""
    return {
        "question_id": item.sample.question_id,
        "round_id": item.round_id,
        "text": answer.text,
        "layers": list(answer.plan["layers"]),
        "unit_fraction": answer.unit_fraction,
        "llm_flops": answer.prefill_flops["llm"],
        "total_flops": answer.prefill_flops["total"],
        "full_llm_flops": answer.full_prefill_flops["llm"],
        "decode_flops": answer.decode_flops["total"],
    }


def score_command(benchmark: Benchmark, predictions: Path, protocol: str) -> list[str]:
    """The `adallava score` command that re-scores a predictions file."""
    files, name = benchmark.files, benchmark.name
    args = {
        "vqav2": ["--questions", files.get("questions"), "--annotations", files.get("annotations")],
        "textvqa": ["--annotations", files.get("annotations")],
        "pope": ["--questions", files.get("questions"), "--annotation-dir", files.get("annotation_dir")],
        "mme": [],
        "scienceqa": ["--problems", files.get("problems"), "--split-file", files.get("split_file")]
        + ["--split", benchmark.options.get("split", "test")],
        "mmbench": ["--data", files.get("path")],
    }[name]
    flag = "--results-dir" if name == "mme" else "--predictions"
    return ["adallava", "score", name, *map(str, args), flag, str(predictions), "--protocol", protocol]


# ---- results rows -------------------------------------------------------------------------------------
def plan_statistics(answers: Sequence[Answer], num_layers: int) -> dict[str, Any]:
    """mean_layers (layers run per answer), layer_usage (per layer: share of answers running it),
    distinct_plans, and for head plans unit_fraction (share of head units and MLP groups on)."""
    masks = torch.zeros(len(answers), num_layers, dtype=torch.bool)
    for row, answer in enumerate(answers):
        masks[row, list(answer.plan["layers"])] = True
    stats = {
        "mean_layers": float(masks.sum(1).double().mean()),
        "layer_usage": [round(float(v), 6) for v in masks.double().mean(0)],
        "distinct_plans": len({answer.plan_key for answer in answers}),
    }
    fractions = [answer.unit_fraction for answer in answers if answer.unit_fraction is not None]
    if fractions:
        stats["unit_fraction"] = sum(fractions) / len(fractions)
    return stats


def budget_accounting(answers: Sequence[Answer], budget: float) -> tuple[int, float]:
    """(violations, budget_use): rows whose prefill LLM FLOPs exceed budget x their full LLM FLOPs
    (`core.budget.over_budget`), and the mean of cost / (budget x full cost) (1 = the budget exactly
    used)."""
    llm = torch.tensor([a.prefill_flops["llm"] for a in answers], dtype=torch.float64)
    full = torch.tensor([a.full_prefill_flops["llm"] for a in answers], dtype=torch.float64)
    return int(over_budget(llm, full, budget).sum()), float((llm / (budget * full)).mean())


def result_row(
    benchmark: Benchmark, method: str, budget: float, result, answers: Sequence[Answer], timing: Timing,
    num_layers: int, extra: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One results row (see docs/evaluation.md for the schema)."""
    count = len(answers)
    violations, use = budget_accounting(answers, budget)
    row = {
        "benchmark": benchmark.name,
        "method": method,
        "budget": budget,
        "score": float(result.score),
        "metrics": _jsonable(asdict(result)),
        "n": int(result.n),
        "answers": count,
        "llm_flops": sum(a.prefill_flops["llm"] for a in answers) / count,
        "total_flops": sum(a.prefill_flops["total"] for a in answers) / count,
        "full_llm_flops": sum(a.full_prefill_flops["llm"] for a in answers) / count,
        "decode_flops": sum(a.decode_flops["total"] for a in answers) / count,
        "violations": violations,
        "budget_use": use,
        "ms_per_sample": 1000 * timing.generate_s / timing.answers,
        "ttft_ms": None if timing.prefill_s is None else 1000 * timing.prefill_s / timing.answers,
        **plan_statistics(answers, num_layers),
    }
    return row | dict(extra)


# ---- results files ------------------------------------------------------------------------------------
def method_order(method: str) -> tuple[int, str]:
    """Sort key of a method name, e.g. "adaptive" or "adaptive+prumerge" (base method, then selection)."""
    base, _, selection = method.partition("+")
    return METHODS.index(base), selection


def write_results(out: Path, rows: Sequence[dict]) -> list[dict]:
    """Merge `rows` into out/results.json (a row replaces an earlier one of the same benchmark, method
    and budget) and write results.csv. Returns all rows."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_JSON
    existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    new = {_row_key(row) for row in rows}
    merged = [row for row in existing if _row_key(row) not in new] + list(rows)
    merged.sort(
        key=lambda row: (BENCHMARKS.index(row["benchmark"]), *method_order(row["method"]), row["budget"])
    )
    path.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    with (out / RESULTS_CSV).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in merged:
            writer.writerow([_csv_cell(row.get(column)) for column in CSV_COLUMNS])
    return merged


def plans_path(out: Path, model: str, method: str, budget: float) -> Path:
    """out/plans_<model>_<method>_<budget>.json: one file per series and budget, so results folders
    of several models can be drawn into one plots folder without clashing names."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{model}_{method}_{budget:g}").strip("_")
    return out / f"plans_{name}.json"


def write_plans(
    path: Path, benchmark: str, items: Sequence[Item], answers: Sequence[Answer], num_layers: int,
    header: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Merge one benchmark's per-input plans into a plans_*.json (docs/plots.md): `layers` (per input,
    one bool per decoder layer, True = it ran, as in details.jsonl's executed `layers`), `families`
    (the input's benchmark), `inputs` ([benchmark, item key]) plus `header` (budget, model, method,
    num_prefix_layers). The file's rows of other benchmarks are kept; benchmarks go in `BENCHMARKS`
    order, inputs in item order. Returns what was written."""
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    entries = [
        (tuple(key), layers)
        for key, layers in zip(old.get("inputs", []), old.get("layers", []), strict=True)
        if key[0] != benchmark
    ]
    for item, answer in zip(items, answers, strict=True):
        ran = set(answer.plan["layers"])
        entries.append(((benchmark, item.key), [layer in ran for layer in range(num_layers)]))
    entries.sort(key=lambda entry: BENCHMARKS.index(entry[0][0]))  # stable: item order kept
    data = dict(header) | {
        "families": [key[0] for key, _ in entries],
        "inputs": [list(key) for key, _ in entries],
        "layers": [layers for _, layers in entries],
    }
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    return data


def write_meta(out: Path, run: Mapping[str, Any]) -> dict[str, Any]:
    """Record how `out` was made in out/meta.json: `runs` (one per distinct command: command, git
    commit, package versions, machine; running a command again replaces its entry), `commands` (in
    order: what `adallava report` lists) and `fields` (what the FLOPs fields count). Returns it."""
    path = out / META_JSON
    meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    runs = [r for r in meta.get("runs", []) if r.get("command") != run["command"]] + [dict(run)]
    made = [r["command"] for r in runs]
    older = [c for c in meta.get("commands", []) if c not in made]  # a hand-written meta.json's
    meta |= {"commands": older + made, "runs": runs, "fields": FLOPS_FIELDS}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


# ---- helpers ------------------------------------------------------------------------------------------
def _row_key(row: Mapping[str, Any]) -> tuple[str, str, float]:
    return row["benchmark"], row["method"], row["budget"]


def _write_jsonl(path: Path, rows: Sequence[Mapping]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else value
