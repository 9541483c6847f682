"""Plots (adallava.report.plots) on small synthetic results, and the latency-token attention
(adallava.inference.attention) on a tiny model."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("matplotlib")

from adallava.core.config import AdaptiveConfig
from adallava.engine.llava import AdaLlava
from adallava.inference.attention import latency_token_attention
from adallava.report import plots as viz
from adallava.testing import tiny_inputs, tiny_llava  # noqa: E402

BUDGETS = (0.5, 0.75, 1.0)
FULL_LLM = 4.0e9


def result_rows(model="models/tiny-l", scheduler=None, methods=("adaptive", "early-exit"), over=0.0):
    """Rows like `adallava eval` writes: per method and budget, plus the full model at 1.0."""
    rows = []
    for benchmark in ("vqav2", "pope"):
        for method in methods:
            for budget in BUDGETS:
                used = min(1.0, budget + over) if method == "adaptive" else budget
                rows.append({
                    "model": model, "benchmark": benchmark, "method": method, "budget": budget,
                    "score": 50.0 + 40 * budget - (10 if method == "early-exit" else 0), "metrics": {},
                    "llm_flops": used * FULL_LLM, "total_flops": used * FULL_LLM + 1e9, "n": 10,
                    "full_llm_flops": FULL_LLM, "violations": 3 if over and budget < 1 else 0,
                    "ms_per_sample": 2.0, "layer_usage": [1.0] * 4 + [budget] * 4,
                    **({"scheduler": scheduler} if scheduler else {}),
                })  # fmt: skip
        rows.append({
            "model": model, "benchmark": benchmark, "method": "full", "budget": 1.0, "score": 92.0,
            "metrics": {}, "llm_flops": FULL_LLM, "total_flops": FULL_LLM + 1e9, "n": 10, "violations": 0,
        })  # fmt: skip
    return rows


def written(path):
    png, svg = path.with_suffix(".png"), path.with_suffix(".svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    return png, svg


def test_flop_unit_picks_the_largest_readable_prefix():
    assert viz.flop_unit([3.5e12, 8e11]) == (1e12, "T")
    assert viz.flop_unit([5e9]) == (1e9, "G")
    assert viz.flop_unit([]) == (1.0, "")


def test_short_names_keep_the_last_path_part_unless_ambiguous():
    assert viz.short_names(["models/tiny-l", "tiny-h", ""]) == {
        "models/tiny-l": "tiny-l",
        "tiny-h": "tiny-h",
        "": "",
    }
    assert viz.short_names(["a/m", "b/m"]) == {"a/m": "a/m", "b/m": "b/m"}


def test_accuracy_vs_flops_one_line_per_method_and_a_star_for_the_full_model(tmp_path):
    figure = viz.plot_accuracy_vs_flops(result_rows(), "vqav2", tmp_path / "acc.png")
    written(tmp_path / "acc.png")
    axes = figure.axes[0]
    assert len(axes.lines) == 2  # adaptive, early exit
    assert [len(line.get_xdata()) for line in axes.lines] == [3, 3]
    assert len(axes.collections) == 1  # the full model, one star
    # catches: an x axis that is not the paper's LLM FLOPs by default (issue 14): 0.5 * 4G, ...
    assert axes.lines[0].get_xdata().tolist() == pytest.approx([2.0, 3.0, 4.0])
    assert axes.lines[0].get_ydata().tolist() == [70.0, 80.0, 90.0]
    assert "LLM prefill FLOPs" in axes.get_xlabel() and "GFLOPs" in axes.get_xlabel()
    assert axes.get_title().startswith("VQAv2")
    total = viz.plot_accuracy_vs_flops(result_rows(), "vqav2", tmp_path / "total.png", flops="total_flops")
    assert total.axes[0].lines[0].get_xdata().tolist() == pytest.approx([3.0, 4.0, 5.0])  # + 1G vision etc.
    assert "total prefill FLOPs (vision + LLM + lm_head)" in total.axes[0].get_xlabel()
    # both curves share FLOPs at each budget: each budget is written once
    assert sorted(text.get_text() for text in axes.texts) == ["0.5", "0.75", "1"]


def test_accuracy_vs_flops_with_two_models(tmp_path):
    rows = result_rows("m/tiny-l", methods=("adaptive",)) + result_rows("m/tiny-h", methods=("adaptive",))
    for row in rows:
        if row["model"] == "m/tiny-h" and row["method"] == "full":
            row["score"] = 90.0  # a different full model: its own star
    figure = viz.plot_accuracy_vs_flops(rows, "pope", tmp_path / "models", flops="llm_flops")
    written(tmp_path / "models")
    axes = figure.axes[0]
    assert len(axes.lines) == 2 and len(axes.collections) == 2
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert "tiny-h: AdaLLaVA (adaptive)" in labels and "tiny-l: AdaLLaVA (adaptive)" in labels
    with pytest.raises(ValueError, match="no rows for benchmark 'mme'"):
        viz.plot_accuracy_vs_flops(rows, "mme", tmp_path / "x.png")


def test_plan_heatmap_groups_inputs_by_family_and_shades_the_prefix(tmp_path):
    plans = np.ones((6, 8), dtype=bool)
    plans[:, 4:] = [[True, False, True, False]] * 6
    plans[1, 4:] = False
    families = ["pope", "vqa", "pope", "vqa", "count", "vqa"]
    figure = viz.plot_plan_heatmap(plans, families, tmp_path / "plans.svg", num_prefix_layers=4, budget=0.75)
    written(tmp_path / "plans.svg")
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (6, 8)
    assert image.mask[:, :4].all() and not image.mask[:, 4:].any()  # prefix drawn grey
    assert np.asarray(image[1, 4:]).tolist() == [1, 0, 1, 0]  # order: count, pope, pope, vqa, ...
    assert np.asarray(image[3, 4:]).tolist() == [0, 0, 0, 0]  # input 1: the first vqa input
    ticks = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert ticks == ["count (1)", "pope (2)", "vqa (3)"]
    assert "0.75" in figure.axes[0].get_title()


def test_plan_heatmap_of_usage_and_head_usage(tmp_path):
    usage = np.array([[1, 1, 0.2, 0.9], [1, 1, 0.7, 0.1]])
    figure = viz.plot_plan_heatmap(usage, ["a", "b"], tmp_path / "usage", num_prefix_layers=2)
    written(tmp_path / "usage")
    assert figure.axes[0].images[0].get_array().shape == (2, 4)
    assert len(figure.axes) == 2  # the colour bar
    assert len(figure.axes[0].texts) == 4  # values on the upper cells only
    heads = torch.rand(5, 8, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    figure = viz.plot_head_usage(heads, tmp_path / "heads", num_prefix_layers=4, budget=0.6)
    written(tmp_path / "heads")
    grid = figure.axes[0].images[0].get_array()
    assert grid.shape == (8, 4) and grid.mask[:4].all()
    assert np.asarray(grid[5]).tolist() == pytest.approx(heads[:, 5].double().mean(0).tolist())
    with pytest.raises(ValueError, match="frequencies"):
        viz.plot_plan_heatmap(np.array([[1.5, 0.0]]), None, tmp_path / "bad")


def test_budget_adherence_shows_each_scheduler_and_its_violations(tmp_path):
    rows = result_rows("m/l", "probabilistic", methods=("adaptive",))
    rows += result_rows("m/l-det", "deterministic", methods=("adaptive",), over=0.1)
    points = viz.adherence_points(rows)
    assert points[("m/l", "probabilistic")] == [(0.5, 0.5, 0, 20), (0.75, 0.75, 0, 20), (1.0, 1.0, 0, 20)]
    assert points[("m/l-det", "deterministic")][0] == (0.5, pytest.approx(0.6), 6, 20)
    figure = viz.plot_budget_adherence(rows, tmp_path / "adherence.png")
    written(tmp_path / "adherence.png")
    used, rate = figure.axes[:2]
    assert len(used.lines) == 3 and len(rate.lines) == 2  # the diagonal, then one line per scheduler
    assert rate.lines[1].get_ydata().tolist() == [30.0, 30.0, 0.0]
    assert [t.get_text() for t in used.texts] == ["6/20", "6/20"]
    # without full_llm_flops, the full row prices the full model
    for row in rows:
        row.pop("full_llm_flops", None)
    assert viz.adherence_points(rows)[("m/l-det", "deterministic")][0][1] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no rows with method"):
        viz.plot_budget_adherence(rows, tmp_path / "none.png", methods=("static",))


def test_latency_attention_plot(tmp_path):
    image = Image.new("RGB", (48, 48), (200, 30, 30))
    maps = torch.softmax(torch.randn(2, 9, generator=torch.Generator().manual_seed(0)), -1) * 0.5
    figure = viz.plot_latency_attention(image, maps, tmp_path / "att", titles=["q1", "q2"])
    written(tmp_path / "att")
    assert len(figure.axes) == 4  # image, two overlays, colour bar
    assert [len(axes.images) for axes in figure.axes[:3]] == [1, 2, 2]
    assert figure.axes[1].images[1].get_array().shape == (3, 3)
    figure = viz.plot_latency_attention(image, maps[0].view(3, 3), tmp_path / "one")
    assert len(figure.axes) == 3
    with pytest.raises(ValueError, match="square patch grid"):
        viz.plot_latency_attention(image, torch.rand(2, 8), tmp_path / "bad")


@pytest.fixture(scope="module")
def eager_ada():
    base = tiny_llava(seed=0, attn_implementation="eager")
    torch.manual_seed(1)
    return AdaLlava.from_base(base, AdaptiveConfig(switches="layer")).eval()


def test_latency_token_attention_rows_cover_the_image_tokens(eager_ada):
    config = eager_ada.config
    right = tiny_inputs(config, [5, 3, 7], padding_side="right")
    attention = latency_token_attention(eager_ada, right, budget=[0.5, 0.75, 1.0])
    assert attention.shape == (3, config.image_seq_length) and attention.dtype == torch.float32
    assert bool((attention >= 0).all()) and bool((attention.sum(-1) <= 1 + 1e-5).all())
    assert bool((attention.sum(-1) > 0).all())
    # left padding moves the image tokens; the same rows give the same attention
    left = tiny_inputs(config, [5, 3, 7], padding_side="left")
    torch.testing.assert_close(latency_token_attention(eager_ada, left, [0.5, 0.75, 1.0]), attention)
    # one row alone: the same as in the batch
    length = int(right["attention_mask"][0].sum())
    single = {key: value[:1, :length] if key != "pixel_values" else value[:1] for key, value in right.items()}
    torch.testing.assert_close(latency_token_attention(eager_ada, single, 0.5), attention[:1])
    # an earlier prefix layer gives another map
    assert not torch.allclose(latency_token_attention(eager_ada, right, 1.0, layer=0), attention)


def test_latency_token_attention_refuses_what_it_cannot_measure(eager_ada):
    inputs = tiny_inputs(eager_ada.config, [4])
    with pytest.raises(ValueError, match="prefix layer"):
        latency_token_attention(eager_ada, inputs, 1.0, layer=eager_ada.num_prefix)
    with pytest.raises(ValueError, match="budget is required"):
        latency_token_attention(eager_ada, inputs, None)
    sdpa = AdaLlava.from_base(tiny_llava(seed=0, attn_implementation="sdpa"))
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        latency_token_attention(sdpa, inputs, 1.0)


def test_plot_command_writes_the_plots_of_a_results_folder(tmp_path, capsys):
    from adallava.cli.commands import plot

    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(result_rows()))
    (folder / "plans_l_0.75.json").write_text(json.dumps({
        "budget": 0.75, "num_prefix_layers": 2, "families": ["a", "b", "a"],
        "layers": [[True, True, False, True], [True, True, True, False], [True, True, False, False]],
    }))  # fmt: skip
    parser = argparse.ArgumentParser()
    plot.add_parser(parser.add_subparsers())
    args = parser.parse_args(["plot", str(folder)])
    assert args.func(args) == 0
    names = sorted(p.name for p in (folder / "plots").iterdir())
    for stem in ("accuracy_vqav2", "accuracy_pope", "adherence", "usage_tiny-l", "plans_l_0.75",
                 "plans_l_0.75_families"):  # fmt: skip
        assert f"{stem}.png" in names and f"{stem}.svg" in names
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least one results folder"):
        plot.run(parser.parse_args(["plot"]))


def test_plot_command_draws_the_latency_attention_of_a_model_folder(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from adallava.cli.commands import plot
    from adallava.data.tiny_model import build_tiny_llava

    folder = build_tiny_llava(tmp_path / "model", vocabulary=["what", "color", "is", "the", "circle", "?"])
    AdaLlava.from_base(LlavaForConditionalGeneration.from_pretrained(folder)).save_pretrained(folder)
    Image.new("RGB", (64, 48), (40, 190, 70)).save(tmp_path / "scene.png")
    parser = argparse.ArgumentParser()
    plot.add_parser(parser.add_subparsers())
    args = parser.parse_args([
        "plot", "--attention", str(folder), "--image", str(tmp_path / "scene.png"), "--question",
        "what color is the circle?", "--question", "what is the circle?", "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert args.func(args) == 0
    written(tmp_path / "out" / "attention.png")
    seen = plot.seen_image(Image.new("RGB", (64, 48)), AutoProcessor.from_pretrained(folder))
    assert seen.size == (96, 96)  # the processor's centre crop: the patch grid lines up
