"""Reading `adallava eval` results folders (docs/plots.md): `results.json` rows (checked), `meta.json`
(commands, provenance, defaults for rows) or `commands.txt`, and `plans_*.json` plan files; rows of
several folders merged. `adallava.report.results` turns them into tables and plots."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from adallava.report.plots import METHOD_ORDER, spread_budgets

RESULTS_FILE = "results.json"
META_FILE = "meta.json"
COMMANDS_FILE = "commands.txt"
PLANS_GLOB = "plans_*.json"
REQUIRED = ("benchmark", "method", "budget", "score", "llm_flops", "total_flops")


# ---- reading results folders ---------------------------------------------------------------------
@dataclass(frozen=True)
class ResultsDir:
    """One results folder: its rows (meta.json defaults applied) and how it was produced."""

    path: Path
    rows: tuple[dict, ...]
    commands: tuple[str, ...]
    description: str = ""
    runs: tuple[dict, ...] = ()  # meta.json's provenance: command, git_commit, versions, machine


@dataclass(frozen=True)
class PlanFile:
    """`plans_*.json`: the plans one model chose for each input at one budget.

    {"budget": 0.75, "layers": [[true, ...] per layer] per input, "families": [name per input]
    (optional), "num_prefix_layers": P (optional), "heads": [[[bool per head unit] per layer] per
    input] (optional, head switches), "model" / "method" / "benchmark" (optional, for titles)}.
    """

    path: Path
    budget: float
    layers: list[list[bool]]  # [inputs][layers]
    families: list[str] | None = None
    num_prefix_layers: int | None = None
    heads: list[list[list[bool]]] | None = None  # [inputs][layers][head units]
    model: str = ""
    method: str = ""
    benchmark: str = ""


def load_results_dir(path: str | Path) -> ResultsDir:
    """Read `results.json` (+ meta.json / commands.txt) from a folder, checking every row."""
    path = Path(path)
    results = path / RESULTS_FILE
    if not results.is_file():
        raise FileNotFoundError(f"{path} has no {RESULTS_FILE} (write one with `adallava eval --out {path}`)")
    meta = read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
    if not isinstance(meta, dict):
        raise ValueError(f"{path / META_FILE}: expected a JSON object")
    rows = read_json(results)
    if not isinstance(rows, list):
        raise ValueError(f"{results}: expected a JSON list of rows")
    checked = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{results}: row {index} is not an object")
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise ValueError(f"{results}: row {index} lacks {', '.join(missing)}")
        for key in ("budget", "score", "llm_flops", "total_flops"):
            if (
                not isinstance(row[key], int | float)
                or isinstance(row[key], bool)
                or not math.isfinite(row[key])
            ):
                raise ValueError(
                    f"{results}: row {index} field {key!r} must be a finite number, got {row[key]!r}"
                )
        row = dict(row)
        for key in ("model", "scheduler"):
            if not row.get(key) and meta.get(key):
                row[key] = str(meta[key])
        checked.append(row)
    commands = meta.get("commands")
    if commands is None and (path / COMMANDS_FILE).is_file():
        lines = (path / COMMANDS_FILE).read_text(encoding="utf-8").splitlines()
        commands = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if commands is not None and (
        not isinstance(commands, list) or not all(isinstance(c, str) for c in commands)
    ):
        raise ValueError(f"{path / META_FILE}: 'commands' must be a list of strings")
    runs = meta.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ValueError(f"{path / META_FILE}: 'runs' must be a list of objects")
    description = str(meta.get("description", ""))
    return ResultsDir(path, tuple(checked), tuple(commands or ()), description, tuple(runs))


def load_rows(paths: Sequence[str | Path]) -> list[dict]:
    """The rows of several results folders, merged: a row repeated with the same score and FLOPs
    (e.g. the full model evaluated in two folders) is kept once; a conflicting repeat is an error."""
    return merge_rows([load_results_dir(path) for path in paths])


def merge_rows(folders: Sequence[ResultsDir]) -> list[dict]:
    seen: dict[tuple, tuple[dict, Path]] = {}
    for folder in folders:
        for row in folder.rows:
            key = row_key(row)
            if key in seen:
                other, where = seen[key]
                if (other["score"], other["total_flops"]) != (row["score"], row["total_flops"]):
                    raise ValueError(
                        f"{folder.path / RESULTS_FILE} and {where / RESULTS_FILE} both have {key} with "
                        "different results; keep one of them"
                    )
                continue
            seen[key] = (row, folder.path)
    return [row for row, _ in sorted(seen.values(), key=lambda item: sort_key(item[0]))]


def load_plan_file(path: str | Path) -> PlanFile:
    """Read and check one `plans_*.json` (format: `PlanFile`)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key in ("budget", "layers"):
        if key not in data:
            raise ValueError(f"{path}: missing field {key!r}")
    layers = data["layers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(r, list) for r in layers):
        raise ValueError(f"{path}: 'layers' must be a non-empty list of per-input lists of booleans")
    width = len(layers[0])
    for index, plan in enumerate(layers):
        if len(plan) != width or not all(isinstance(v, bool) for v in plan):
            raise ValueError(f"{path}: layers[{index}] must be {width} booleans")
    families = data.get("families")
    if families is not None and (not isinstance(families, list) or len(families) != len(layers)):
        raise ValueError(f"{path}: 'families' must list one name per input ({len(layers)})")
    prefix = data.get("num_prefix_layers")
    if prefix is not None and (not isinstance(prefix, int) or not 0 <= prefix <= width):
        raise ValueError(f"{path}: 'num_prefix_layers' must be an integer in [0, {width}]")
    heads = data.get("heads")
    if heads is not None and (
        not isinstance(heads, list)
        or len(heads) != len(layers)
        or not all(isinstance(plan, list) and len(plan) == width for plan in heads)
    ):
        raise ValueError(f"{path}: 'heads' must be [inputs][{width} layers][head units] booleans")
    return PlanFile(
        path=path,
        budget=float(data["budget"]),
        layers=layers,
        families=None if families is None else [str(f) for f in families],
        num_prefix_layers=prefix,
        heads=heads,
        model=str(data.get("model", "")),
        method=str(data.get("method", "")),
        benchmark=str(data.get("benchmark", "")),
    )


def plan_files(paths: Sequence[str | Path]) -> list[Path]:
    """Every `plans_*.json` in the folders, sorted by name within each folder."""
    return [file for path in paths for file in sorted(Path(path).glob(PLANS_GLOB))]


def report_plan_files(paths: Sequence[str | Path], keep: int = 3) -> list[Path]:
    """The plan files a report draws: per folder and (model, method), those of `spread_budgets`, in
    `plan_files` order."""
    files = plan_files(paths)
    groups: dict[tuple[Path, str, str], list[tuple[float, Path]]] = {}
    for file in files:
        plan = load_plan_file(file)
        groups.setdefault((file.parent, plan.model, plan.method), []).append((plan.budget, file))
    kept = set()
    for entries in groups.values():
        spread = set(spread_budgets([budget for budget, _ in entries], keep))
        kept |= {file for budget, file in entries if budget in spread}
    return [file for file in files if file in kept]


# ---- row keys and helpers ---------------------------------------------------------------------------
def model_of(row: Mapping) -> str:
    return str(row.get("model") or "")


def budget_of(row: Mapping) -> float:
    return round(float(row["budget"]), 6)


def row_key(row: Mapping) -> tuple:
    return (
        model_of(row),
        str(row.get("scheduler") or ""),
        str(row["benchmark"]),
        str(row["method"]),
        budget_of(row),
    )


def line_order(key: tuple) -> tuple:
    model, method, budget = key
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (model, rank, method, -budget)  # the paper lists budgets from 100% down


def sort_key(row: Mapping) -> tuple:
    model, scheduler, benchmark, method, budget = row_key(row)
    return line_order((model, method, budget)) + (scheduler, benchmark)


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from error
