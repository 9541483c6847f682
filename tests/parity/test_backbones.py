"""The engine on each supported text family (Llama, Qwen2 with q/k/v biases, Mistral with a sliding
window), with GQA, under eager and SDPA attention: nothing may assume Llama or one attention kernel."""

import pytest
import torch

from adallava import AdaLlava, AdaptiveConfig, ExecutionPlan
from adallava.testing import tiny_inputs, tiny_llava
from tests.engine.test_decoder import hf_with_layers
from tests.helpers import assert_generates_as_one_at_a_time

pytestmark = pytest.mark.core  # CI also runs these on the newest allowed dependencies

N = 6
CASES = [
    ("llama", "sdpa", {}),
    ("qwen2", "eager", {}),
    ("qwen2", "sdpa", {}),
    ("mistral", "eager", {"sliding_window": 8}),  # shorter than the prompts: the window mask matters
    ("mistral", "sdpa", {"sliding_window": 8}),
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{t}-{a}" for t, a, _ in CASES])
def family(request):
    text_model, attn, text_kwargs = request.param
    base = tiny_llava(
        seed=3,
        text_model=text_model,
        num_layers=N,
        num_kv_heads=2,
        attn_implementation=attn,
        text_kwargs=text_kwargs,
    )
    torch.manual_seed(4)
    model = AdaLlava.from_base(base, AdaptiveConfig()).eval()
    with torch.no_grad():
        model.scheduler.head.weight.mul_(50)
    return base, model


def test_base_mode_and_plans_match_hf(family):
    base, model = family
    inputs = tiny_inputs(base.config, [5, 9, 3], "left", seed=5)
    executed = [[0, 1, 2, 4], [0, 1, 2, 3, 4, 5], [0, 1, 2, 5]]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, base(**inputs).logits, atol=1e-5, rtol=0)
        logits = model(**inputs, plan=ExecutionPlan.from_layers(N, executed)).logits
        for row, layers in enumerate(executed):
            single = {k: v[row : row + 1] for k, v in inputs.items()}
            expected = hf_with_layers(base, layers)(**single, use_cache=False).logits
            real = inputs["attention_mask"][row].bool()
            torch.testing.assert_close(logits[row][real], expected[0][real], atol=1e-4, rtol=0)


def test_mixed_budget_generation_equals_one_at_a_time(family):
    base, model = family
    inputs = tiny_inputs(base.config, [3, 10, 6], "right", seed=6)
    batched = assert_generates_as_one_at_a_time(model, inputs, [0.5, 1.0, 0.67])
    assert batched.plan.layers.sum(-1).tolist() == [3, 6, 4]
