"""AdaLLM: the engine on text-only causal LMs of each family."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from adallava import AdaLLM, AdaptiveConfig, ExecutionPlan
from adallava.testing import tiny_causal_lm, tiny_inputs, tiny_llava
from tests.helpers import assert_generates_as_one_at_a_time

pytestmark = pytest.mark.core  # CI also runs these on the newest allowed dependencies

N = 6


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral"])
def causal(request):
    base = tiny_causal_lm(request.param, seed=2, num_layers=N, num_kv_heads=2)
    torch.manual_seed(3)
    model = AdaLLM.from_base(base, AdaptiveConfig()).eval()
    with torch.no_grad():
        model.scheduler.head.weight.mul_(50)
    return base, model


def text_inputs(base, lengths, side, seed):
    inputs = tiny_inputs(tiny_llava(num_layers=2).config, lengths, side, seed=seed, with_image=False)
    return inputs


def test_base_mode_and_plans_match_hf(causal):
    base, model = causal
    inputs = text_inputs(base, [5, 9, 3], "left", seed=4)
    executed = [[0, 1, 2, 4], [0, 1, 2, 3, 4, 5], [0, 1, 5]]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, base(**inputs).logits, atol=1e-5, rtol=0)
        logits = model(**inputs, plan=ExecutionPlan.from_layers(N, executed)).logits
        for row, layers in enumerate(executed):
            reference = copy.deepcopy(base)
            reference.model.layers = nn.ModuleList([reference.model.layers[i] for i in layers])
            reference.config.num_hidden_layers = len(layers)
            if getattr(reference.config, "layer_types", None):
                reference.config.layer_types = [reference.config.layer_types[i] for i in layers]
            expected = reference(**{k: v[row : row + 1] for k, v in inputs.items()}, use_cache=False).logits
            real = inputs["attention_mask"][row].bool()
            torch.testing.assert_close(logits[row][real], expected[0][real], atol=1e-4, rtol=0)


def test_mixed_budgets_generate_as_one_at_a_time(causal):
    base, model = causal
    inputs = text_inputs(base, [3, 9, 6], "right", seed=5)
    batched = assert_generates_as_one_at_a_time(model, inputs, [0.5, 1.0, 0.67])
    assert batched.prefill_cost.vision.sum() == 0


def test_head_switches_on_a_text_model(causal):
    base, _ = causal
    model = AdaLLM.from_base(base, AdaptiveConfig(switches="head", rank=1)).eval()
    inputs = text_inputs(base, [5, 8], "left", seed=6)
    with torch.no_grad():
        out = model(**inputs, budget=[0.6, 0.9])
    assert (
        out.cost.llm <= torch.tensor([0.6, 0.9], dtype=torch.float64) * out.full_cost.llm * (1 + 1e-9)
    ).all()
    assert out.plan.heads.shape == (2, N, 2)


def test_save_load_is_still_a_causal_lm(causal, tmp_path):
    base, model = causal
    model.save_pretrained(tmp_path)
    loaded = AdaLLM.from_pretrained(tmp_path, attn_implementation=base.config._attn_implementation)
    plain = AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation=base.config._attn_implementation
    )
    inputs = text_inputs(base, [5, 8], "left", seed=7)
    with torch.no_grad():
        a, b = model(**inputs, budget=[0.5, 0.83]), loaded(**inputs, budget=[0.5, 0.83])
        assert torch.equal(a.plan.layers, b.plan.layers)
        torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
        torch.testing.assert_close(plain(**inputs).logits, base(**inputs).logits, atol=0, rtol=0)


def test_wrong_bases_and_images_are_refused(causal):
    base, model = causal
    with pytest.raises(TypeError, match="use AdaLlava"):
        AdaLLM.from_base(tiny_llava(), AdaptiveConfig())
    inputs = text_inputs(base, [4], "left", seed=8)
    with pytest.raises(ValueError, match="pixel_values"), torch.no_grad():
        model(**inputs, pixel_values=torch.zeros(1, 3, 32, 32), budget=0.5)


def test_the_scheduler_trained_mark_round_trips(causal, tmp_path):
    # Bug caught: save/load dropping "scheduler_trained", so a trained AdaLLM came back refusing budgets
    # (or an untrained one came back allowed).
    import json

    _, model = causal
    assert model.scheduler_trained is False  # from_base: a fresh scheduler
    model.save_pretrained(tmp_path / "fresh")
    assert json.loads((tmp_path / "fresh" / "adaptive_config.json").read_text())["scheduler_trained"] is False
    assert AdaLLM.from_pretrained(tmp_path / "fresh").scheduler_trained is False
    trained = copy.deepcopy(model)
    trained.scheduler_trained = True
    trained.save_pretrained(tmp_path / "trained")
    loaded = AdaLLM.from_pretrained(tmp_path / "trained")
    assert loaded.scheduler_trained is True and loaded.adaptive == model.adaptive
