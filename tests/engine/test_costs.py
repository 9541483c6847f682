"""The cost the model reports: what ran, what the full plan would cost, and budgets that are kept."""

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from adallava import AdaLlava, AdaptiveConfig, ExecutionPlan
from adallava.core.budget import RELATIVE_TOLERANCE
from adallava.core.cost.flops import decode_step_cost
from adallava.testing import tiny_inputs, tiny_llava

N = 8


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("executed", [[0, 1, 2, 3], [0, 1, 2, 3, 5, 7], list(range(N))])
def test_reported_cost_of_a_plan_is_what_torch_counts(base_llava, ada, executed):
    inputs = tiny_inputs(base_llava.config, [7], seed=1)  # one row: no padding work to count
    plan = ExecutionPlan.from_layers(N, [executed])
    with torch.no_grad():
        out = ada(**inputs, plan=plan)
    counted = counted_flops(lambda: ada(**inputs, plan=plan))
    assert out.cost.total.item() == pytest.approx(counted, rel=0.01)
    assert out.cost[0].layers_run == len(executed)
    assert out.full_cost[0].layers_run == N


def test_reported_cost_with_a_budget_is_what_torch_counts(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [9], seed=2)
    with torch.no_grad():
        out = ada(**inputs, budget=0.75)
    counted = counted_flops(lambda: ada(**inputs, budget=0.75))  # includes the scheduler's own work
    assert out.cost.total.item() == pytest.approx(counted, rel=0.01)
    assert out.cost.llm.item() == pytest.approx(0.75 * out.full_cost.llm.item(), rel=1e-12)


def test_base_mode_reports_the_full_cost(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [6], seed=3)
    with torch.no_grad():
        out = ada(**inputs)
    assert torch.equal(out.cost.total, out.full_cost.total)
    assert out.cost.total.item() == pytest.approx(counted_flops(lambda: base_llava(**inputs)), rel=0.01)


def test_rows_are_priced_by_their_own_tokens(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [3, 12], "left", seed=4)
    with torch.no_grad():
        out = ada(**inputs, budget=1.0)
    assert out.full_cost.llm[0] < out.full_cost.llm[1]
    assert torch.all(out.cost.vision == out.cost.vision[0])  # one image each


def test_flops_caps_become_plans_under_the_cap(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 5, 5], "left", seed=5)
    with torch.no_grad():
        full = ada(**inputs, budget=1.0).full_cost.llm
        caps = [float(full[0]) * 0.7, f"{float(full[0]) * 0.9 / 1e6:.6f}M", float(full[0]) * 2]
        out = ada(**inputs, budget=caps)
    assert out.cost.llm[0] <= caps[0]
    assert out.cost.llm[1] <= float(full[1]) * 0.9 * (1 + 1e-6)
    assert out.plan.layers.sum(-1).tolist() == [math.floor(N * 0.7), math.floor(N * 0.9), N]


def test_infeasible_caps_name_the_minimum(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5], seed=6)
    with torch.no_grad():
        full = ada(**inputs, budget=1.0).full_cost.llm.item()
        with pytest.raises(ValueError, match="minimum feasible cap is") as error:
            ada(**inputs, budget=full * 0.4)
    assert f"{0.5 * full:.4g}" in str(error.value)


def test_generation_reports_prefill_and_decode_cost(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8], "left", seed=7)
    with torch.no_grad():
        out = ada.generate(
            **inputs, budget=[0.5, 1.0], max_new_tokens=4, do_sample=False, return_dict_in_generate=True
        )
    assert out.prefill_cost.llm[0] == pytest.approx(0.5 * out.full_prefill_cost.llm[0].item())
    assert out.prefill_cost.llm[1] == out.full_prefill_cost.llm[1]
    # 4 new tokens: the first from the prefill, 3 decoding steps; the half-depth row costs less.
    assert out.decode_cost[0].llm < out.decode_cost[1].llm
    assert out.decode_cost[0].vision == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layers=st.integers(2, 6),
    prefix=st.integers(1, 5),
    kv_heads=st.sampled_from([1, 2, 4]),
    text_lengths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    budgets=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
)
def test_every_row_keeps_its_budget(layers, prefix, kv_heads, text_lengths, budgets):
    prefix = min(prefix, layers - 1)
    base = tiny_llava(num_layers=layers, num_kv_heads=kv_heads, hidden_size=32, intermediate_size=48)
    model = AdaLlava.from_base(base, AdaptiveConfig(num_prefix_layers=prefix)).eval()
    b_min = prefix / layers
    fractions = [b_min + (1 - b_min) * b for b in budgets[: len(text_lengths)]]
    inputs = tiny_inputs(base.config, text_lengths, "left", seed=len(text_lengths))
    with torch.no_grad():
        out = model(**inputs, budget=fractions)
    for row, fraction in enumerate(fractions):
        assert out.cost.llm[row] <= fraction * out.full_cost.llm[row] * (1 + RELATIVE_TOLERANCE)
    with pytest.raises(ValueError, match="budget"), torch.no_grad():
        model(**inputs, budget=b_min * 0.99)
    with pytest.raises(ValueError, match="minimum feasible cap"), torch.no_grad():
        model(**inputs, budget=float(out.full_cost.llm.min()) * b_min * 0.99 + 1.5)


def stops(free: torch.Tensor) -> tuple[list[int], list[int]]:
    """End-of-sequence ids (tokens rows 0 and 1 generate) under which every row stops at a different
    point: ([eos ids], [new tokens each row then produces, its first end-of-sequence included])."""
    width = free.shape[1]
    for i in range(1, width):
        for j in range(1, width):
            eos = {int(free[0, i]), int(free[1, j])}
            produced = [
                next((k + 1 for k, token in enumerate(row) if token in eos), width) for row in free.tolist()
            ]
            if len(set(produced)) == len(produced) and min(produced) > 1:
                return sorted(eos), produced
    raise AssertionError(f"no end-of-sequence ids make the rows stop apart: {free.tolist()}")


def decode_by_hand(model, prompt: int, layers: tuple, produced: int):
    """The sum of a row's decode steps: new token k (k >= 2) is one step attending to prompt + k - 1
    keys; the first new token came from the prefill."""
    steps = [decode_step_cost(model.shape, prompt + s, layers=layers) for s in range(1, produced)]
    return sum(steps[1:], steps[0])


def free_and_stopping_runs(model, inputs, kwargs, eos_as_argument: bool):
    """(new tokens with nothing stopping [B, G], the run with end-of-sequence ids that stop the rows
    apart, their ids, the tokens each row then produces). The ids go in the model's generation config,
    or as generate's `eos_token_id` argument."""
    width = inputs["input_ids"].shape[1]
    config, model.generation_config = model.generation_config, copy.deepcopy(model.generation_config)
    try:
        model.generation_config.eos_token_id = None
        with torch.no_grad():
            free = model.generate(**inputs, **kwargs).sequences[:, width:]
        eos, produced = stops(free)
        extra = {"eos_token_id": eos} if eos_as_argument else {}
        if not eos_as_argument:
            model.generation_config.eos_token_id = eos
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs, **extra)
    finally:
        model.generation_config = config
    return free, out, eos, produced


# Catches: decode FLOPs counted past a row's first end-of-sequence token, one step too many (the
# prefill's token counted as a step), priced at the wrong context or without the row's plan.
def test_generate_decode_cost_is_the_sum_of_its_steps(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8, 6], "left", seed=8)
    width = inputs["input_ids"].shape[1]
    kwargs = {"budget": [0.5, 1.0, 0.75], "max_new_tokens": 6, "do_sample": False,
              "return_dict_in_generate": True}  # fmt: skip
    free, out, _, produced = free_and_stopping_runs(ada, inputs, kwargs, eos_as_argument=False)
    assert len(set(produced)) == 3  # the rows stop at three different points
    prompt = inputs["attention_mask"].sum(-1) + 1  # real tokens and the latency token
    for row, count in enumerate(produced):
        assert out.sequences[row, width : width + count].tolist() == free[row, :count].tolist()
        expected = decode_by_hand(ada, int(prompt[row]), tuple(out.plan.layers[row].tolist()), count)
        got = out.decode_cost[row]
        assert (got.llm, got.lm_head, got.total, got.elementwise) == (
            expected.llm, expected.lm_head, expected.total, expected.elementwise
        )  # fmt: skip
        assert got.per_layer == expected.per_layer
    assert out.plan.layers.sum(-1).tolist() == [4, 8, 6]


# Catches: decode FLOPs priced with the model's own end-of-sequence ids when generate was given others.
def test_decode_cost_follows_an_eos_token_id_given_to_generate(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8, 6], "left", seed=8)
    kwargs = {"budget": [0.5, 1.0, 0.75], "max_new_tokens": 6, "do_sample": False,
              "return_dict_in_generate": True}  # fmt: skip
    _, out, _, produced = free_and_stopping_runs(ada, inputs, kwargs, eos_as_argument=True)
    prompt = inputs["attention_mask"].sum(-1) + 1
    for row, count in enumerate(produced):
        expected = decode_by_hand(ada, int(prompt[row]), tuple(out.plan.layers[row].tolist()), count)
        assert out.decode_cost[row].llm == expected.llm, row
