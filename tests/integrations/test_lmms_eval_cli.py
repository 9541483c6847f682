"""The real lmms-eval CLI runs adallava on an exported world, offline: POPE (18 questions) at two
budgets. lmms-eval's reported POPE metrics equal `adallava score pope --protocol lmms-eval` (the real
CLI) on the answers it logged, and every logged sample carries its plan and FLOPs. About 40 s: two
lmms-eval processes, each importing lmms-eval and loading the bundled model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integrations.lmms_required import require_lmms_eval

require_lmms_eval()

from adallava.integrations.lmms.compare import compare, read_run  # noqa: E402

pytestmark = pytest.mark.slow
BUDGETS = (0.5, 1.0)
TASK = "adallava_world_pope"


def _tool(name: str) -> list[str]:
    """A console script of this environment (beside the running Python)."""
    script = Path(sys.executable).with_name(name)
    assert script.exists(), f"{script}: not installed in this environment"
    return [str(script)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    export = root / "tasks"
    subprocess.run(
        [*_tool("adallava"), "world", "export", "--format", "lmms-eval", "--out", str(export), "--n", "6",
         "--benchmarks", "pope"],
        check=True, env=env, capture_output=True, text=True,
    )  # fmt: skip
    outputs = {}
    for budget in BUDGETS:
        out = root / f"out-{budget}"
        done = subprocess.run(
            [*_tool("lmms-eval"), "eval", "--model", "adallava",
             "--model_args", f"pretrained=tiny-adallava-l,budget={budget},batch_size=4",
             "--tasks", TASK, "--include_path", str(export), "--output_path", str(out), "--log_samples",
             "--device", "cpu"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs[budget] = out
    return export, outputs


def test_lmms_eval_scores_equal_adallava_score(runs):
    # Bug caught: the exported rows, the answers or the lmms-eval protocol drifting apart, so that the
    # harness and `adallava score` disagree on the same predictions.
    export, outputs = runs
    for budget, out in outputs.items():
        rows = compare(export, out)
        assert {row.metric for row in rows} == {
            "pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"
        }  # fmt: skip
        assert all(row.equal for row in rows), (budget, rows)
        # ... and the printed command itself, run as a user would
        command = rows[0].command.split()
        done = subprocess.run(
            [*_tool("adallava"), *command[1:], "--json"], check=True, capture_output=True, text=True
        )
        ours = json.loads(done.stdout)
        reported = read_run(out).results["results"][TASK]
        assert ours["n"] == 18
        assert ours["overall"]["f1"] / 100 == pytest.approx(reported["pope_f1_score,none"], rel=1e-12)
        assert ours["overall"]["accuracy"] / 100 == pytest.approx(reported["pope_accuracy,none"], rel=1e-12)


def test_every_sample_logs_its_plan_and_flops(runs):
    # Bug caught: the budget not reaching the model (both runs full), or the per-sample cost missing
    # from lmms-eval's --log_samples output.
    _, outputs = runs
    logged = {budget: read_run(out).samples[TASK] for budget, out in outputs.items()}
    for budget, samples in logged.items():
        assert len(samples) == 18
        for sample in samples:
            [counts] = sample["token_counts"]
            cost = counts["adallava"]
            assert cost["budget"] == budget and cost["fraction"] == budget
            assert counts["input_tokens"] > 0 and counts["output_tokens"] >= 1
            llm, full = cost["prefill_flops"]["llm"], cost["full_prefill_flops"]["llm"]
            layers = cost["plan"]["layers"]
            if budget == 1.0:
                assert llm == full and layers == list(range(cost["plan"]["num_layers"]))
            else:  # a layer plan within half of the decoder stack's prefill FLOPs
                assert llm <= budget * full * (1 + 1e-9)
                assert len(layers) < cost["plan"]["num_layers"]
