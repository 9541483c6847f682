"""Pictures of budgets, plans and the latency token, in the style of the AdaLLaVA paper's figures.

Every `plot_*` function draws one matplotlib `Figure` (no pyplot, no global state, Agg canvas),
writes it as PNG and SVG next to each other (`out_path` with either suffix, or none) and returns it,
so tests and notebooks can inspect what was drawn. Colours are the Okabe-Ito palette (colour-blind
safe); heatmaps use viridis (attention: inferno). The files are reproducible: no dates or versions
in their metadata and a fixed SVG id salt.

- `plot_accuracy_vs_flops`: score vs mean LLM prefill FLOPs (the paper's convention; or the total with
  the vision tower), one line per method (and model), the full model as a star (paper Fig. 3, 6);
- `plot_plan_heatmap` / `plot_head_usage`: execution plans over inputs at one budget (Fig. 5), and
  head/neuron-group usage per layer for head switches;
- `plot_latency_attention`: the latency token's attention over the image patches at the last
  prefix layer, over the image (Fig. 4, 10), as `adallava.inference.attention.latency_token_attention`
  measures it (plots never run the model);
- `plot_budget_adherence`: cost used per budget and violation rate per scheduler (Table 2).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePath

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
METHOD_ORDER = ("adaptive", "early-exit", "static", "random", "full")
METHOD_LABELS = {
    "adaptive": "AdaLLaVA (adaptive)",
    "early-exit": "Early exit",
    "static": "Best static plan",
    "random": "Random plan",
    "full": "Full model",
}
BENCHMARK_NAMES = {
    "vqav2": "VQAv2",
    "scienceqa": "SQA-IMG",
    "textvqa": "TextVQA",
    "pope": "POPE",
    "mme": "MME",
    "mmbench": "MMBench",
}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
PLAN_OFF, PLAN_ON, PREFIX = "#0072B2", "#CDE6F7", "#BBBBBB"  # deep = skipped, shallow = runs (as Fig. 5)
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "adallava",  # stable element ids: the same figure gives the same SVG
    "svg.fonttype": "none",  # text stays text in the SVG
}
FLOP_UNITS = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


# ---- shared helpers ------------------------------------------------------------------------------
@contextmanager
def _style():
    with matplotlib.rc_context(STYLE):
        yield


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg whatever backend the caller's matplotlib has
    return figure


def save_figure(figure: Figure, out_path: str | Path) -> list[Path]:
    """Write `figure` as `<stem>.png` and `<stem>.svg` (out_path may carry either suffix or none).
    Returns the two paths; parent folders are created."""
    out_path = Path(out_path)
    stem = out_path.with_suffix("") if out_path.suffix.lower() in (".png", ".svg") else out_path
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    with _style():
        figure.savefig(paths[0], dpi=150, metadata={"Software": None})
        figure.savefig(paths[1], metadata={"Date": None, "Creator": None})
    return paths


def flop_unit(values: Iterable[float]) -> tuple[float, str]:
    """(divisor, prefix) that shows the largest value as a number >= 1: (1e12, "T"), (1e9, "G"), ..."""
    largest = max((abs(float(v)) for v in values), default=0.0)
    for scale, prefix in FLOP_UNITS:
        if largest >= scale:
            return scale, prefix
    return 1.0, ""


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def short_names(models: Iterable[str]) -> dict[str, str]:
    """How models are named in legends and tables: `adallava eval` records the --model path, shown by
    its last component (models/tiny-adallava-l -> tiny-adallava-l) unless two models share it."""
    models = set(models)
    short = {model: PurePath(model).name or model for model in models}
    counts = Counter(short.values())
    return {model: name if counts[name] == 1 else model for model, name in short.items()}


def series_key(row: Mapping) -> tuple[str, str]:
    """(model, method): one curve. Rows without a model name share the model ""."""
    return (str(row.get("model") or ""), str(row["method"]))


def _label(model: str, text: str, show_model: bool) -> str:
    return f"{model}: {text}" if show_model and model else text


def _budget_text(budget: float) -> str:
    return f"{float(budget):g}"


# ---- accuracy vs FLOPs (Fig. 3 / 6) ----------------------------------------------------------------
def plot_accuracy_vs_flops(
    rows: Sequence[Mapping],
    benchmark: str,
    out_path: str | Path,
    flops: str = "llm_flops",
    title: str | None = None,
) -> Figure:
    """Score (0-100) against mean prefill FLOPs per sample on one benchmark.

    rows: results rows ({benchmark, method, budget, score, total_flops, llm_flops[, model]}); one
    line per (model, method) through its budgets, each marker annotated with its budget; the
    "full" method is drawn as a star (one per distinct point). flops: "llm_flops" (the LLM's decoder
    stack, as the paper's Table 1 and figures count; the default) or "total_flops" (+ vision tower,
    projector, lm_head). The unit (TFLOPs, GFLOPs, ...) follows the data.
    Writes PNG + SVG; returns the figure (`axes[0].lines`: the curves, `.collections`: the stars).
    """
    if flops not in ("total_flops", "llm_flops"):
        raise ValueError(f"flops must be 'total_flops' or 'llm_flops', got {flops!r}")
    chosen = [row for row in rows if row["benchmark"] == benchmark]
    if not chosen:
        available = sorted({str(row["benchmark"]) for row in rows})
        raise ValueError(f"no rows for benchmark {benchmark!r}; the rows have {available}")
    scale, prefix = flop_unit(row[flops] for row in chosen)
    models = sorted({series_key(row)[0] for row in chosen})
    names = short_names(models)
    show_model = len(models) > 1
    curves: dict[tuple[str, str], list[Mapping]] = {}
    for row in chosen:
        curves.setdefault(series_key(row), []).append(row)
    with _style():
        figure = _figure(8.6, 4.6)
        axes = figure.add_subplot()
        stars, labels = _draw_curves(axes, curves, models, names, show_model, flops, scale)
        _draw_full_model(axes, stars, names, show_model)
        _label_budgets(axes, labels)
        what = "LLM prefill FLOPs" if flops == "llm_flops" else "total prefill FLOPs (vision + LLM + lm_head)"
        axes.set_xlabel(f"Mean {what} per sample ({prefix}FLOPs)")
        axes.set_ylabel("Score (0-100)")
        name = BENCHMARK_NAMES.get(benchmark, benchmark)
        axes.set_title(title or f"{name}: accuracy vs. compute (point labels: budget)")
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    save_figure(figure, out_path)
    return figure


def _draw_curves(
    axes,
    curves: Mapping[tuple[str, str], list[Mapping]],
    models: list[str],
    names: Mapping[str, str],
    show_model: bool,
    flops: str,
    scale: float,
) -> tuple[dict, dict]:
    """One line per (model, method) but "full", through its budgets. Returns the full model's points
    {(x, y): [models]} (drawn as stars) and the budget labels {(x, budget): (lowest y, colour, n)}."""
    stars: dict[tuple[float, float], list[str]] = {}
    labels: dict[tuple[float, float], tuple[float, str, int]] = {}
    colour_index = 0
    for model, method in sorted(curves, key=lambda key: (key[0], _method_rank(key[1]))):
        points = sorted(curves[model, method], key=lambda row: float(row["budget"]))
        x = [float(row[flops]) / scale for row in points]
        y = [float(row["score"]) for row in points]
        if method == "full":
            for xi, yi in zip(x, y, strict=True):
                stars.setdefault((round(xi, 9), round(yi, 9)), []).append(model)
            continue
        colour = PALETTE[colour_index % (len(PALETTE) - 1)]  # black is kept for the full model
        colour_index += 1
        style = models.index(model)
        axes.plot(
            x, y, color=colour, linestyle=LINESTYLES[style % len(LINESTYLES)],
            marker=MARKERS[_method_rank(method)[0] % len(MARKERS)], markersize=6, linewidth=1.8,
            label=_label(names[model], method_label(method), show_model),
        )  # fmt: skip
        budgets = [float(row["budget"]) for row in points]
        # On a fine grid (the 0.05 grid has 11 points) labels overprint: label the spread only.
        labelled = set(spread_budgets(budgets)) if len(set(budgets)) > 5 else set(budgets)
        for xi, yi, row in zip(x, y, points, strict=True):
            if float(row["budget"]) not in labelled:
                continue
            key = (round(xi, 9), float(row["budget"]))
            low, low_colour, count = labels.get(key, (math.inf, colour, 0))
            labels[key] = (yi, colour, count + 1) if yi < low else (low, low_colour, count + 1)
    return stars, labels


def spread_budgets(budgets: Sequence[float], keep: int = 3) -> list[float]:
    """At most `keep` of the distinct budgets, spread over their range: the lowest, the highest and
    evenly spaced ones between, ascending (a report shows Fig. 5's spread, not every grid point)."""
    if keep < 2:
        raise ValueError(f"keep must be >= 2 (the lowest and the highest budget), got {keep}")
    distinct = sorted(set(budgets))
    if len(distinct) <= keep:
        return distinct
    picks = {round(i * (len(distinct) - 1) / (keep - 1)) for i in range(keep)}
    return [distinct[i] for i in sorted(picks)]


def _draw_full_model(
    axes, stars: Mapping[tuple[float, float], list[str]], names: Mapping[str, str], show_model: bool
) -> None:
    """The full model: one star per distinct point, the first black, the others grey."""
    for index, ((xi, yi), models_at) in enumerate(sorted(stars.items())):
        who = ", ".join(names[model] for model in models_at if model)
        axes.scatter(
            [xi], [yi], marker="*", s=280, zorder=4, color=PALETTE[-1] if index == 0 else "#777777",
            edgecolors="white", linewidths=0.8,
            label=f"{method_label('full')} ({who})" if show_model and who and len(stars) > 1
            else method_label("full"),
        )  # fmt: skip


def _label_budgets(axes, labels: Mapping[tuple[float, float], tuple[float, str, int]]) -> None:
    """Budgets under their markers; where several curves share a point's FLOPs and budget, once."""
    for (xi, budget), (yi, colour, count) in sorted(labels.items()):
        axes.annotate(
            _budget_text(budget), (xi, yi), textcoords="offset points", xytext=(4, -12), fontsize=8,
            color="#444444" if count > 1 else colour,
        )  # fmt: skip


# ---- execution plans (Fig. 5) ----------------------------------------------------------------------
def plot_plan_heatmap(
    plans,
    labels: Sequence[str] | None,
    out_path: str | Path,
    num_prefix_layers: int | None = None,
    budget: float | None = None,
    title: str | None = None,
) -> Figure:
    """Execution plans over inputs, rows = inputs (or groups), columns = decoder layers.

    plans: bool [inputs, layers] (True = the layer runs; one plan per input), or float [groups,
    layers] usage frequencies in [0, 1] (e.g. one row per task family). labels: one per row; for
    bool plans, inputs are grouped by label (stable order) with a line between groups and the
    group name on the axis. The first `num_prefix_layers` columns (always run) are shaded grey.
    Writes PNG + SVG; returns the figure (`axes[0].images[0]`: the [rows, layers] grid, in the
    drawn order).
    """
    grid = _plan_grid(plans, labels, num_prefix_layers)
    boolean = grid.dtype == bool
    rows, layers = grid.shape
    grid, ticks, boundaries = _group_rows(grid, labels, boolean)
    values = np.ma.masked_array(grid.astype(float), mask=np.zeros_like(grid, dtype=bool))
    if num_prefix_layers:
        values.mask[:, :num_prefix_layers] = True
    if boolean:
        cmap = ListedColormap([PLAN_OFF, PLAN_ON]).with_extremes(bad=PREFIX)
    else:
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=PREFIX)

    with _style():
        height = min(max(3.2, (0.16 if boolean else 0.45) * rows + 1.8), 11.0)
        figure = _figure(max(6.4, 0.34 * layers + 3.6), height)
        axes = figure.add_subplot()
        image = axes.imshow(values, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        _draw_plan_axes(axes, layers, ticks, boundaries, num_prefix_layers, boolean)
        if boolean:
            _plan_legend(axes, num_prefix_layers)
        else:
            figure.colorbar(image, ax=axes, label="Share of inputs running it")
            _annotate_cells(axes, values)
        at = f" at budget {_budget_text(budget)}" if budget is not None else ""
        axes.set_title(title or f"Execution plans{at}")
    save_figure(figure, out_path)
    return figure


def _plan_grid(plans, labels: Sequence[str] | None, num_prefix_layers: int | None) -> np.ndarray:
    """`plans` as a checked [rows, layers] array: bool plans, or usage frequencies in [0, 1]."""
    grid = np.asarray(plans.cpu() if isinstance(plans, torch.Tensor) else plans)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"plans must be a non-empty [inputs, layers] array, got shape {grid.shape}")
    if grid.dtype != bool and (np.nanmin(grid) < 0 or np.nanmax(grid) > 1):
        raise ValueError("usage plans must be frequencies in [0, 1]")
    rows, layers = grid.shape
    if labels is not None and len(labels) != rows:
        raise ValueError(f"labels has {len(labels)} entries for {rows} plan rows")
    if num_prefix_layers is not None and not 0 <= num_prefix_layers <= layers:
        raise ValueError(f"num_prefix_layers must be in [0, {layers}], got {num_prefix_layers}")
    return grid


def _group_rows(
    grid: np.ndarray, labels: Sequence[str] | None, boolean: bool
) -> tuple[np.ndarray, list[tuple[float, str]], list[int]]:
    """(grid in drawn order, y ticks [(position, name)], rows where a new group starts). Bool plans
    are grouped by label (stable: inputs keep their order), each group ticked "name (count)"; usage
    rows keep their order, one tick each."""
    ticks: list[tuple[float, str]] = []
    boundaries: list[int] = []
    if labels is not None and boolean:
        rows = len(grid)
        order = sorted(range(rows), key=lambda i: str(labels[i]))  # stable: inputs keep their order
        grid = grid[order]
        names = [str(labels[i]) for i in order]
        start = 0
        for i in range(1, rows + 1):
            if i == rows or names[i] != names[start]:
                ticks.append(((start + i - 1) / 2, f"{names[start]} ({i - start})"))
                if i < rows:
                    boundaries.append(i)
                start = i
    elif labels is not None:
        ticks = [(i, str(label)) for i, label in enumerate(labels)]
    return grid, ticks, boundaries


def _draw_plan_axes(
    axes,
    layers: int,
    ticks: Sequence[tuple[float, str]],
    boundaries: Sequence[int],
    num_prefix_layers: int | None,
    boolean: bool,
) -> None:
    """Group separators, the prefix line, and the axis labels and ticks of a plan heatmap."""
    for boundary in boundaries:
        axes.axhline(boundary - 0.5, color="white", linewidth=2)
    if num_prefix_layers:
        axes.axvline(num_prefix_layers - 0.5, color="black", linewidth=1)
    axes.set_xlabel("Decoder layer")
    step = max(1, math.ceil(layers / 16))
    axes.set_xticks(range(0, layers, step))
    if ticks:
        axes.set_yticks([t for t, _ in ticks], [name for _, name in ticks])
        axes.set_ylabel("Task family (inputs)" if boolean else "")
    else:
        axes.set_ylabel("Input")


def _plan_legend(axes, num_prefix_layers: int | None) -> None:
    """The legend of bool plans: runs, skipped and (when shaded) the always-run prefix."""
    handles = [Patch(color=PLAN_ON, label="runs"), Patch(color=PLAN_OFF, label="skipped")]
    if num_prefix_layers:
        handles.insert(0, Patch(color=PREFIX, label=f"prefix 0-{num_prefix_layers - 1} (always runs)"))
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_head_usage(
    usage,
    out_path: str | Path,
    num_prefix_layers: int | None = None,
    budget: float | None = None,
    unit: str = "head unit",
    title: str | None = None,
) -> Figure:
    """Head (or MLP group) usage of head-switch plans: float [layers, units] fractions of inputs
    that run each unit (e.g. `plan.heads.float().mean(0)`), or bool [inputs, layers, units] plans,
    averaged here. Rows = layers, prefix rows shaded grey. Writes PNG + SVG; returns the figure."""
    grid = np.asarray(usage.cpu() if isinstance(usage, torch.Tensor) else usage)
    if grid.ndim == 3:
        grid = grid.astype(float).mean(0)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"usage must be [layers, units] or [inputs, layers, units], got shape {grid.shape}")
    layers, units = grid.shape
    values = np.ma.masked_array(grid.astype(float), mask=np.zeros_like(grid, dtype=bool))
    if num_prefix_layers:
        values.mask[:num_prefix_layers] = True
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=PREFIX)
    with _style():
        figure = _figure(max(6.4, 0.34 * units + 3.6), min(max(3.2, 0.3 * layers + 1.6), 11.0))
        axes = figure.add_subplot()
        image = axes.imshow(values, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        axes.set_xlabel(f"{unit.capitalize()} index")
        axes.set_ylabel("Decoder layer (grey: always-run prefix)")
        axes.set_xticks(range(0, units, max(1, math.ceil(units / 16))))
        axes.set_yticks(range(0, layers, max(1, math.ceil(layers / 16))))
        figure.colorbar(image, ax=axes, label="Share of inputs running it")
        _annotate_cells(axes, values)
        if num_prefix_layers:
            axes.axhline(num_prefix_layers - 0.5, color="black", linewidth=1)
        at = f" at budget {_budget_text(budget)}" if budget is not None else ""
        axes.set_title(title or f"{unit.capitalize()} usage{at}")
    save_figure(figure, out_path)
    return figure


def _annotate_cells(axes, values: np.ma.MaskedArray, limit: int = 256) -> None:
    """Write each unmasked cell's value on small heatmaps (colour alone is hard to read exactly)."""
    if values.size > limit:
        return
    for (i, j), value in np.ndenumerate(values.filled(np.nan)):
        if not np.isnan(value):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if value < 0.55 else "black")  # fmt: skip


# ---- latency-token attention (Fig. 4 / 10) -------------------------------------------------------
def plot_latency_attention(
    image,
    attention,
    out_path: str | Path,
    titles: Sequence[str] | None = None,
    alpha: float = 0.6,
    title: str | None = None,
) -> Figure:
    """The image, then the latency token's attention over its patches overlaid on it, one panel
    per map (e.g. one per question, as Fig. 4).

    image: a PIL image (as the vision tower saw it, e.g. after the processor's crop). attention:
    [grid, grid], [grid * grid], [K, grid, grid] or [K, grid * grid] weights (row-major patches, as
    the vision tower orders them); a square 2D array is one [grid, grid] map. Each map is min-max
    scaled on its own; titles give its total over the image and its maximum. Writes PNG + SVG;
    returns the figure (`axes[1:-1]` hold the overlays, the last axes is the colour bar).
    """
    maps = np.asarray(attention.cpu() if isinstance(attention, torch.Tensor) else attention, dtype=float)
    single_square = maps.ndim == 2 and maps.shape[0] == maps.shape[1] and (titles is None or len(titles) == 1)
    if maps.ndim == 1 or single_square:  # one map
        maps = maps[None]
    if maps.ndim == 2:  # [K, grid * grid]
        side = math.isqrt(maps.shape[1])
        if side * side != maps.shape[1]:
            raise ValueError(f"{maps.shape[1]} attention weights per map do not form a square patch grid")
        maps = maps.reshape(len(maps), side, side)
    if maps.ndim == 3 and maps.shape[1] * maps.shape[2] == 1:
        raise ValueError("an attention map needs more than one patch")
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"attention must be [grid, grid] or [K, grid, grid], got shape {maps.shape}")
    if titles is not None and len(titles) != len(maps):
        raise ValueError(f"{len(titles)} titles for {len(maps)} attention maps")
    picture = np.asarray(image.convert("RGB"))
    height, width = picture.shape[:2]
    with _style():
        figure = _figure(3.2 * (len(maps) + 1) + 0.8, 3.6)
        panels = figure.subplots(1, len(maps) + 1, squeeze=False)[0]
        panels[0].imshow(picture, interpolation="nearest")
        panels[0].set_title("Image")
        overlay = None
        for axes, weights, index in zip(panels[1:], maps, range(len(maps)), strict=True):
            axes.imshow(picture, interpolation="nearest")
            spread = weights.max() - weights.min()
            scaled = (weights - weights.min()) / spread if spread > 0 else np.zeros_like(weights)
            overlay = axes.imshow(
                scaled, cmap="inferno", alpha=alpha, vmin=0, vmax=1,
                extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest",
            )  # fmt: skip
            name = titles[index] if titles is not None else "Latency-token attention"
            axes.set_title(f"{name}\n(image total {weights.sum():.2f}, max {weights.max():.3f})", fontsize=10)
        for axes in panels:
            axes.set_xticks([])
            axes.set_yticks([])
        figure.colorbar(overlay, ax=list(panels), shrink=0.8, label="Attention (min-max per map)")
        figure.suptitle(title or "Latency-token attention over image patches")
    save_figure(figure, out_path)
    return figure


# ---- budget adherence (Table 2) ------------------------------------------------------------------
def adherence_points(rows: Sequence[Mapping], methods: Sequence[str] = ("adaptive",)) -> dict:
    """Per (model, scheduler) and budget, over every benchmark: the fraction of the full model's LLM
    prefill FLOPs used, and the violation rate.

    The fraction is, by preference, the row's `budget_use` x budget (`budget_use`: the mean over
    samples of cost / (budget x full cost), as `adallava eval` writes it); else its `llm_flops` over
    its `full_llm_flops`; else over the `llm_flops` of the "full" row of the same benchmark (same
    model, else any). Rows are pooled over benchmarks weighted by `n`.
    Returns {(model, scheduler): [(budget, used fraction, violations, n), ...] sorted by budget}.
    """
    full = {}
    for row in rows:
        if row["method"] == "full":
            full.setdefault((series_key(row)[0], row["benchmark"]), float(row["llm_flops"]))
            full.setdefault(("", row["benchmark"]), float(row["llm_flops"]))
    pooled: dict[tuple[str, str], dict[float, list[float]]] = {}
    for row in rows:
        if row["method"] not in methods:
            continue
        model = series_key(row)[0]
        if row.get("budget_use") is not None:
            used = float(row["budget_use"]) * float(row["budget"])
        elif row.get("full_llm_flops"):
            used = float(row["llm_flops"]) / float(row["full_llm_flops"])
        else:
            reference = full.get((model, row["benchmark"]), full.get(("", row["benchmark"])))
            if not reference:
                raise ValueError(
                    f"row {model or '(no model)'} / {row['benchmark']} / budget {row['budget']} has neither "
                    "budget_use nor full_llm_flops, and no 'full' row of that benchmark prices the full model"
                )
            used = float(row["llm_flops"]) / reference
        key = (model, str(row.get("scheduler") or ""))
        n = int(row.get("n") or 1)
        acc = pooled.setdefault(key, {}).setdefault(round(float(row["budget"]), 6), [0.0, 0.0, 0.0])
        acc[0] += used * n
        acc[1] += float(row.get("violations") or 0)
        acc[2] += n
    return {
        key: [(b, acc[0] / acc[2], int(acc[1]), int(acc[2])) for b, acc in sorted(points.items())]
        for key, points in sorted(pooled.items())
    }


def plot_budget_adherence(
    rows: Sequence[Mapping],
    out_path: str | Path,
    methods: Sequence[str] = ("adaptive",),
    title: str | None = None,
) -> Figure:
    """Left: fraction of the full model's LLM prefill FLOPs used against the budget, with the
    diagonal cost = budget (above it: over budget; below: under-use). Right: % of samples over
    budget. One line per (model, scheduler); rows carry `scheduler` ("probabilistic" /
    "deterministic") when known. Writes PNG + SVG; returns the figure (one line per series on
    each panel, plus the diagonal on the left)."""
    series = adherence_points(rows, methods)
    if not series:
        raise ValueError(f"no rows with method in {list(methods)} to plot budget adherence for")
    names = short_names(model for model, _ in series)
    show_model = len(names) > 1 or any(not scheduler for _, scheduler in series)
    with _style():
        figure = _figure(10.0, 4.2)
        used_axes, violation_axes = figure.subplots(1, 2)
        budgets = [b for points in series.values() for b, *_ in points]
        low, high = min(budgets), max(budgets)
        used_axes.plot(
            [low, high], [low, high], color="#777777", linestyle="--", linewidth=1, label="cost = budget"
        )
        for index, ((model, scheduler), points) in enumerate(series.items()):
            colour = PALETTE[index % (len(PALETTE) - 1)]
            name = scheduler or "scheduler"
            label = f"{names[model]}: {name}" if show_model and model else name
            b = [p[0] for p in points]
            used = [p[1] for p in points]
            rate = [100.0 * p[2] / p[3] for p in points]
            marker = MARKERS[index % len(MARKERS)]
            used_axes.plot(b, used, color=colour, marker=marker, linewidth=1.8, label=label)
            violation_axes.plot(b, rate, color=colour, marker=marker, linewidth=1.8, label=label)
            for bi, ui, point in zip(b, used, points, strict=True):
                if point[2]:  # violations: ring the point and say how many
                    used_axes.scatter(
                        [bi], [ui], s=140, facecolors="none", edgecolors=PALETTE[3], linewidths=1.5
                    )
                    used_axes.annotate(
                        f"{point[2]}/{point[3]}", (bi, ui), textcoords="offset points", xytext=(5, 5),
                        fontsize=8, color=PALETTE[3],
                    )  # fmt: skip
        used_axes.set_xlabel("Budget (fraction of full LLM prefill FLOPs)")
        used_axes.set_ylabel("Used (fraction of full LLM prefill FLOPs)")
        used_axes.set_title("Cost used vs. budget (ringed: violations)")
        used_axes.grid(alpha=0.3)
        used_axes.legend(loc="upper left", frameon=False)
        violation_axes.set_xlabel("Budget (fraction of full LLM prefill FLOPs)")
        violation_axes.set_ylabel("Samples over budget (%)")
        violation_axes.set_title("Budget violations")
        violation_axes.set_ylim(bottom=0, top=max(5.0, violation_axes.get_ylim()[1]))
        violation_axes.grid(alpha=0.3)
        figure.suptitle(title or "Budget adherence")
    save_figure(figure, out_path)
    return figure
