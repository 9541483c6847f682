"""`adallava flops` end to end on the LLaVA-1.5-7B config fixture."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adallava import cli
from adallava.cli import command
from adallava.core.cost.flops import prefill_cost
from adallava.core.cost.shapes import ModelShape

CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "llava-1.5-7b" / "config.json"


@pytest.fixture(autouse=True)
def only_flops(monkeypatch):
    # Test this subcommand through the real dispatcher without depending on the other subcommands.
    monkeypatch.setattr(command, "COMMANDS", ["flops"])


def _flops(*args: str) -> int:
    return cli.main(["flops", "--config", str(CONFIG), "--text-tokens", "110", *args])


def test_json_reports_the_papers_budgets(capsys):
    assert _flops("--image-tokens", "576", "--budgets", "0.6,0.85,1.0", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["budget"] for row in rows] == [0.6, 0.85, 1.0]
    assert [row["layers"] for row in rows] == [19, 27, 32]
    shape = ModelShape.from_config(CONFIG)
    for row in rows:
        cost = prefill_cost(shape, 576, 110, layers=[i < row["layers"] for i in range(32)], logits_tokens=1)
        assert (row["llm"], row["total"], row["vision"]) == (cost.llm, cost.total, cost.vision)
        assert row["llm"] <= row["budget"] * rows[-1]["llm"]
        assert row["bytes"] > 0 and row["time_s"] > 0
    assert rows[-1]["total"] == pytest.approx(9.3e12, rel=0.05)
    assert rows[0]["total"] == pytest.approx(5.8e12, rel=0.05)
    assert rows[0]["total"] < rows[1]["total"] < rows[2]["total"]


def test_table_states_the_convention(capsys):
    assert _flops("--budgets", "0.6,1", "--hardware", "h100") == 0
    out = capsys.readouterr().out
    assert "lm_head over 1 token" in out and "2 per multiply-add" in out and "h100-sxm" in out
    lines = out.splitlines()
    assert "budget" in lines[4] and "LLM FLOPs" in lines[4] and "est. time" in lines[4]
    assert "19/32" in lines[5] and "5.42 T" in lines[5] and "5.83 T" in lines[5]
    assert "32/32" in lines[6] and "9.54 T" in lines[6]


def test_absolute_caps_and_prefix_layers(capsys):
    assert _flops("--budgets", "7T,0.3", "--num-prefix-layers", "8", "--json") == 0
    cap, low = json.loads(capsys.readouterr().out)
    assert cap["requested"] == "7T" and cap["llm"] <= 7e12 < cap["llm"] + 0.29e12
    assert low["layers"] == 9  # floor(32 * 0.3) with 8 prefix layers


@pytest.mark.parametrize(
    "budgets,message",
    [("0.4", r"\[0.5, 1\]"), ("1.5", "FLOPs"), ("abc", "abc"), ("1T", "minimum feasible"), (",", "empty")],
)
def test_bad_budgets_exit_2_with_a_message(capsys, budgets, message):
    assert _flops("--budgets", budgets) == 2
    err = capsys.readouterr().err
    assert err.startswith("adallava flops: error:")
    assert re.search(message, err)


def test_missing_config_and_bad_options_exit_2(capsys, tmp_path):
    assert cli.main(["flops", "--config", str(tmp_path / "nope"), "--text-tokens", "5"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert _flops("--hardware", "tpu") == 2
    assert "unknown hardware" in capsys.readouterr().err
    assert _flops("--num-prefix-layers", "40") == 2
    assert "[0, 32]" in capsys.readouterr().err
