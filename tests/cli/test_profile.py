"""`adallava profile` and deadline budgets through `adallava ask`."""

import json

from adallava.cli import main
from adallava.core.latency_model import LatencyProfile, load_profile
from adallava.engine.deadlines import profile_key
from adallava.io.hub import load_model


def test_profile_saves_what_deadline_requests_load(tmp_path, monkeypatch, capsys):
    """Catches: a profile saved under a key that a later load of the same model does not find (every
    deadline request would then calibrate again), or one missing a component."""
    monkeypatch.setenv("ADALLAVA_CACHE", str(tmp_path))
    assert main(["profile", "--quick", "--json"]) == 0
    saved = LatencyProfile.from_dict(json.loads(capsys.readouterr().out))
    model, _ = load_model(None)
    assert load_profile(profile_key(model)) == saved
    assert saved.num_layers == 16 and saved.prefix_layers == 8
    assert saved.prefill_prefix_layer.fixed_ms > 0 and saved.decode_prefix_layer.fixed_ms > 0
    assert saved.vision_per_image_ms > 0


def test_ask_with_a_deadline_reports_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADALLAVA_CACHE", str(tmp_path))
    code = main(["ask", "--image", "examples/scene.png", "--question", "what color is the circle ?",
                 "--budget", "10s", "--json", "--max-new-tokens", "3"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    deadline = result["deadline"]
    assert deadline["deadline_ms"] == 10_000 and deadline["met"] and deadline["fraction"] == 1.0
    assert 0 < deadline["predicted_ms"] < 10_000 and deadline["measured_ms"] > 0
    assert result["budget"] == 1.0 and len(result["plan"]["layers"]) == 16


def test_ask_with_an_impossible_deadline_says_the_minimum(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADALLAVA_CACHE", str(tmp_path))
    code = main(["ask", "--image", "examples/scene.png", "--question", "what shape ?", "--budget", "0.001ms"])
    assert code != 0
    assert "cannot be met" in capsys.readouterr().err
    code = main(["ask", "--image", "examples/scene.png", "--question", "what shape ?", "--budget", "0.001ms",
                 "--best-effort", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["budget"] == 0.5 and result["deadline"]["best_effort"] and not result["deadline"]["met"]
