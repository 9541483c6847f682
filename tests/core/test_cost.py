"""Unit and property tests of the analytic cost model and the roofline estimate."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig

from adallava.core.budget import budget_fractions, min_fraction, upper_units_for_fraction
from adallava.core.cost.flops import (
    Bytes,
    Cost,
    decode_cost,
    decode_step_cost,
    head_unit_flops,
    layer_flops,
    layer_unit_flops,
    llm_prefill_flops,
    mlp_group_flops,
    prefill_cost,
)
from adallava.core.cost.hardware import PRESETS, get_hardware, roofline_time
from adallava.core.cost.shapes import ModelShape, TextShape

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LLAVA_7B = FIXTURES / "llava-1.5-7b" / "config.json"
LLAVA_13B = FIXTURES / "llava-1.5-13b"
IMAGE, TEXT = 576, 110  # the token counts docs/cost-model.md assumes for the paper's Table 1


@pytest.fixture(scope="module")
def shape_7b() -> ModelShape:
    return ModelShape.from_config(LLAVA_7B)


def _layers(n_on: int, n: int) -> list[bool]:
    return [i < n_on for i in range(n)]


# --- shapes from configs ------------------------------------------------------------------------


def test_7b_fixture_reads_as_llava_1_5(shape_7b):
    text, vision, projector = shape_7b.text, shape_7b.vision, shape_7b.projector
    assert (text.num_layers, text.hidden_size, text.num_heads, text.num_kv_heads) == (32, 4096, 32, 32)
    assert (text.head_dim, text.intermediate_size, text.vocab_size) == (128, 11008, 32064)
    assert (vision.kind, vision.num_layers, vision.hidden_size, vision.seq_len) == ("clip", 24, 1024, 577)
    assert (projector.in_features, projector.hidden_features, projector.out_features) == (1024, 4096, 4096)
    assert shape_7b.image_tokens_per_image == 576


def test_config_forms_agree(shape_7b):
    as_dict = json.loads(LLAVA_7B.read_text())
    assert ModelShape.from_config(LLAVA_7B.parent) == shape_7b
    assert ModelShape.from_config(str(LLAVA_7B)) == shape_7b
    assert ModelShape.from_config(as_dict) == shape_7b
    assert ModelShape.from_config(LlavaConfig.from_pretrained(LLAVA_7B.parent)) == shape_7b
    # llava-hf's own config.json leaves most fields to transformers' defaults.
    minimal = {
        "model_type": "llava",
        "text_config": {"model_type": "llama", "vocab_size": 32064},
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "image_size": 336,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "patch_size": 14,
        },
    }
    assert ModelShape.from_config(minimal) == shape_7b


def test_text_only_configs_have_no_vision_part():
    shape = ModelShape.from_config(MistralConfig(num_hidden_layers=4))
    assert shape.vision is None and shape.projector is None
    assert (shape.text.num_kv_heads, shape.text.heads_per_unit, shape.text.intermediate_size) == (8, 4, 14336)
    cost = prefill_cost(shape, 0, 50)
    assert cost.vision == 0 and cost.total == cost.llm + cost.lm_head
    with pytest.raises(ValueError, match="no vision tower"):
        prefill_cost(shape, 16, 50)


def test_bad_configs_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelShape.from_config(tmp_path)
    with pytest.raises(ValueError, match="num_kv_heads"):
        TextShape(2, 64, 4, 3, 16, 128, 96)
    with pytest.raises(ValueError, match="vision tower model_type"):
        ModelShape.from_config({"model_type": "llava", "vision_config": {"model_type": "resnet"}})


def test_weight_bytes_are_the_parameters_read(shape_7b):
    """Prefill reads every weight once (the embedding table only row by row): compare with the
    parameter count of HF's model built on the meta device."""
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig.from_pretrained(LLAVA_7B.parent))
    params = sum(p.numel() for p in model.parameters())
    params -= model.model.language_model.embed_tokens.weight.numel()
    cost = prefill_cost(shape_7b, IMAGE, TEXT)
    assert cost.bytes.weights == pytest.approx(2 * params, rel=0.001)
    assert prefill_cost(shape_7b, IMAGE, TEXT, dtype_bytes=4).bytes.weights == pytest.approx(
        4 * params, rel=0.001
    )


# --- the paper's Table 1 ------------------------------------------------------------------------


def test_7b_prefill_lands_on_the_papers_table_1(shape_7b):
    full = prefill_cost(shape_7b, IMAGE, TEXT, logits_tokens=1)
    assert full.total == pytest.approx(9.3e12, rel=0.05)
    run = 16 + upper_units_for_fraction(32, 16, 0.6)
    assert run == 19
    budget_60 = prefill_cost(shape_7b, IMAGE, TEXT, layers=_layers(run, 32), logits_tokens=1)
    assert budget_60.total == pytest.approx(5.8e12, rel=0.05)


def test_13b_prefill_lands_on_the_papers_table_1():
    shape = ModelShape.from_config(LLAVA_13B)
    assert prefill_cost(shape, IMAGE, TEXT, logits_tokens=1).total == pytest.approx(18.2e12, rel=0.05)


# --- structure of the counts --------------------------------------------------------------------


def test_off_layers_cost_nothing(shape_7b):
    plan = [i % 3 == 0 for i in range(32)]
    cost = prefill_cost(shape_7b, IMAGE, TEXT, layers=plan)
    for on, layer in zip(plan, cost.per_layer, strict=True):
        assert (layer.total > 0) == on
        if not on:
            assert layer.elementwise == 0
    assert cost.llm == sum(plan) * layer_unit_flops(shape_7b.text, IMAGE + TEXT)
    assert cost.layers_run == sum(plan)
    none = prefill_cost(shape_7b, IMAGE, TEXT, layers=[False] * 32)
    assert none.llm == 0 and none.vision == cost.vision and none.lm_head == cost.lm_head


def test_costs_grow_with_tokens_layers_and_context(shape_7b):
    costs = [prefill_cost(shape_7b, IMAGE, t).total for t in (1, 10, 100, 1000)]
    assert costs == sorted(costs) and len(set(costs)) == 4
    llm = [llm_prefill_flops(shape_7b.text, 686, _layers(k, 32)) for k in range(33)]
    assert all(a < b for a, b in zip(llm, llm[1:], strict=False))
    steps = [decode_step_cost(shape_7b, c).llm for c in (1, 100, 1000)]
    assert steps == sorted(steps) and len(set(steps)) == 3


def test_layer_total_is_the_sum_of_its_units(shape_7b):
    text, T = shape_7b.text, 300
    for units, neurons in [(0, 0), (1, 0), (5, 4096), (32, 11008), (0, 17)]:
        layer = layer_flops(text, T, head_units_on=units, mlp_neurons_on=neurons)
        assert layer.total == units * head_unit_flops(text, T) + mlp_group_flops(text, T, neurons)
    assert layer_flops(text, T).total == layer_unit_flops(text, T)


def test_gqa_shrinks_kv_projections_only():
    mha = TextShape(4, 512, 8, 8, 64, 1024, 100)
    gqa = TextShape(4, 512, 8, 2, 64, 1024, 100)
    a, b = layer_flops(mha, 50), layer_flops(gqa, 50)
    assert b.attn_proj < a.attn_proj
    assert a.attn_proj - b.attn_proj == 2 * 50 * 512 * 2 * (8 - 2) * 64  # k and v: 6 fewer KV heads
    assert (a.attn_scores, a.mlp) == (b.attn_scores, b.mlp)  # scores run over all query heads
    assert gqa.num_head_units == 2 and gqa.heads_per_unit == 4


def test_decode_step_counts_one_token_against_the_context(shape_7b):
    text, context = shape_7b.text, 700
    step = decode_step_cost(shape_7b, context)
    per_layer = layer_flops(text, 1, context)
    assert step.llm == 32 * per_layer.total
    assert per_layer.attn_scores == 2 * 2 * context * text.head_dim * text.num_heads
    assert step.lm_head == 2 * text.hidden_size * text.vocab_size
    assert step.vision == 0
    assert step.bytes.kv_cache == pytest.approx(
        32 * 2 * (context + 1) * text.num_kv_heads * text.head_dim * 2
    )


def test_decode_cost_is_the_sum_of_its_steps(shape_7b):
    plan, past = _layers(21, 32), 686
    summed = decode_step_cost(shape_7b, past + 1, layers=plan)
    for context in range(past + 2, past + 8):
        summed = summed + decode_step_cost(shape_7b, context, layers=plan)
    closed = decode_cost(shape_7b, past, 7, layers=plan)
    assert (closed.total, closed.llm, closed.lm_head, closed.elementwise) == (
        summed.total,
        summed.llm,
        summed.lm_head,
        summed.elementwise,
    )
    assert closed.per_layer == summed.per_layer
    assert closed.bytes.total == pytest.approx(summed.bytes.total)
    assert decode_cost(shape_7b, past, 0).total == 0


def test_logits_tokens_and_plan_validation(shape_7b):
    all_logits = prefill_cost(shape_7b, IMAGE, TEXT)
    one = prefill_cost(shape_7b, IMAGE, TEXT, logits_tokens=1)
    assert all_logits.lm_head == (IMAGE + TEXT) * one.lm_head
    with pytest.raises(ValueError, match="32 layers"):
        prefill_cost(shape_7b, IMAGE, TEXT, layers=[True] * 31)
    with pytest.raises(ValueError, match="head_units_on"):
        prefill_cost(shape_7b, IMAGE, TEXT, head_units=[33] * 32)
    with pytest.raises(ValueError, match="mlp_neurons_on"):
        prefill_cost(shape_7b, IMAGE, TEXT, mlp_neurons=[-1] * 32)
    with pytest.raises(ValueError, match="logits_tokens"):
        prefill_cost(shape_7b, IMAGE, TEXT, logits_tokens=IMAGE + TEXT + 1)


def test_cost_serialises_and_adds(shape_7b):
    prefill = prefill_cost(shape_7b, IMAGE, TEXT, layers=_layers(20, 32), logits_tokens=1)
    step = decode_step_cost(shape_7b, IMAGE + TEXT + 1, layers=_layers(20, 32))
    data = json.loads(json.dumps(prefill.to_dict()))
    assert data["total"] == prefill.total and data["llm"] == prefill.llm and data["layers_run"] == 20
    assert data["vision"] == data["vision_tower"] + data["projector"]
    both = prefill + step
    assert isinstance(both, Cost)
    assert both.total == prefill.total + step.total
    assert both.bytes.total == pytest.approx(prefill.bytes.total + step.bytes.total)
    assert both.per_layer[0].total == prefill.per_layer[0].total + step.per_layer[0].total


# --- roofline -----------------------------------------------------------------------------------


def test_roofline_regimes(shape_7b):
    a100 = get_hardware("a100")
    prefill = prefill_cost(shape_7b, IMAGE, TEXT, logits_tokens=1)
    step = decode_step_cost(shape_7b, IMAGE + TEXT + 1)
    t_prefill, t_step = roofline_time(prefill, a100), roofline_time(step, a100)
    # Prefill is compute-bound: a little above FLOPs / peak. A decode step is bandwidth-bound.
    compute, memory = prefill.total / a100.peak("fp16"), step.bytes.total / a100.bandwidth
    assert compute * (1 - 1e-9) <= t_prefill < 1.3 * compute
    assert memory * (1 - 1e-9) <= t_step < 1.1 * memory
    assert roofline_time(prefill, get_hardware("h100")) < t_prefill
    assert roofline_time(step, get_hardware("h200")) < roofline_time(step, get_hardware("h100"))


def test_hardware_presets_and_overrides(shape_7b):
    assert {"v100", "a100-40gb", "a100-80gb", "h100-sxm", "h200", "cpu"} <= set(PRESETS)
    step = decode_step_cost(shape_7b, 100)
    slow = get_hardware("cpu", bandwidth=50e9)
    assert slow.bandwidth == 50e9
    assert roofline_time(step, slow) == pytest.approx(2 * roofline_time(step, get_hardware("cpu")), rel=0.01)
    with pytest.raises(ValueError, match="bf16"):
        roofline_time(step, get_hardware("v100"), "bf16")
    with pytest.raises(ValueError, match="dtype_bytes=4"):
        roofline_time(step, get_hardware("a100"), "fp32")
    assert roofline_time(decode_step_cost(shape_7b, 100, dtype_bytes=4), get_hardware("a100"), "fp32") > 0
    with pytest.raises(ValueError, match="unknown hardware"):
        get_hardware("tpu-v9")


# --- budgets: the plan a fraction buys never exceeds it -----------------------------------------


@st.composite
def _text_shapes(draw) -> TextShape:
    kv = draw(st.sampled_from([1, 2, 4, 8]))
    heads = kv * draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([16, 64, 128]))
    return TextShape(
        num_layers=draw(st.integers(2, 64)),
        hidden_size=heads * head_dim,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=draw(st.integers(1, 20000)),
        vocab_size=draw(st.integers(1, 200000)),
        qkv_bias=draw(st.booleans()),
    )


@settings(max_examples=200, deadline=None)
@given(
    text=_text_shapes(),
    tokens=st.integers(1, 8192),
    prefix_share=st.floats(0, 1),
    budget_share=st.floats(0, 1),
    which=st.randoms(use_true_random=False),
)
def test_layer_plan_bought_by_a_budget_fits_and_is_maximal(text, tokens, prefix_share, budget_share, which):
    N = text.num_layers
    P = round(prefix_share * N)
    b_min = min_fraction(N, P)
    budget = b_min + budget_share * (1 - b_min)
    full = llm_prefill_flops(text, tokens)
    k = upper_units_for_fraction(N, P, budget)
    upper = which.sample(range(P, N), k)  # any k upper layers cost the same
    plan = [i < P or i in upper for i in range(N)]
    cost = llm_prefill_flops(text, tokens, plan)
    assert cost == prefill_cost(ModelShape(text), 0, tokens, layers=plan).llm
    assert cost <= budget * full * (1 + 1e-9)
    if P + k < N:
        assert llm_prefill_flops(text, tokens, _layers(P + k + 1, N)) > budget * full
    # The same budget as an absolute cap buys the same plan; a cap below the prefix is refused.
    cap = budget * full
    if cap > 1:
        assert budget_fractions([cap], 1, b_min, [full]).item() == pytest.approx(budget, rel=1e-12)
    if P > 0 and b_min * full * 0.999 > 1:
        with pytest.raises(ValueError, match="minimum feasible"):
            budget_fractions([b_min * full * 0.999], 1, b_min, [full])


def test_plan_cost_is_deterministic_and_finite(shape_7b):
    """Pricing a plan again gives the same numbers (the price caches rely on the model being pure)."""
    plan = _layers(20, 32)
    first = prefill_cost(shape_7b, IMAGE, TEXT, layers=plan)
    again = prefill_cost(shape_7b, IMAGE, TEXT, layers=list(plan))
    assert (first.total, first.elementwise, first.bytes) == (again.total, again.elementwise, again.bytes)
    assert math.isfinite(first.bytes.total) and first.bytes.total > 0


# --- elementwise FLOPs, pinned by hand for one layer --------------------------------------------

# A tiny Llama block: hidden 64, 4 heads of 16 (no GQA), intermediate 128. LLM-Viewer's counts per
# element: RMSNorm 7, softmax 5 per score, SiLU-gated activation 2, residual add 1.
TINY_LLAMA = TextShape(2, 64, 4, 4, 16, 128, 96)


# Catches: a cost-model elementwise term dropped or changed (a norm, the softmax, the activation, a
# residual add, or Qwen2's q/k/v bias adds).
def test_elementwise_flops_of_one_llama_layer_by_hand():
    # Prefill over 10 tokens:
    #   input RMSNorm        7 * 10 * 64      = 4480
    #   residual add (attn)      10 * 64      =  640
    #   softmax              5 * 10 * 10 * 4  = 2000   (tokens x context x heads)
    #   post-attn RMSNorm    7 * 10 * 64      = 4480
    #   SiLU(gate) * up      2 * 10 * 128     = 2560
    #   residual add (MLP)       10 * 64      =  640
    assert layer_flops(TINY_LLAMA, 10).elementwise == 4480 + 640 + 2000 + 4480 + 2560 + 640 == 14800
    # One decode step, one query against 11 keys: 448 + 64 + 5 * 11 * 4 + 448 + 2 * 128 + 64
    assert layer_flops(TINY_LLAMA, 1, 11).elementwise == 448 + 64 + 220 + 448 + 256 + 64 == 1500
    # One head unit of four and 40 neurons: the softmax over one head, the activation over 40 neurons;
    # the norms and residual adds run whenever any unit of their half runs.
    assert layer_flops(TINY_LLAMA, 10, head_units_on=1, mlp_neurons_on=40).elementwise == (
        4480 + 640 + 500 + 4480 + 800 + 640
    )
    assert layer_flops(TINY_LLAMA, 10, head_units_on=0, mlp_neurons_on=0).elementwise == 0
    # Qwen2 adds q, k and v biases: 10 tokens x (64 + 64 + 64) outputs
    qwen = TextShape(2, 64, 4, 4, 16, 128, 96, qkv_bias=True)
    assert layer_flops(qwen, 10).elementwise == 14800 + 1920
    # A phase: both layers plus the final RMSNorm (7 * 10 * 64), never inside `total`.
    cost = prefill_cost(ModelShape(TINY_LLAMA), 0, 10)
    assert cost.elementwise == 2 * 14800 + 4480 and cost.norm == 4480
    assert cost.total == cost.llm + cost.lm_head


def test_llama_config_object_reads_like_its_dict():
    config = LlamaConfig(num_hidden_layers=3, hidden_size=256, num_attention_heads=4, intermediate_size=512)
    assert ModelShape.from_config(config) == ModelShape.from_config(config.to_dict())


def test_cost_module_needs_no_torch():
    """The cost model (core.cost.shapes and .flops) is plain Python: it imports with torch and
    transformers unavailable (bug caught: a torch import creeping into the cost model or into
    the package's top level, which would make `adallava flops` need torch)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['transformers'] = None\n"
        "from adallava.core.cost.flops import prefill_cost\n"
        "from adallava.core.cost.shapes import ModelShape\n"
        f"print(prefill_cost(ModelShape.from_config({str(LLAVA_7B)!r}), 576, 110).total)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == prefill_cost(ModelShape.from_config(LLAVA_7B), 576, 110).total


def test_costs_add_their_parts_and_refuse_bad_token_counts():
    # Bug caught: Cost.__add__ dropping the operator groups that roofline timing reads, and negative
    # or zero token counts priced instead of refused with a message naming the argument.
    shape = ModelShape.from_config(LLAVA_7B)
    prefill = prefill_cost(shape, 576, 10)
    step = decode_step_cost(shape, context=600)
    total = prefill + step
    assert total.parts == prefill.parts + step.parts and len(total.parts) > len(prefill.parts) > 0
    assert total.total == prefill.total + step.total
    with pytest.raises(ValueError, match=r"context must be an integer >= 1"):
        decode_step_cost(shape, context=0)
    with pytest.raises(ValueError, match="new_tokens"):
        decode_cost(shape, past_tokens=10, new_tokens=-1)
    with pytest.raises(ValueError, match="past_tokens"):
        decode_cost(shape, past_tokens=-1, new_tokens=2)


def test_cost_summaries_name_their_fields():
    # Bug caught: a renamed key in Cost.to_dict, which results files and `adallava flops --json` read.
    summary = prefill_cost(ModelShape.from_config(LLAVA_7B), 576, 10).to_dict()
    assert {"vision", "vision_tower", "projector", "llm", "lm_head", "total", "dtype_bytes"} <= set(summary)


@pytest.mark.parametrize("family,bias", [("llama", 0), ("qwen2", 64 + 2 * 32)])
def test_attention_weight_bytes_by_hand(family, bias):
    # Bug caught: Qwen2's q/k/v biases dropped from (or subtracted from) the weights a layer reads.
    # h = 64, q = 4 heads x 16 = 64, kv = 2 x 16 = 32: q/k/v/o matrices, the input norm, the biases.
    from adallava.testing import tiny_llava_config

    shape = ModelShape.from_config(tiny_llava_config(text_model=family, num_layers=2, num_kv_heads=2))
    parts = [p for p in prefill_cost(shape, 0, 10).parts if p.name == "attn_proj"]
    expected = 2 * (64 * (64 + 2 * 32) + 64 * 64 + 64 + bias)  # fp16 bytes
    assert [p.bytes.weights for p in parts] == [expected, expected]


def test_vision_projector_and_llm_edges_of_llava_7b_by_hand():
    # Bug caught: a wrong term in the patch embedding, the projector (bias, GELU, the activations it
    # reads and writes) or the LLM's token embedding and final norm, in FLOPs or in bytes (the
    # roofline reads the bytes; the tests before pinned only the decoder layers).
    # LLaVA-1.5-7B, one image: CLIP ViT-L/14 at 336 (h 1024, 576 patches + CLS = 577 positions,
    # patch_in = 3 * 14 * 14 = 588), projector 1024 -> 4096 -> 4096 with biases, 576 + 10 tokens
    # entering the LLM (h 4096), fp16 (2 bytes).
    parts = {p.name: p for p in prefill_cost(ModelShape.from_config(LLAVA_7B), 576, 10).parts}
    embed = 2 * 576 * 588 * 1024  # the stride-14 convolution as a matmul
    embed_elementwise = 577 * 1024 + 7 * 577 * 1024  # + position embedding, CLIP's pre-layernorm
    assert parts["vision.embed"].flops == embed + embed_elementwise == 698_359_808
    assert parts["vision.embed"].bytes == Bytes((588 + 577) * 1024 * 2, (576 * 588 + 577 * 1024) * 2, 0)
    projector = 2 * 576 * (1024 * 4096 + 4096 * 4096)
    projector_elementwise = 2 * 576 * 4096 + 576 * (4096 + 4096)  # GELU, the two biases
    assert parts["projector"].flops == projector + projector_elementwise == 24_168_628_224
    assert parts["projector"].bytes == Bytes(
        (1024 * 4096 + 4096 * 4096) * 2, 576 * (1024 + 3 * 4096 + 4096) * 2, 0
    )
    tokens = 576 + 10
    assert parts["embed_tokens"].bytes == Bytes(0, 2 * tokens * 4096 * 2, 0)  # read ids' rows, write
    assert parts["norm"].flops == 7 * tokens * 4096
    assert parts["norm"].bytes == Bytes(4096 * 2, 2 * tokens * 4096 * 2, 0)
