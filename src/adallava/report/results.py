"""RESULTS.md from `adallava eval` results folders: paper-style tables, the plots, the commands.

A results folder holds (docs/plots.md):
- `results.json`: the rows `adallava eval` writes, one per (benchmark, method, budget[, model]);
- optional `meta.json` (`adallava eval` writes it): {"commands": [...], "runs": [{"command",
  "git_commit", "versions", "machine"}, ...], "model": ..., "scheduler": ..., "description": ...};
  `model` / `scheduler` fill rows that lack them, `commands` and `runs` say how the folder was made;
- optional `commands.txt`: the commands, one per line ('#' comments and blank lines skipped), used
  when meta.json gives none;
- optional `plans_*.json`: execution plans at one budget (`PlanFile`), drawn as heatmaps.

FLOPs: the primary column is `llm_flops`, the LLM's prefill FLOPs as the paper's Table 1 counts them
(decoder stack, LLM-Viewer conventions); `total_flops` (+ vision tower, projector, lm_head) is shown
beside it, labelled. Everything here is deterministic: rows, columns and folders are sorted, numbers
have fixed formats and the plots carry no dates, so regenerating from the same folders gives the same
files. Reading the folders is `adallava.report.folders`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from adallava.report import plots as viz
from adallava.report.folders import (  # noqa: F401  (the reading API, re-exported)
    COMMANDS_FILE,
    META_FILE,
    PLANS_GLOB,
    RESULTS_FILE,
    PlanFile,
    ResultsDir,
    budget_of,
    line_order,
    load_plan_file,
    load_results_dir,
    load_rows,
    merge_rows,
    model_of,
    plan_files,
    report_plan_files,
)
from adallava.report.plots import (
    BENCHMARK_NAMES,
    adherence_points,
    flop_unit,
    method_label,
    short_names,
)

# The paper's column order (Table 1) and names; other benchmarks follow, sorted.
BENCHMARK_ORDER = ("vqav2", "scienceqa", "textvqa", "pope", "mme", "mmbench")
DASH = "–"


# ---- plots -----------------------------------------------------------------------------------------
def write_plots(
    rows: Sequence[Mapping], plans: Sequence[str | Path], out_dir: str | Path, flops: str = "llm_flops"
) -> dict[str, list[Path]]:
    """Write every plot the rows and plan files support into out_dir. Returns {section: PNG paths}:

    - "accuracy": `accuracy_<benchmark>.png`, all methods and models (Fig. 3: adaptive vs early exit);
    - "models": `models_<benchmark>.png`, adaptive + full rows, when several models were evaluated
      adaptively (Fig. 6: L vs H);
    - "adherence": `adherence.png`, when there are adaptive rows and a way to price them;
    - "usage": `usage_<model>.png`, layer usage per budget from the rows' plan statistics;
    - "plans": `plans_<name>.png` (per input), `plans_<name>_families.png` (per family) and
      `heads_<name>.png` (head switches) for each `plans_<name>.json`.
    Each PNG has an SVG twin. flops: the x axis of the accuracy plots, "llm_flops" (the paper's
    convention, the default) or "total_flops".
    """
    out_dir = Path(out_dir)
    written: dict[str, list[Path]] = {"accuracy": [], "models": [], "adherence": [], "usage": [], "plans": []}
    for benchmark in benchmarks_of(rows):
        accuracy, models = _accuracy_plots(rows, benchmark, out_dir, flops)
        written["accuracy"] += accuracy
        written["models"] += models
    written["adherence"] = _adherence_plot(rows, out_dir)
    written["usage"] = _usage_plots(rows, out_dir)
    for file in plans:
        written["plans"] += _plan_file_plots(file, out_dir)
    return written


def _accuracy_plots(
    rows: Sequence[Mapping], benchmark: str, out_dir: Path, flops: str
) -> tuple[list[Path], list[Path]]:
    """`accuracy_<benchmark>.png` (every row), and `models_<benchmark>.png` (adaptive + full rows)
    when several models were evaluated adaptively on the benchmark."""
    path = out_dir / f"accuracy_{_safe(benchmark)}.png"
    viz.plot_accuracy_vs_flops(rows, benchmark, path, flops=flops)
    adaptive_models = {model_of(r) for r in rows if r["benchmark"] == benchmark and r["method"] == "adaptive"}
    if len(adaptive_models) <= 1:
        return [path], []
    chosen = [r for r in rows if r["method"] in ("adaptive", "full")]
    models_path = out_dir / f"models_{_safe(benchmark)}.png"
    title = f"{BENCHMARK_NAMES.get(benchmark, benchmark)}: models compared (point labels: budget)"
    viz.plot_accuracy_vs_flops(chosen, benchmark, models_path, flops=flops, title=title)
    return [path], [models_path]


def _adherence_plot(rows: Sequence[Mapping], out_dir: Path) -> list[Path]:
    """`adherence.png` when there are adaptive rows and a way to price them."""
    if not any(r["method"] == "adaptive" for r in rows):
        return []
    path = out_dir / "adherence.png"
    try:
        viz.plot_budget_adherence(rows, path)
    except ValueError:
        return []  # no budget_use, full_llm_flops or full row: nothing to measure the use against
    return [path]


def _usage_plots(rows: Sequence[Mapping], out_dir: Path) -> list[Path]:
    """`usage_<model>.png` per adaptive model whose rows carry layer usage: budgets x layers."""
    written = []
    adaptive = sorted({model_of(r) for r in rows if r["method"] == "adaptive"})
    names = short_names(adaptive)
    for model in adaptive:
        usage = _layer_usage(rows, model)
        if usage:
            path = out_dir / f"usage_{_safe(names[model] or 'model')}.png"
            budgets = sorted(usage)
            viz.plot_plan_heatmap(
                np.array([usage[b] for b in budgets]), [f"budget {b:g}" for b in budgets], path,
                title=f"{names[model] or 'Adaptive model'}: layer usage per budget (all benchmarks)",
            )  # fmt: skip
            written.append(path)
    return written


def _plan_file_plots(file: str | Path, out_dir: Path) -> list[Path]:
    """The heatmaps of one `plans_<name>.json`: `plans_<name>.png` (per input),
    `plans_<name>_families.png` (per family, with families) and `heads_<name>.png` (with heads)."""
    plan = load_plan_file(file)
    name = _safe(Path(file).stem.removeprefix("plans_"))
    method = method_label(plan.method) if plan.method else ""
    who = " ".join(part for part in (plan.model, method, plan.benchmark) if part)
    title = f"{who + ': ' if who else ''}execution plans at budget {plan.budget:g}"
    path = out_dir / f"plans_{name}.png"
    grid = np.array(plan.layers, dtype=bool)
    viz.plot_plan_heatmap(grid, plan.families, path, plan.num_prefix_layers, plan.budget, title)
    written = [path]
    if plan.families is not None:
        families = sorted(set(plan.families))
        usage = np.array([grid[[f == family for f in plan.families]].mean(0) for family in families])
        path = out_dir / f"plans_{name}_families.png"
        share = title + " (share per family)"
        viz.plot_plan_heatmap(usage, families, path, plan.num_prefix_layers, plan.budget, share)
        written.append(path)
    if plan.heads is not None:
        path = out_dir / f"heads_{name}.png"
        viz.plot_head_usage(np.array(plan.heads, dtype=bool), path, plan.num_prefix_layers, plan.budget)
        written.append(path)
    return written


def _layer_usage(rows: Sequence[Mapping], model: str) -> dict[float, list[float]]:
    """{budget: per-layer usage} of a model's adaptive rows, pooled over benchmarks (weighted by n)."""
    pooled: dict[float, list] = {}
    for row in rows:
        usage = row.get("layer_usage")
        if usage is None and isinstance(row.get("plans"), dict):
            usage = row["plans"].get("layer_usage")
        if row["method"] != "adaptive" or model_of(row) != model or not usage:
            continue
        n = int(row.get("n") or 1)
        total = pooled.setdefault(float(row["budget"]), [[0.0] * len(usage), 0])
        if len(total[0]) != len(usage):
            return {}
        total[0] = [a + n * float(u) for a, u in zip(total[0], usage, strict=True)]
        total[1] += n
    return {b: [min(1.0, max(0.0, u / count)) for u in sums] for b, (sums, count) in pooled.items()}


# ---- tables ----------------------------------------------------------------------------------------
def benchmarks_of(rows: Sequence[Mapping]) -> list[str]:
    """Benchmarks in the paper's order, then any others sorted."""
    present = {str(row["benchmark"]) for row in rows}
    return [b for b in BENCHMARK_ORDER if b in present] + sorted(present - set(BENCHMARK_ORDER))


def main_table(rows: Sequence[Mapping]) -> str:
    """Table 1/3 style: one line per (model, method, budget), one column per benchmark (score), the
    mean LLM prefill FLOPs per sample (the paper's convention) and the total (vision tower, projector,
    LLM, lm_head), both over the line's benchmarks weighted by n, and ms per sample."""
    benchmarks = benchmarks_of(rows)
    lines: dict[tuple, dict[str, Mapping]] = {}
    names = short_names(model_of(row) for row in rows)
    for row in rows:
        lines.setdefault((_model_name(row, names), row["method"], budget_of(row)), {})[row["benchmark"]] = row
    scale, prefix = flop_unit(row["total_flops"] for row in rows)
    header = ["Model", "Method", "Budget (%)", f"LLM FLOPs ({prefix})", f"Total FLOPs ({prefix})"]
    header += [BENCHMARK_NAMES.get(b, b) for b in benchmarks] + ["ms / sample"]
    body = []
    for key in sorted(lines, key=line_order):
        model, method, budget = key
        cells = lines[key]
        flops = [_flops(_weighted(cells.values(), key), scale) for key in ("llm_flops", "total_flops")]
        ms = _weighted([c for c in cells.values() if c.get("ms_per_sample") is not None], "ms_per_sample")
        body.append(
            [model or DASH, method_label(method), _percent(budget), *flops]
            + [_score(cells[b]["score"]) if b in cells else DASH for b in benchmarks]
            + [DASH if ms is None else f"{ms:.1f}"]
        )
    return _markdown(header, body)


def scheduler_table(rows: Sequence[Mapping], benchmark: str) -> str:
    """Table 2 style: per adaptive series (model, scheduler) and budget, the score and mean LLM (and
    total) prefill FLOPs on one benchmark and the samples over budget there; then, pooled over every
    benchmark, the LLM FLOPs used over the budget (below 1: under-use) and the samples over budget
    (bold when any)."""
    chosen = [r for r in rows if r["benchmark"] == benchmark and r["method"] == "adaptive"]
    if not chosen:
        return ""
    try:
        pooled = adherence_points(rows)
    except ValueError:  # no budget_use, full_llm_flops or full row: the use cannot be measured
        pooled = {}
    name = BENCHMARK_NAMES.get(benchmark, benchmark)
    names = short_names(model_of(r) for r in chosen)
    scale, prefix = flop_unit(r["total_flops"] for r in chosen)
    header = ["Model", "Scheduler", "Budget (%)", f"{name} score", f"LLM FLOPs ({prefix})"]
    header += [f"Total FLOPs ({prefix})", "Over budget"]
    header += ["All: used / budget", "All: over budget"]
    body = []
    for row in sorted(chosen, key=lambda r: (model_of(r), str(r.get("scheduler") or ""), budget_of(r))):
        scheduler = str(row.get("scheduler") or "")
        line = [names[model_of(row)] or DASH, scheduler or DASH, _percent(budget_of(row))]
        line += [_score(row["score"])]
        line += [_flops(row["llm_flops"], scale), _flops(row["total_flops"], scale), _violations(row)]
        point = {p[0]: p for p in pooled.get((model_of(row), scheduler), [])}.get(budget_of(row))
        if point is None:
            line += [DASH, DASH]
        else:
            budget, used, violations, n = point
            line += [f"{used / budget:.3f}", _bold(f"{violations}/{n}", violations)]
        body.append(line)
    return _markdown(header, body)


# ---- the report ------------------------------------------------------------------------------------
def build_report(
    results: Sequence[str | Path],
    out: str | Path,
    plots_dir: str | Path | None = None,
    table2_benchmark: str | None = None,
    command: str | None = None,
) -> str:
    """Write the plots into `plots_dir` (default: `plots/` beside `out`), then RESULTS.md to `out`.
    Returns the markdown. `command` is the line that produced the report (shown last)."""
    out = Path(out)
    plots_dir = Path(plots_dir) if plots_dir is not None else out.parent / "plots"
    folders = sorted((load_results_dir(path) for path in results), key=lambda f: _relative(f.path, out))
    rows = merge_rows(folders)
    if not rows:
        raise ValueError("the results folders hold no rows")
    if table2_benchmark is not None and table2_benchmark not in benchmarks_of(rows):
        raise ValueError(
            f"--table2-benchmark {table2_benchmark!r} is not among the results' {benchmarks_of(rows)}"
        )
    written = write_plots(rows, report_plan_files([f.path for f in folders]), plots_dir)
    text = render_report(rows, folders, written, out, table2_benchmark, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


def render_report(
    rows: Sequence[Mapping],
    folders: Sequence[ResultsDir],
    plots: Mapping[str, Sequence[Path]],
    out: Path,
    table2_benchmark: str | None = None,
    command: str | None = None,
) -> str:
    """The RESULTS.md text (pure: no files read or written)."""
    benchmarks = benchmarks_of(rows)
    if table2_benchmark is None:
        table2_benchmark = benchmarks[0]
    elif table2_benchmark not in benchmarks:
        raise ValueError(f"--table2-benchmark {table2_benchmark!r} is not among the results' {benchmarks}")
    parts = _main_section(rows, folders, out)
    parts += _scheduler_section(rows, table2_benchmark)
    parts += _plot_sections(plots, out)
    parts += _how_produced(folders, out, command)
    return "\n\n".join(part for part in parts if part) + "\n"


def _main_section(rows: Sequence[Mapping], folders: Sequence[ResultsDir], out: Path) -> list[str]:
    """The title, what the numbers mean, the folders, then the Table 1/3-style table."""
    return [
        "# Results",
        "<!-- Generated by `adallava report`; edit the results folders or the generator, not this file. -->",
        "Scores are each benchmark's primary metric on a 0-100 scale, on the evaluated split. FLOPs are "
        "analytic prefill FLOPs per sample, means over the samples, 2 FLOPs per multiply-add: **LLM "
        "FLOPs** (the primary column) count the LLM's decoder stack, as the paper's Table 1 does "
        "(LLM-Viewer conventions); **Total FLOPs** add the vision tower, projector and lm_head. Budgets "
        "are fractions of the full model's LLM prefill FLOPs. ms / sample is measured wall-clock time. "
        "Folders:",
        "\n".join(
            f"- `{_relative(f.path, out)}`" + (f": {f.description}" if f.description else "") for f in folders
        ),
        "## Benchmarks x budgets (Table 1/3 style)",
        "FLOPs: the mean over the line's benchmarks, weighted by their sample counts.",
        main_table(rows),
    ]


def _scheduler_section(rows: Sequence[Mapping], benchmark: str) -> list[str]:
    """The Table 2-style section on one benchmark, or nothing without adaptive rows there."""
    table2 = scheduler_table(rows, benchmark)
    if not table2:
        return []
    name = BENCHMARK_NAMES.get(benchmark, benchmark)
    return [
        "## Schedulers across budgets (Table 2 style)",
        f"Probabilistic (AdaLLaVA) vs deterministic scheduler on {name}: score, mean LLM and total "
        "prefill FLOPs per sample and samples whose plan cost more than their budget (**bold** when "
        "any). The `All` columns pool every benchmark: the mean over samples of LLM prefill FLOPs / "
        "(budget x the full model's), below 1 for under-use, and the samples over budget.",
        table2,
    ]


PLOT_SECTIONS = (
    ("accuracy", "Accuracy vs FLOPs (Fig. 3 style: adaptive vs early exit and the other baselines)"),
    ("models", "Models compared (Fig. 6 style: AdaLLaVA-L vs AdaLLaVA-H)"),
    ("adherence", "Budget adherence"),
    ("usage", "Layer usage per budget"),
    ("plans", "Execution plans (Fig. 5 style)"),
)


def _plot_sections(plots: Mapping[str, Sequence[Path]], out: Path) -> list[str]:
    """One section per kind of plot that was drawn: its heading, then its images (relative links)."""
    parts = []
    for key, title in PLOT_SECTIONS:
        images = plots.get(key) or []
        if images:
            parts.append(f"## {title}")
            parts.append("\n\n".join(f"![{p.stem}]({_relative(p, out)})" for p in images))
    return parts


def _how_produced(folders: Sequence[ResultsDir], out: Path, command: str | None) -> list[str]:
    """Per folder, the commands that made it and where they ran (meta.json's runs); then the command
    that made the report."""
    how = ["## How these were produced"]
    for folder in folders:
        how.append(f"`{_relative(folder.path, out)}`:")
        if folder.commands:
            how.append("```bash\n" + "\n".join(folder.commands) + "\n```")
        else:
            how.append(f"(no {META_FILE} or {COMMANDS_FILE} in the folder)")
        if folder.runs:
            how.append("\n".join(_provenance(run, folder.commands) for run in folder.runs))
    if command:
        how += ["This file and its plots:", f"```bash\n{command}\n```"]
    return how


def _provenance(run: Mapping, commands: Sequence[str]) -> str:
    """One meta.json run as a list item: its command (by number when listed above), git commit,
    package versions, machine."""
    versions, machine = run.get("versions") or {}, run.get("machine") or {}
    commit = str(run.get("git_commit") or "unknown") + (" (modified)" if run.get("git_modified") else "")
    names = ("adallava", "torch", "transformers")
    packages = ", ".join(f"{name} {versions.get(name, 'unknown')}" for name in names)
    where = ", ".join(
        f"{label} {machine[key]}"
        for key, label in (
            ("platform", "platform"),
            ("cpu_count", "CPUs"),
            ("device", "device"),
            ("threads", "torch threads"),
            ("processes", "processes"),
        )  # fmt: skip
        if machine.get(key) is not None
    )
    command = str(run.get("command", "?"))
    which = f"command {commands.index(command) + 1}" if command in commands else f"`{command}`"
    return f"- {which}: git commit `{commit}`; {packages}; {where or 'machine unknown'}"


# ---- formatting ------------------------------------------------------------------------------------
def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    align = ["---"] * 2 + ["---:"] * (len(header) - 2)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def _score(value: float) -> str:
    return f"{float(value):.1f}"


def _flops(value: float | None, scale: float) -> str:
    if value is None:
        return DASH
    value = value / scale
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _percent(budget: float) -> str:
    return f"{100 * budget:.4g}"


def _violations(row: Mapping) -> str:
    violations = int(row.get("violations") or 0)
    return _bold(f"{violations}/{row['n']}" if row.get("n") is not None else str(violations), violations)


def _bold(text: str, when) -> str:
    return f"**{text}**" if when else text


def _weighted(rows, key: str) -> float | None:
    rows = list(rows)
    if not rows:
        return None
    weights = [float(r.get("n") or 1) for r in rows]
    return sum(w * float(r[key]) for w, r in zip(weights, rows, strict=True)) / sum(weights)


def _model_name(row: Mapping, names: Mapping[str, str]) -> str:
    """The model as Table 1 names it (`names`: see `short_names`), with its scheduler when that is
    not the default one."""
    model, scheduler = names[model_of(row)], str(row.get("scheduler") or "")
    if scheduler in ("", "probabilistic"):
        return model
    return f"{model} ({scheduler})" if model else scheduler


def _safe(name: str) -> str:
    """A file-name-safe form of a model or benchmark name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed"


def _relative(path: Path, out: Path) -> str:
    """`path` as written in RESULTS.md: relative to the file's folder, with forward slashes."""
    return Path(os.path.relpath(Path(path).resolve(), Path(out).resolve().parent)).as_posix()
