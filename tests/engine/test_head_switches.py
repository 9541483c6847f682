"""AdaLLaVA-H: head-unit and MLP-group switches against Hugging Face's own model with those heads and
neurons removed; batch invariance; budgets; training gates; the official selection rule."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from adallava import AdaLlava, AdaptiveConfig, ExecutionPlan
from adallava.core.budget import RELATIVE_TOLERANCE
from adallava.core.selection import official_head_selection
from adallava.testing import tiny_inputs, tiny_llava
from tests.engine.test_decoder import forced_order_model, gated_and_skipped
from tests.helpers import assert_generates_as_one_at_a_time

pytestmark = pytest.mark.core  # CI also runs these on the newest allowed dependencies

N, P = 6, 3


def slice_rows(linear: nn.Linear, rows: list[int]) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None)
    out.weight.data = linear.weight.data[rows].clone()
    if linear.bias is not None:
        out.bias.data = linear.bias.data[rows].clone()
    return out


def slice_cols(linear: nn.Linear, cols: list[int]) -> nn.Linear:
    out = nn.Linear(len(cols), linear.out_features, bias=linear.bias is not None)
    out.weight.data = linear.weight.data[:, cols].clone()
    if linear.bias is not None:
        out.bias.data = linear.bias.data.clone()
    return out


def hf_with_units(base, heads, mlp):
    """HF's Llava with, in each layer i, only head units heads[i] and MLP groups mlp[i] kept (weights
    sliced by hand here, independently of adallava's slicing code)."""
    model = copy.deepcopy(base)
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    per_unit = text.num_attention_heads // text.num_key_value_heads
    for i, layer in enumerate(model.model.language_model.layers):
        units = [u for u in range(heads.shape[-1]) if heads[i, u]]
        q = [u * per_unit * head_dim + j for u in units for j in range(per_unit * head_dim)]
        kv = [u * head_dim + j for u in units for j in range(head_dim)]
        attn = layer.self_attn
        attn.q_proj, attn.k_proj, attn.v_proj = (
            slice_rows(attn.q_proj, q),
            slice_rows(attn.k_proj, kv),
            slice_rows(attn.v_proj, kv),
        )
        attn.o_proj = slice_cols(attn.o_proj, q)
        groups = mlp.shape[-1]
        size, extra = divmod(text.intermediate_size, groups)
        starts = [g * size + min(g, extra) for g in range(groups + 1)]
        neurons = [n for g in range(groups) if mlp[i, g] for n in range(starts[g], starts[g + 1])]
        layer.mlp.gate_proj = slice_rows(layer.mlp.gate_proj, neurons)
        layer.mlp.up_proj = slice_rows(layer.mlp.up_proj, neurons)
        layer.mlp.down_proj = slice_cols(layer.mlp.down_proj, neurons)
    return model


FAMILIES = {  # text model, KV heads, extra text config
    "llama": ("llama", None, {}),
    "qwen2-gqa": ("qwen2", 2, {}),
    "mistral-gqa-window": ("mistral", 2, {"sliding_window": 8}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    text_model, kv, extra = FAMILIES[request.param]
    base = tiny_llava(
        seed=7, text_model=text_model, num_layers=N, num_kv_heads=kv, intermediate_size=100, text_kwargs=extra
    )
    torch.manual_seed(8)
    model = AdaLlava.from_base(base, AdaptiveConfig(switches="head", rank=1, mlp_groups=3)).eval()
    with torch.no_grad():
        model.scheduler.head.weight.mul_(50)
    return base, model


def random_head_plan(batch, units, groups, seed):
    gen = torch.Generator().manual_seed(seed)
    heads = torch.rand(batch, N, units, generator=gen) < 0.6
    mlp = torch.rand(batch, N, groups, generator=gen) < 0.6
    heads[:, 0], mlp[:, 0] = True, True  # layer 0 runs in full
    heads[..., 0] |= ~heads.any(-1)  # keep at least one unit of each kind (the HF reference needs it)
    mlp[..., 0] |= ~mlp.any(-1)
    return ExecutionPlan.from_masks(torch.ones(batch, N, dtype=torch.bool), heads, mlp)


def test_head_plans_equal_hf_with_those_units_removed(family):
    base, model = family
    units, groups = model.geometry.head_units, model.geometry.mlp_groups
    inputs = tiny_inputs(base.config, [4, 9, 6], "left", seed=9)
    plan = random_head_plan(3, units, groups, seed=10)
    with torch.no_grad():
        logits = model(**inputs, plan=plan).logits
        for row in range(3):
            reference = hf_with_units(base, plan.heads[row], plan.mlp[row])
            single = {k: v[row : row + 1] for k, v in inputs.items()}
            expected = reference(**single, use_cache=False).logits
            real = inputs["attention_mask"][row].bool()
            torch.testing.assert_close(logits[row][real], expected[0][real], atol=1e-4, rtol=0)


def test_full_head_plan_is_the_base_model(family):
    base, model = family
    inputs = tiny_inputs(base.config, [4, 9], "left", seed=11)
    heads = torch.ones(2, N, model.geometry.head_units, dtype=torch.bool)
    mlp = torch.ones(2, N, model.geometry.mlp_groups, dtype=torch.bool)
    with torch.no_grad():
        out = model(**inputs, plan=ExecutionPlan.from_masks(torch.ones(2, N, dtype=torch.bool), heads, mlp))
        torch.testing.assert_close(out.logits, base(**inputs).logits, atol=1e-5, rtol=0)


def test_a_layer_with_every_unit_off_is_skipped(family):
    base, model = family
    inputs = tiny_inputs(base.config, [5], seed=12)
    heads = torch.ones(1, N, model.geometry.head_units, dtype=torch.bool)
    mlp = torch.ones(1, N, model.geometry.mlp_groups, dtype=torch.bool)
    heads[0, 4], mlp[0, 4] = False, False
    plan = ExecutionPlan.from_masks(torch.ones(1, N, dtype=torch.bool), heads, mlp)
    assert plan.layers[0].tolist() == [True, True, True, True, False, True]
    with torch.no_grad():
        with_heads = model(**inputs, plan=plan).logits
        with_layers = model(**inputs, plan=ExecutionPlan(plan.layers)).logits
    torch.testing.assert_close(with_heads, with_layers, atol=1e-5, rtol=0)


def test_mixed_head_plans_generate_as_one_at_a_time(family):
    base, model = family
    inputs = tiny_inputs(base.config, [3, 10, 6, 8], "right", seed=13)
    assert_generates_as_one_at_a_time(model, inputs, [0.5, 1.0, 0.7, 0.85])


def test_cached_head_generation_equals_uncached(family):
    base, model = family
    inputs = tiny_inputs(base.config, [6, 9], "left", seed=14)
    plan = random_head_plan(2, model.geometry.head_units, model.geometry.mlp_groups, seed=15)
    with torch.no_grad():
        out = model.generate(**inputs, plan=plan, max_new_tokens=5, do_sample=False)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(5):
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"], plan=plan,
                           use_cache=False).logits[:, -1]  # fmt: skip
            logits[:, 3] = float("-inf")  # the image placeholder is suppressed in generation
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    assert torch.equal(out, ids)


def test_sliced_weights_are_built_once_per_plan(family):
    base, model = family
    model.slices.clear()
    inputs = tiny_inputs(base.config, [6, 6], "left", seed=16)
    with torch.no_grad():
        model.generate(**inputs, budget=[0.7, 0.7], max_new_tokens=6, do_sample=False)
        built = len(model.slices)
        model.generate(**inputs, budget=[0.7, 0.7], max_new_tokens=6, do_sample=False)
    assert built > 0 and len(model.slices) == built  # decode steps and repeats reuse them


def test_training_gates_equal_sliced_execution(family):
    """In training, switched-off units are masked in full layers; the result must equal running the
    sampled plan with sliced weights (off units removed)."""
    base, model = family
    inputs = tiny_inputs(base.config, [5, 8], "right", seed=17)
    model.train()
    try:
        gated = model(**inputs, budget=[0.6, 0.8], generator=torch.Generator().manual_seed(0))
        gated.logits.sum().backward()
        grad = model.scheduler.head.weight.grad.abs().sum()
        model.zero_grad()
    finally:
        model.eval()
    assert grad > 0
    plan = gated.plan
    with torch.no_grad():
        rerun = model(
            **inputs, budget=[0.6, 0.8], sample_plan=True, generator=torch.Generator().manual_seed(0)
        )
    # Same seed, same noise: inference sampling picks the same plan, run with sliced weights.
    assert torch.equal(rerun.plan.heads, plan.heads) and torch.equal(rerun.plan.mlp, plan.mlp)
    real = torch.cat([inputs["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1).bool()
    torch.testing.assert_close(gated.logits.detach()[real], rerun.logits[real], atol=1e-4, rtol=0)


# Catches: head/MLP training gates applied to the wrong rows or layers: with the order forced (the
# sample equals the greedy plan), the gated training forward equals the sliced inference forward.
def test_forced_training_head_plans_equal_sliced_inference(family):
    base, _ = family
    adaptive = AdaptiveConfig(switches="head", rank=1, mlp_groups=3)
    model = forced_order_model(base, adaptive, seed=1)
    inputs = tiny_inputs(base.config, [5, 8, 3, 6], "right", seed=26)
    gated, skipped = gated_and_skipped(model, inputs, [0.6, 1.0, 0.8, 0.7])
    assert torch.equal(gated.plan.heads, skipped.plan.heads) and torch.equal(gated.plan.mlp, skipped.plan.mlp)
    on = skipped.plan.heads.sum((1, 2)) + skipped.plan.mlp.sum((1, 2))
    assert len(set(on.tolist())) == 4  # every row runs a different number of units
    real = skipped.attention_mask.bool()
    torch.testing.assert_close(gated.logits.detach()[real], skipped.logits[real], atol=1e-5, rtol=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layers=st.integers(2, 5),
    kv_heads=st.sampled_from([1, 2, 4]),
    groups=st.integers(1, 6),
    text_lengths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    budgets=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
)
def test_head_plans_keep_every_budget(layers, kv_heads, groups, text_lengths, budgets):
    base = tiny_llava(num_layers=layers, num_kv_heads=kv_heads, hidden_size=32, intermediate_size=50)
    model = AdaLlava.from_base(base, AdaptiveConfig(switches="head", rank=1, mlp_groups=groups)).eval()
    b_min = model.b_min
    fractions = [b_min + (1 - b_min) * b for b in budgets[: len(text_lengths)]]
    inputs = tiny_inputs(base.config, text_lengths, "left", seed=len(text_lengths))
    with torch.no_grad():
        out = model(**inputs, budget=fractions)
    for row, fraction in enumerate(fractions):
        assert out.cost.llm[row] <= fraction * out.full_cost.llm[row] * (1 + RELATIVE_TOLERANCE)
    assert torch.equal(out.cost.llm[[i for i, f in enumerate(fractions) if f == 1.0]],
                       out.full_cost.llm[[i for i, f in enumerate(fractions) if f == 1.0]])  # fmt: skip


def official_rule_loop(logits, units, heads, rank):
    """The official H rule written plainly, one row and one unit at a time."""
    layers = logits.shape[0]
    taken = [[False] * (2 * heads) for _ in range(layers)]
    for _ in range(units):
        best, best_layer = float("-inf"), None
        for layer in range(layers):
            for j in range(2 * heads):
                if not taken[layer][j] and logits[layer, j] > best:
                    best, best_layer = logits[layer, j].item(), layer
        for part in (range(heads), range(heads, 2 * heads)):
            free = sorted((j for j in part if not taken[best_layer][j]), key=lambda j: -logits[best_layer, j])
            for j in free[:rank]:
                taken[best_layer][j] = True
    return torch.tensor(taken)


def test_official_selection_matches_the_rule():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 8, generator=gen)  # 5 rows, 4 upper layers, 4 heads
    units = torch.tensor([0, 1, 3, 5, 8])
    heads, mlp = official_head_selection(logits, units, heads=4, rank=2)
    for row in range(5):
        expected = official_rule_loop(logits[row], int(units[row]), heads=4, rank=2)
        assert torch.equal(torch.cat([heads[row], mlp[row]], -1), expected)
        assert int(heads[row].sum()) == 2 * int(units[row]) == int(mlp[row].sum())


def test_head_config_errors_name_the_field(base_llava):
    with pytest.raises(ValueError, match="rank must divide"):
        AdaLlava.from_base(base_llava, AdaptiveConfig(switches="head", rank=3))
    with pytest.raises(ValueError, match="mlp_groups"):
        AdaLlava.from_base(base_llava, AdaptiveConfig(switches="head", rank=1, mlp_groups=10_000))


def test_masked_fallback_equals_sliced_execution(family):
    base, model = family
    inputs = tiny_inputs(base.config, [4, 9, 6], "left", seed=18)
    plan = random_head_plan(3, model.geometry.head_units, model.geometry.mlp_groups, seed=19)
    with torch.no_grad():
        sliced = model(**inputs, plan=plan).logits
        model.head_execution = "masked"
        try:
            masked = model(**inputs, plan=plan).logits
        finally:
            model.head_execution = "sliced"
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(masked[real], sliced[real], atol=1e-5, rtol=0)


def test_deterministic_head_scheduler_runs_and_reports(family):
    base, _ = family
    model = AdaLlava.from_base(
        base, AdaptiveConfig(switches="head", rank=1, mlp_groups=3, scheduler="deterministic")
    ).train()
    inputs = tiny_inputs(base.config, [5, 8], "right", seed=20)
    out = model(**inputs, labels=inputs["input_ids"], budget=[0.5, 0.9])
    out.loss.backward()
    assert model.scheduler.head.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        evaluated = model(**inputs, budget=[0.5, 0.9])
    assert evaluated.plan.heads is not None and torch.isfinite(evaluated.logits).all()


# ---- the slice cache never outlives the weights it was cut from (issue 13) -----------------------
def fresh_head_model(seed: int = 7) -> AdaLlava:
    """A model of its own (the tests below change its weights), on a tiny Llama."""
    base = tiny_llava(seed=seed, num_layers=N, intermediate_size=100)
    return AdaLlava.from_base(base, AdaptiveConfig(switches="head", rank=1, mlp_groups=3)).eval()


def partial_head_plan(model: AdaLlava, batch: int) -> ExecutionPlan:
    """Every layer past the first with one head unit and one MLP group off, so each runs sliced."""
    heads = torch.ones(batch, N, model.geometry.head_units, dtype=torch.bool)
    mlp = torch.ones(batch, N, model.geometry.mlp_groups, dtype=torch.bool)
    heads[:, 1:, 0], mlp[:, 1:, 0] = False, False
    return ExecutionPlan.from_masks(torch.ones(batch, N, dtype=torch.bool), heads, mlp)


def masked_logits(model: AdaLlava, inputs: dict, plan: ExecutionPlan) -> torch.Tensor:
    """The plan run on the full layers with off units zeroed: never touches the slice cache."""
    model.head_execution = "masked"
    try:
        return model(**inputs, plan=plan).logits
    finally:
        model.head_execution = "sliced"


# Catches: head-plan logits stayed stale after an in-place edit of a layer's weights.
def test_head_plans_follow_an_in_place_weight_change():
    model = fresh_head_model()
    inputs = tiny_inputs(model.config, [5, 8], "left", seed=21)
    plan, real = partial_head_plan(model, 2), inputs["attention_mask"].bool()
    with torch.no_grad():
        before = model(**inputs, plan=plan).logits  # builds and caches the sliced layers
        layer = model.text_model.layers[2]
        layer.self_attn.q_proj.weight.add_(0.5)
        layer.mlp.down_proj.weight.mul_(3)
        after = model(**inputs, plan=plan).logits
        expected = masked_logits(model, inputs, plan)
    assert not torch.allclose(before[real], after[real], atol=1e-3)  # the edit changes the answer
    torch.testing.assert_close(after[real], expected[real], atol=1e-5, rtol=0)


# Catches: head-plan logits stayed stale after load_state_dict with other weights.
def test_head_plans_follow_load_state_dict():
    model, other = fresh_head_model(seed=7), fresh_head_model(seed=22)
    inputs = tiny_inputs(model.config, [5, 8], "left", seed=23)
    plan, real = partial_head_plan(model, 2), inputs["attention_mask"].bool()
    with torch.no_grad():
        before = model(**inputs, plan=plan).logits  # builds and caches the sliced layers
        model.load_state_dict(other.state_dict())
        after = model(**inputs, plan=plan).logits
        expected = other(**inputs, plan=plan).logits  # a fresh model built from those weights
    assert not torch.allclose(before[real], after[real], atol=1e-3)
    torch.testing.assert_close(after[real], expected[real], atol=1e-5, rtol=0)


# Catches: after model.to(torch.float64) the head-plan forward failed (slices cached in float32).
def test_head_plans_follow_a_dtype_change():
    model = fresh_head_model()
    # Right padding: HF's own tiny Llava gives NaN for left-padded rows in float64 (eager attention).
    inputs = tiny_inputs(model.config, [5, 8], "right", seed=24)
    plan, real = partial_head_plan(model, 2), inputs["attention_mask"].bool()
    with torch.no_grad():
        model(**inputs, plan=plan)  # builds and caches float32 sliced layers
        model.to(torch.float64)
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
        sliced = model(**inputs, plan=plan).logits
        expected = masked_logits(model, inputs, plan)
    assert sliced.dtype == torch.float64
    torch.testing.assert_close(sliced[real], expected[real], atol=1e-10, rtol=0)


# Catches: slices kept across `.to()`, `train()`/`eval()` or `load_state_dict`; fingerprints alone
# can miss a dtype round trip whose new weights land at the old address with the old version count.
def test_moves_modes_and_loads_drop_the_slice_cache():
    model = fresh_head_model()
    inputs = tiny_inputs(model.config, [5, 8], "left", seed=25)
    plan = partial_head_plan(model, 2)
    changes = {
        "to": lambda: model.to(torch.float32),
        "eval": lambda: model.eval(),
        "load_state_dict": lambda: model.load_state_dict(model.state_dict()),
    }
    for name, change in changes.items():
        with torch.no_grad():
            model(**inputs, plan=plan)
        assert len(model.slices) > 0
        change()
        assert len(model.slices) == 0, name
