"""RESULTS.md generation (adallava.report) from small synthetic results folders."""

import argparse
import json

import pytest

pytest.importorskip("matplotlib")

from adallava import cli  # noqa: E402
from adallava.report import results as report  # noqa: E402

BUDGETS = (0.6, 1.0)
FULL_LLM = 2.0e12
RUN = {  # a meta.json run as `adallava eval` writes it
    "command": "adallava eval --model models/tiny-adallava-l-det --out eval-det",
    "git_commit": "0123abc", "git_modified": True,
    "versions": {"adallava": "0.1.0", "torch": "2.13.0", "transformers": "4.99.0"},
    "machine": {"platform": "Linux-x86_64", "python": "3.12.1", "cpu_count": 2, "device": "cpu", "threads": 1,
                "processes": 1},
}  # fmt: skip


def rows_for(model, scheduler, methods, score_shift=0.0, over=0.0, violations=0):
    rows = []
    for benchmark, base in (("pope", 80.0), ("vqav2", 60.0)):
        for method in methods:
            for budget in BUDGETS:
                used = min(1.0, budget + over)
                score = base + 10 * budget + score_shift - (20 if method == "early-exit" else 0)
                rows.append({
                    "model": model, "scheduler": scheduler, "benchmark": benchmark, "method": method,
                    "budget": budget, "score": score, "metrics": {}, "n": 50,
                    "llm_flops": used * FULL_LLM, "total_flops": used * FULL_LLM + 0.5e12,
                    "full_llm_flops": FULL_LLM, "budget_use": used / budget,
                    "violations": violations if budget < 1 else 0, "ms_per_sample": 10.0 * used,
                    "layer_usage": [1.0, 1.0, budget, budget],
                })  # fmt: skip
        rows.append({
            "model": model, "benchmark": benchmark, "method": "full", "budget": 1.0, "score": base + 12,
            "metrics": {}, "n": 50, "llm_flops": FULL_LLM, "total_flops": FULL_LLM + 0.5e12, "violations": 0,
            "ms_per_sample": 10.0,
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three results folders: L (adaptive + early exit, commands.txt), H (meta.json naming the model),
    the deterministic scheduler (meta.json with commands; violates at 60%)."""
    layout = {
        "eval-l": (rows_for("models/tiny-adallava-l", "probabilistic", ("adaptive", "early-exit")), None),
        "eval-h": (rows_for(None, None, ("adaptive",), score_shift=-2), {"model": "tiny-adallava-h"}),
        "eval-det": (
            rows_for("models/tiny-adallava-l-det", "deterministic", ("adaptive",), over=0.05, violations=7),
            {"commands": ["adallava eval --model models/tiny-adallava-l-det --out eval-det"], "runs": [RUN]},
        ),
    }
    tmp_path = tmp_path_factory.mktemp("results")
    paths = []
    for name, (rows, meta) in layout.items():
        folder = tmp_path / name
        folder.mkdir()
        for row in rows:
            if row.get("model") is None:
                row.pop("model")
                row.pop("scheduler", None)
        (folder / "results.json").write_text(json.dumps(rows))
        if meta is not None:
            (folder / "meta.json").write_text(json.dumps(meta))
        paths.append(folder)
    (tmp_path / "eval-l" / "commands.txt").write_text(
        "# how eval-l was made\nadallava eval --model models/tiny-adallava-l --out eval-l\n\n"
    )
    (tmp_path / "eval-l" / "plans_l_0.6.json").write_text(json.dumps({
        "budget": 0.6, "num_prefix_layers": 2, "families": ["x", "y"], "model": "tiny-adallava-l",
        "layers": [[True, True, True, False], [True, True, False, True]],
    }))  # fmt: skip
    return paths


@pytest.fixture(scope="module")
def built(folders):
    """RESULTS.md in docs/ with its plots in docs/figures (built once: plotting is the slow part)."""
    out = folders[0].parent / "docs" / "RESULTS.md"
    text = report.build_report(folders, out, plots_dir=out.parent / "figures", command="adallava report ...")
    return out, text


def table(text, heading):
    """The markdown table lines following a heading."""
    section = text.split(heading, 1)[1]
    return [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("|")]


def test_report_tables_hold_the_numbers(built):
    out, text = built
    assert out.read_text() == text
    main = table(text, "Table 1/3 style")
    # the paper's Table 1 counts the LLM: LLM FLOPs first, the total (+ vision etc.) beside it (issue 14)
    header = "| Model | Method | Budget (%) | LLM FLOPs (T) | Total FLOPs (T) | VQAv2 | POPE | ms / sample |"
    assert main[0] == header
    # budgets from 100% down, per model and method; LLM = 0.6 * 2T, total = LLM + 0.5T
    assert "| tiny-adallava-l | AdaLLaVA (adaptive) | 60 | 1.20 | 1.70 | 66.0 | 86.0 | 6.0 |" in main
    assert "| tiny-adallava-l | Early exit | 60 | 1.20 | 1.70 | 46.0 | 66.0 | 6.0 |" in main
    assert "| tiny-adallava-l | Full model | 100 | 2.00 | 2.50 | 72.0 | 92.0 | 10.0 |" in main
    assert (
        "| tiny-adallava-h | AdaLLaVA (adaptive) | 60 | 1.20 | 1.70 | 64.0 | 84.0 | 6.0 |" in main
    )  # meta.json model
    assert (
        "| tiny-adallava-l-det (deterministic) | AdaLLaVA (adaptive) | 60 | 1.30 | 1.80 | 66.0 | 86.0 | 6.5 |"
        in main
    )
    order = [line.split(" | ")[0] for line in main[2:]]
    assert order == sorted(order)
    schedulers = table(text, "Table 2 style")
    assert schedulers[0] == (
        "| Model | Scheduler | Budget (%) | VQAv2 score | LLM FLOPs (T) | Total FLOPs (T) | Over budget "
        "| All: used / budget | All: over budget |"
    )
    assert (
        "| tiny-adallava-l-det | deterministic | 60 | 66.0 | 1.30 | 1.80 | **7/50** | 1.083 | **14/100** |"
        in schedulers
    )
    line = "| tiny-adallava-l | probabilistic | 60 | 66.0 | 1.20 | 1.70 | 0/50 | 1.000 | 0/100 |"
    assert line in schedulers


def test_report_links_plots_and_lists_commands(built):
    out, text = built
    for stem in ("accuracy_vqav2", "models_vqav2", "adherence", "usage_tiny-adallava-l", "plans_l_0.6"):
        assert f"](figures/{stem}.png)" in text
        assert (out.parent / "figures" / f"{stem}.png").is_file()
    how = text.split("## How these were produced", 1)[1]
    assert "adallava eval --model models/tiny-adallava-l --out eval-l" in how  # commands.txt
    assert "# how eval-l" not in how
    assert "adallava eval --model models/tiny-adallava-l-det --out eval-det" in how  # meta.json
    assert "`../eval-h`:\n\n(no meta.json or commands.txt in the folder)" in how
    # catches: a results folder's provenance (meta.json runs) missing from RESULTS.md (issue 14)
    assert (
        "- command 1: git commit `0123abc (modified)`; adallava 0.1.0, torch 2.13.0, transformers 4.99.0; "
        "platform Linux-x86_64, CPUs 2, device cpu, torch threads 1, processes 1"
    ) in how
    assert how.rstrip().endswith("adallava report ...\n```")


def test_report_is_identical_when_regenerated(folders, built, tmp_path):
    out, text = built
    again = list(reversed([report.load_results_dir(path) for path in folders]))
    rows = report.merge_rows(again)
    plots = {"accuracy": [out.parent / "figures" / "accuracy_vqav2.png"]}
    first = report.render_report(rows, sorted(again, key=lambda f: f.path.name), plots, out)
    assert report.render_report(rows, sorted(again, key=lambda f: f.path.name), plots, out) == first
    assert (
        text.split("## Schedulers")[0] == first.split("## Schedulers")[0]
    )  # same tables from reloaded folders
    # the plots carry no dates or versions: drawing one again gives the same bytes
    from adallava.report import plots as viz

    viz.plot_accuracy_vs_flops(rows, "vqav2", tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == (
        out.parent / "figures" / "accuracy_vqav2.png"
    ).read_bytes()
    assert (tmp_path / "again.svg").read_bytes() == (
        out.parent / "figures" / "accuracy_vqav2.svg"
    ).read_bytes()


def test_bad_folders_are_named(tmp_path, folders):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        report.load_results_dir(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps([{"benchmark": "pope", "method": "full", "budget": 1.0}]))
    with pytest.raises(ValueError, match=r"row 0 lacks score, llm_flops, total_flops"):
        report.load_results_dir(bad)
    (bad / "results.json").write_text(json.dumps([{**rows_for("m", None, ())[0], "score": "high"}]))
    with pytest.raises(ValueError, match="field 'score' must be a finite number"):
        report.load_results_dir(bad)
    clash = tmp_path / "clash"
    clash.mkdir()
    rows = json.loads((folders[0] / "results.json").read_text())
    rows[0]["score"] += 1
    (clash / "results.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="different results"):
        report.load_rows([folders[0], clash])
    (clash / "results.json").write_text((folders[0] / "results.json").read_text())
    assert len(report.load_rows([folders[0], clash])) == len(rows)  # an identical repeat is kept once
    (bad / "plans_x.json").write_text(json.dumps({"budget": 0.5, "layers": [[True, False], [True]]}))
    with pytest.raises(ValueError, match=r"layers\[1\] must be 2 booleans"):
        report.load_plan_file(bad / "plans_x.json")


def test_report_command_through_its_parser_and_the_cli(folders, tmp_path, monkeypatch):
    from adallava.cli.commands import report as report_command

    parser = argparse.ArgumentParser()
    report_command.add_parser(parser.add_subparsers())
    out = tmp_path / "A.md"
    args = parser.parse_args(
        ["report", "--results", str(folders[1]), "--out", str(out), "--table2-benchmark", "pope"]
    )
    assert args.func(args) == 0
    text = out.read_text()
    assert args.func(args) == 0
    assert out.read_text() == text  # regenerated: the same file
    assert f"adallava report --results {folders[1]} --out {out} --table2-benchmark pope" in text
    assert "| POPE score |" in text and (tmp_path / "plots" / "accuracy_pope.png").is_file()
    bad = [
        "report",
        "--results",
        str(folders[1]),
        "--out",
        str(tmp_path / "B.md"),
        "--table2-benchmark",
        "mme",
    ]
    assert cli.main(bad) == 2  # named in the error, before anything is drawn
    assert not (tmp_path / "B.md").exists()


def test_a_report_draws_plans_at_three_budgets_spread_over_the_grid(tmp_path):
    """Catches: RESULTS.md drawing a heatmap per grid point (110 on the 0.05 grid of 5 models), or a
    spread that drops the extremes. Expected budgets picked by hand."""
    from adallava.report.folders import report_plan_files
    from adallava.report.plots import spread_budgets

    grid = [round(0.5 + 0.05 * i, 2) for i in range(11)]
    assert spread_budgets(grid) == [0.5, 0.75, 1.0]
    assert spread_budgets(grid, keep=5) == [0.5, 0.6, 0.75, 0.9, 1.0]  # 0, 2.5 -> 2, 5, 7.5 -> 8, 10
    assert spread_budgets([1.0, 0.5, 0.5]) == [0.5, 1.0]
    with pytest.raises(ValueError, match="keep must be >= 2"):
        spread_budgets(grid, keep=1)
    for method in ("adaptive", "random"):
        for budget in (0.5, 0.6, 0.7, 0.8):
            (tmp_path / f"plans_m_{method}_{budget}.json").write_text(
                json.dumps({"budget": budget, "layers": [[True, False]], "model": "m", "method": method})
            )
    names = [file.name for file in report_plan_files([tmp_path])]
    # 4 budgets: indices 0, round(1.5) = 2, 3
    assert names == [f"plans_m_{m}_{b}.json" for m in ("adaptive", "random") for b in (0.5, 0.7, 0.8)]
