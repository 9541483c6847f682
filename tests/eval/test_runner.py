"""`adallava eval` end to end on a tiny generated world and an untrained tiny AdaLLaVA: the results
schema, batch-size invariance, the plans of each method, budgets kept, predictions that re-score to the
same numbers. Plus the pure parts (plan rules, static search, limits, argument checks)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from adallava.cli.commands import eval as eval_command
from adallava.core.config import AdaptiveConfig
from adallava.data.tiny_model import TinyLlavaSpec, build_tiny_llava
from adallava.data.world import generate_world
from adallava.engine.llava import AdaLlava
from adallava.eval import scoring
from adallava.eval.args import EvalArgs
from adallava.eval.benchmarks import benchmark_entries, limit_samples, load_benchmarks
from adallava.eval.methods import (
    Depth,
    EarlyExit,
    RandomPlans,
    early_exit_layers,
    search_static,
    upper_layers_for,
)

SCHEMA = {
    "benchmark", "method", "budget", "score", "metrics", "llm_flops", "total_flops", "violations", "n",
    "ms_per_sample", "ttft_ms", "mean_layers", "layer_usage", "distinct_plans", "budget_use", "predictions",
}  # fmt: skip
METHODS = "adaptive,early-exit,random,full"
BUDGETS = (0.5, 0.75)
SPEC = TinyLlavaSpec(text_layers=8, hidden_size=128)  # the v2 world's model: the counts below are for N = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-world")
    generate_world(root / "test", split="test", seed=0, n=2, progress=False, layout="v2")  # 9 tokens: fast
    return root / "test"


@pytest.fixture(scope="module")
def models(world, tmp_path_factory) -> tuple[Path, Path]:
    """(plain HF Llava folder, AdaLLaVA folder), both untrained, 8 layers, P = 4."""
    root = tmp_path_factory.mktemp("eval-models")
    base_dir = build_tiny_llava(root / "base", world=world, seed=0, spec=SPEC)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = AdaLlava.from_base(LlavaForConditionalGeneration.from_pretrained(base_dir), AdaptiveConfig())
    with torch.no_grad():  # a random head gives near-equal logits; scale it so plans differ across inputs
        model.scheduler.head.weight.mul_(50)
    model.scheduler_trained = True  # random, but these tests want budgeted plans (refused otherwise)
    model.save_pretrained(root / "ada")
    AutoProcessor.from_pretrained(base_dir).save_pretrained(root / "ada")
    return base_dir, root / "ada"


def run_eval(*argv) -> int:
    parser = argparse.ArgumentParser(prog="adallava")
    eval_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def runs(world, models, tmp_path_factory) -> dict[int, Path]:
    """Every method at two budgets at batch size 8, at one budget at batch size 1 (via the command)."""
    root = tmp_path_factory.mktemp("eval-runs")
    out = {8: root / "batch8", 1: root / "batch1"}
    for batch_size, budgets, ttft in ((8, BUDGETS, "--measure-ttft"), (1, BUDGETS[1:], "--no-measure-ttft")):
        code = run_eval(
            "--model", models[1], "--data", world, "--budgets", ",".join(map(str, budgets)),
            "--methods", METHODS, "--batch-size", batch_size, "--max-new-tokens", 3,
            "--out", out[batch_size], "--no-progress", ttft,
        )  # fmt: skip
        assert code == 0
    return out


def rows_of(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())


def details(out: Path, benchmark: str, method: str, budget: float) -> list[dict]:
    path = out / "predictions" / benchmark / method / f"budget-{budget:g}" / "details.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_results_json_and_csv_have_one_row_per_benchmark_method_budget(runs, world, capsys):
    rows = rows_of(runs[8])
    benchmarks = list(json.loads((world / "manifest.json").read_text())["benchmarks"])
    assert len(benchmarks) == 6
    expected = {(b, m, x) for b in benchmarks for m in ("adaptive", "early-exit", "random") for x in BUDGETS}
    expected |= {(b, "full", 1.0) for b in benchmarks}
    assert {(r["benchmark"], r["method"], r["budget"]) for r in rows} == expected
    for row in rows:
        assert set(row) >= SCHEMA, SCHEMA - set(row)
        assert 0 <= row["score"] <= 100 and row["metrics"]["score"] == row["score"]
        assert row["total_flops"] > row["llm_flops"] > 0 and row["ms_per_sample"] > 0 and row["ttft_ms"] > 0
        assert len(row["layer_usage"]) == 8 and row["layer_usage"][:4] == [1.0] * 4
        assert (runs[8] / row["predictions"]).exists()
    counts = {r["benchmark"]: r["n"] for r in rows}
    assert counts == {"vqav2": 12, "pope": 6, "mme": 6, "textvqa": 2, "scienceqa": 2, "mmbench": 2}
    mmbench = next(r for r in rows if r["benchmark"] == "mmbench")
    assert mmbench["answers"] == 4 * mmbench["n"]  # every option rotation (circular evaluation)
    with (runs[8] / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows) and set(table[0]) >= SCHEMA
    assert [float(r["score"]) for r in table] == [r["score"] for r in rows]
    full = [r for r in rows if r["method"] == "full"]
    assert all(r["mean_layers"] == 8 and r["budget_use"] == 1.0 for r in full)


def test_results_do_not_depend_on_the_batch_size(runs):
    varying = ("ms_per_sample", "ttft_ms", "predictions", "score_command")
    batch8 = {(r["benchmark"], r["method"], r["budget"]): r for r in rows_of(runs[8])}
    batch1 = rows_of(runs[1])
    assert len(batch1) == 6 * 4
    for row in batch1:
        other = batch8[(row["benchmark"], row["method"], row["budget"])]
        assert {k: v for k, v in row.items() if k not in varying} == {
            k: v for k, v in other.items() if k not in varying
        }
    files = [path for path in (runs[1] / "predictions").rglob("*") if path.is_file()]
    assert len(files) == 6 * 4 * 2 + 4 * 2  # predictions + details per run; MME: one per subtask
    for path in files:
        assert path.read_bytes() == (runs[8] / path.relative_to(runs[1])).read_bytes(), path


def test_adaptive_keeps_every_budget_and_plans_vary(runs):
    adaptive = [r for r in rows_of(runs[8]) if r["method"] == "adaptive"]
    assert all(r["violations"] == 0 and r["budget_use"] <= 1 + 1e-9 for r in adaptive)
    for row in adaptive:
        assert row["mean_layers"] == 8 * row["budget"]  # floor(N * b) layers for N = 8, b in {0.5, 0.75}
    assert max(r["distinct_plans"] for r in adaptive) > 1


def test_early_exit_runs_the_bottom_layers(runs):
    for budget, layers in ((0.5, [0, 1, 2, 3]), (0.75, [0, 1, 2, 3, 4, 5])):
        for benchmark in ("pope", "mmbench"):
            assert all(line["layers"] == layers for line in details(runs[8], benchmark, "early-exit", budget))
    assert [early_exit_layers(8, b) for b in (0.1, 0.5, 0.6, 0.75, 0.85, 1.0)] == [1, 4, 4, 6, 6, 8]
    assert early_exit_layers(32, 0.6) == 19 and early_exit_layers(10, 0.3) == 3  # 0.3 * 10 is 2.999...
    plan = EarlyExit(Depth(8, 4)).kwargs("pope", ["a", "b"], 0.75)["plan"]
    assert plan.executed_layers() == [[0, 1, 2, 3, 4, 5]] * 2


def test_random_plans_are_seeded_nested_and_within_budget(runs):
    depth = Depth(8, 4)
    keys = [str(k) for k in range(20)]

    def layers(seed: int, budget: float) -> list[list[int]]:
        return RandomPlans(depth, seed).kwargs("vqav2", keys, budget)["plan"].executed_layers()

    assert layers(0, 0.75) == layers(0, 0.75)  # seeded
    assert layers(0, 0.75) != layers(1, 0.75)
    assert len({tuple(row) for row in layers(0, 0.75)}) > 1  # a plan per question
    for small, large in zip(layers(0, 0.625), layers(0, 0.875), strict=True):
        assert small[:4] == [0, 1, 2, 3] and len(small) == 5 and len(large) == 7 and set(small) <= set(large)
    # batch-independent: a question's plan does not depend on its neighbours
    alone = RandomPlans(depth, 0).kwargs("vqav2", [keys[3]], 0.75)["plan"].executed_layers()
    assert alone == [layers(0, 0.75)[3]]
    rows = [r for r in rows_of(runs[8]) if r["method"] == "random"]
    assert all(r["violations"] == 0 and r["mean_layers"] == 8 * r["budget"] for r in rows)
    for line in details(runs[8], "vqav2", "random", 0.75):
        assert line["layers"][:4] == [0, 1, 2, 3] and len(line["layers"]) == 6
    with pytest.raises(ValueError, match="--budgets must be >= 0.5"):
        upper_layers_for(depth, 0.4)


def rescore(benchmark: str, files: dict[str, Path], path: Path):
    """Score a predictions file with the functions behind `adallava score`."""
    if benchmark == "vqav2":
        return scoring.score_vqav2_files(files["questions"], files["annotations"], path)
    if benchmark == "textvqa":
        return scoring.score_textvqa_files(files["annotations"], path)
    if benchmark == "pope":
        return scoring.score_pope_files(files["questions"], files["annotation_dir"], path)
    if benchmark == "mme":
        return scoring.score_mme_dir(path)
    if benchmark == "scienceqa":
        return scoring.score_scienceqa_files(files["problems"], files["split_file"], path)
    return scoring.score_mmbench_files(files["path"], path)


def test_predictions_rescore_to_the_same_numbers(runs, world):
    entries = benchmark_entries(world)
    for row in rows_of(runs[8]):
        files = entries[row["benchmark"]]["files"]
        rescored = rescore(row["benchmark"], files, runs[8] / row["predictions"])
        assert rescored.score == row["score"], row["benchmark"]
        assert row["score_command"].startswith(f"adallava score {row['benchmark']} ")


def test_static_plans_are_chosen_on_validation_data_and_cached(world, models, tmp_path):
    validation = tmp_path / "val"
    generate_world(validation, split="test", seed=1, n=2, progress=False, layout="v2")
    out = tmp_path / "static"
    argv = ["--model", models[1], "--data", world, "--benchmark", "pope", "--budgets", "0.5,0.75,1.0"]
    argv += [
        "--methods",
        "static",
        "--validation",
        validation,
        "--max-new-tokens",
        2,
        "--out",
        out,
        "--no-progress",
    ]
    assert run_eval(*argv) == 0
    stored = json.loads((out / "static_plans.json").read_text())
    choices = stored["benchmarks"]["pope"]
    assert set(choices) == {"0", "2", "4"}
    assert choices["2"]["search"] == "exhaustive" and choices["2"]["evaluated"] == 6
    assert choices["0"]["upper"] == [] and choices["4"]["upper"] == [4, 5, 6, 7]
    rows = rows_of(out)
    assert [r["budget"] for r in rows] == [0.5, 0.75, 1.0] and all(r["violations"] == 0 for r in rows)
    chosen = [0, 1, 2, 3, *choices["2"]["upper"]]
    assert all(line["layers"] == chosen for line in details(out, "pope", "static", 0.75))
    choices["2"]["upper"] = [6, 7]  # a cached choice is reused while the settings match
    (out / "static_plans.json").write_text(json.dumps(stored))
    assert run_eval(*argv) == 0
    assert all(line["layers"] == [0, 1, 2, 3, 6, 7] for line in details(out, "pope", "static", 0.75))


def test_static_search_is_exhaustive_for_few_upper_layers_and_greedy_beyond():
    weights = {layer: (layer * 7) % 11 for layer in range(40)}
    calls: list[tuple[int, ...]] = []

    def evaluate(upper: tuple[int, ...]) -> float:
        calls.append(upper)
        return sum(weights[layer] for layer in upper) - 0.5 * len(set(w % 3 for w in map(weights.get, upper)))

    choices = search_static(Depth(8, 4), [0, 2, 4], evaluate)
    assert choices[0].upper == () and choices[4].upper == (4, 5, 6, 7) and choices[2].search == "exhaustive"
    assert len(calls) == 6 and choices[2].validation_score == max(map(evaluate, calls[:6]))
    calls.clear()
    choices = search_static(Depth(20, 8), [2, 3], evaluate)  # 12 upper layers: greedy, one shared pass
    assert choices[2].search == "greedy" and set(choices[2].upper) < set(choices[3].upper)
    assert len(calls) == len(set(calls)) == 12 + 11 + 10


def test_a_plain_llava_folder_runs_explicit_plans_but_not_the_scheduler(world, models, tmp_path):
    out = tmp_path / "base"
    common = ["--model", models[0], "--data", world, "--benchmark", "scienceqa", "--max-new-tokens", 2]
    assert (
        run_eval(*common, "--methods", "early-exit,full", "--budgets", "0.6", "--out", out, "--no-progress")
        == 0
    )
    rows = rows_of(out)
    assert [(r["method"], r["budget"], r["mean_layers"]) for r in rows] == [
        ("early-exit", 0.6, 4),
        ("full", 1.0, 8),
    ]
    with pytest.raises(ValueError, match="adaptive_config.json"):
        run_eval(*common, "--methods", "adaptive", "--out", out, "--no-progress")


def test_limit_keeps_mme_pairs_and_mmbench_groups(world):
    benchmarks = {b.name: b for b in load_benchmarks(world, ["mme", "mmbench", "pope"], limit=3)}
    assert len(benchmarks["mme"].samples) == 4 and len(benchmarks["pope"].samples) == 3
    assert len(benchmarks["mmbench"].samples) == 2  # all there are
    (one,) = load_benchmarks(world, ["mmbench"], limit=1)
    assert len(one.samples) == 1
    samples = list(benchmarks["mmbench"].samples)
    copy = dataclasses.replace(samples[0], question_id=1_000_000 + int(samples[0].question_id))
    assert len(limit_samples("mmbench", [*samples, copy], 1)) == 2  # a circular copy follows its main row


def test_eval_args_name_the_flag_to_change(tmp_path):
    base = {"model": "m", "data": "d", "out": "o"}
    for overrides, message in (
        ({"budgets": (0.5, 1.5)}, "--budgets must lie in"),
        ({"budgets": (0.5, 0.5)}, "--budgets lists a value twice"),
        ({"methods": ("adaptive", "oracle")}, "--methods must be among"),
        ({"benchmarks": ("gqa",)}, "--benchmarks must be among"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"methods": ("static",)}, "--validation"),
        ({"protocol": "vlmeval"}, "--protocol must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            EvalArgs(**base, **overrides)
    with pytest.raises(FileNotFoundError, match="--data"):
        benchmark_entries(tmp_path / "missing")


def test_token_selection_runs_on_top_of_adaptive_plans(world, models, tmp_path):
    common = ["--model", models[1], "--data", world, "--benchmark", "pope", "--budgets", "0.75"]
    common += ["--methods", "adaptive", "--max-new-tokens", 2, "--no-progress", "--no-measure-ttft"]
    assert run_eval(*common, "--token-selection", "prumerge", "--out", tmp_path / "prumerge") == 0
    (row,) = rows_of(tmp_path / "prumerge")
    assert row["method"] == "adaptive+prumerge" and row["violations"] == 0
    assert row["scheduler"] == "probabilistic"
    assert run_eval(*common, "--out", tmp_path / "plain") == 0
    assert row["llm_flops"] < rows_of(tmp_path / "plain")[0]["llm_flops"]  # fewer visual tokens reach the LLM


def test_plan_files_hold_each_inputs_plan_and_are_drawn(runs, tmp_path, monkeypatch):
    # catches: Fig. 5's per-input plan heatmaps documented but never written (issue 14), or drawn
    # from data that differs from the plans the answers ran (details.jsonl)
    pytest.importorskip("matplotlib")
    from adallava.report import plots as viz
    from adallava.report import results as report

    benchmarks = ("vqav2", "pope", "mme", "textvqa", "scienceqa", "mmbench")  # the order eval writes
    for budget in BUDGETS:
        path = runs[8] / f"plans_ada_adaptive_{budget:g}.json"
        data = json.loads(path.read_text())
        expected, families = [], []
        for benchmark in benchmarks:  # by hand: the executed layer indices as one bool per layer
            for line in details(runs[8], benchmark, "adaptive", budget):
                expected.append([layer in line["layers"] for layer in range(8)])
                families.append(benchmark)
        assert data["layers"] == expected and data["families"] == families
        assert (data["budget"], data["method"], data["num_prefix_layers"]) == (budget, "adaptive", 4)
        assert sum(map(sum, expected)) == 8 * budget * len(expected)  # floor(N b) layers each
    assert not list(runs[8].glob("plans_*early-exit*")) and not list(runs[8].glob("plans_*random*"))
    drawn = []

    def spy(*args, **kwargs):
        figure = plot_plan_heatmap(*args, **kwargs)
        drawn.append(figure.axes[0].images[0].get_array())
        return figure

    plot_plan_heatmap = viz.plot_plan_heatmap
    monkeypatch.setattr(viz, "plot_plan_heatmap", spy)
    written = report.write_plots([], [runs[8] / "plans_ada_adaptive_0.75.json"], tmp_path)
    assert [p.name for p in written["plans"]] == [
        "plans_ada_adaptive_0.75.png",
        "plans_ada_adaptive_0.75_families.png",
    ]
    assert all(p.is_file() for p in written["plans"])
    rows = [line["layers"] for b in benchmarks for line in details(runs[8], b, "adaptive", 0.75)]
    labels = [b for b in benchmarks for _ in details(runs[8], b, "adaptive", 0.75)]
    order = sorted(range(len(rows)), key=lambda i: labels[i])  # grouped by family, inputs in order
    grid = np.array([[layer in rows[i] for layer in range(8)] for i in order], dtype=float)
    np.testing.assert_array_equal(drawn[0].data, grid)


def test_plan_files_keep_other_benchmarks_rows(tmp_path):
    # catches: an `adallava eval --benchmark pope` run into a folder wiping the vqav2 plans it held
    from types import SimpleNamespace

    from adallava.eval.results import write_plans

    def write(benchmark, plans):
        items = [SimpleNamespace(key=str(i)) for i in range(len(plans))]
        answers = [SimpleNamespace(plan={"layers": layers}) for layers in plans]
        return write_plans(tmp_path / "plans.json", benchmark, items, answers, 4, {"budget": 0.5})

    write("pope", [[0, 1], [0, 2]])
    write("vqav2", [[0, 3]])
    data = write("pope", [[0, 1, 2]])
    assert data["inputs"] == [["vqav2", "0"], ["pope", "0"]]  # BENCHMARKS order; pope replaced
    assert data["layers"] == [[True, False, False, True], [True, True, True, False]]
    assert json.loads((tmp_path / "plans.json").read_text()) == data


def test_meta_json_records_how_the_folder_was_made_and_the_report_shows_it(runs, models, world):
    # catches: results folders without provenance (RESULTS.md said "no meta.json" for each, issue 14)
    pytest.importorskip("matplotlib")
    import os
    import platform
    import shlex
    import subprocess
    from importlib import metadata

    import transformers

    from adallava.cli import flags

    meta = json.loads((runs[8] / "meta.json").read_text())
    (run,) = meta["runs"]
    assert meta["commands"] == [run["command"]] and "PRIMARY" in meta["fields"]["llm_flops"]
    # the command reproduces the run's settings: parsed back, it gives the same EvalArgs
    parser = argparse.ArgumentParser(prog="adallava")
    eval_command.add_parser(parser.add_subparsers(dest="command"))
    words = shlex.split(run["command"])
    assert words[:2] == ["adallava", "eval"]
    again = flags.from_namespace(EvalArgs, parser.parse_args(words[1:]))
    assert again == EvalArgs(
        model=str(models[1]), data=str(world), out=str(runs[8]), budgets=BUDGETS,
        methods=tuple(METHODS.split(",")), batch_size=8, max_new_tokens=3, progress=False,
    )  # fmt: skip
    git = ["git", "-C", str(Path(__file__).parent)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        assert run["git_commit"] == "unknown"
    else:  # HEAD when the fixture ran: HEAD now, or an ancestor of it if a commit landed meanwhile
        ancestor = subprocess.run([*git, "merge-base", "--is-ancestor", run["git_commit"], "HEAD"])
        assert len(run["git_commit"]) == 40 and ancestor.returncode == 0
    assert run["versions"] == {
        "adallava": metadata.version("adallava"), "torch": torch.__version__,
        "transformers": transformers.__version__,
    }  # fmt: skip
    machine = run["machine"]
    assert (machine["platform"], machine["cpu_count"], machine["device"]) == (
        platform.platform(),
        os.cpu_count(),
        "cpu",
    )
    assert machine["threads"] >= 1 and machine["processes"] == 1
    text = _report_text(runs[8])
    assert run["command"] in text and f"git commit `{run['git_commit']}" in text
    assert f"torch {torch.__version__}, transformers {transformers.__version__}" in text
    assert f"CPUs {os.cpu_count()}, device cpu" in text and "no meta.json" not in text


def _report_text(folder: Path) -> str:
    from adallava.report import results as report

    loaded = report.load_results_dir(folder)
    return report.render_report(list(loaded.rows), [loaded], {}, folder.parent / "RESULTS.md")


def test_git_commit_is_unknown_without_git(monkeypatch):
    # catches: provenance crashing (instead of saying "unknown") where git is missing
    import subprocess

    from adallava.eval import runner

    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", missing)
    assert runner.git_commit() == ("unknown", None)


def test_cuda_without_cuda_and_an_untrained_scheduler_are_clear_errors(tmp_path, models, world):
    # Bug caught: `--device cuda` on a CPU-only torch ending in a torch traceback, and adaptive plans
    # taken from a scheduler nobody trained (init's random one) instead of a refusal naming the model.
    from adallava.eval.runner import evaluate

    _, adaptive = models
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device"):
            evaluate(EvalArgs(data=str(world), out=str(tmp_path / "a"), model=str(adaptive), device="cuda"))
    model = AdaLlava.from_pretrained(adaptive)
    model.scheduler_trained = False
    untrained = tmp_path / "untrained"
    model.save_pretrained(untrained)
    AutoProcessor.from_pretrained(adaptive).save_pretrained(untrained)
    with pytest.raises(ValueError, match="untrained scheduler"):
        args = EvalArgs(data=str(world), out=str(tmp_path / "b"), model=str(untrained), methods=("adaptive",))
        evaluate(args)
