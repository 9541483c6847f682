"""Parity: the analytic cost model vs torch's FlopCounterMode on Hugging Face's own models.

"A plan" here is HF's model with only the plan's layers: the decoder's `layers` ModuleList is
replaced by the kept layers, so what is counted is exactly what a skipping implementation runs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    LlamaConfig,
    LlamaModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

from adallava.core.cost.flops import decode_step_cost, layer_flops, prefill_cost
from adallava.core.cost.shapes import ModelShape
from adallava.engine import hf_compat
from adallava.testing import tiny_inputs, tiny_llava_config

TEXT_TOKENS = 7
PLANS = [
    [True] * 8,
    [True] * 4 + [False] * 4,  # prefix only
    [True, True, True, True, False, True, False, True],
    [False, True, False, False, True, True, False, False],
]


def _randn(*shape: int) -> torch.Tensor:
    """Seeded inputs (FLOP counts do not depend on values, but runs stay reproducible)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1)


def _count(fn, *args, **kwargs) -> tuple[int, dict]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), by_module, out


def _with_layers(model: LlavaForConditionalGeneration, kept: list[int]) -> LlavaForConditionalGeneration:
    """A copy of `model` whose decoder keeps only layers `kept` (re-indexed for the KV cache)."""
    model = copy.deepcopy(model)
    lm = model.model.language_model
    lm.layers = nn.ModuleList([lm.layers[i] for i in kept])
    lm.config.num_hidden_layers = len(kept)
    if getattr(lm.config, "layer_types", None) is not None:
        lm.config.layer_types = [lm.config.layer_types[i] for i in kept]
    for j, layer in enumerate(lm.layers):
        layer.self_attn.layer_idx = j
    return model


def _llava(text_model: str, num_kv_heads: int | None) -> LlavaForConditionalGeneration:
    config = tiny_llava_config(text_model=text_model, num_kv_heads=num_kv_heads)
    config.vision_feature_layer = -2  # as LLaVA-1.5: HF still runs every layer of the tower
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


MODELS = {
    "clip+llama": lambda: _llava("llama", None),
    "clip+llama-gqa": lambda: _llava("llama", 2),
    "clip+qwen2-gqa": lambda: _llava("qwen2", 2),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def test_vision_tower_and_projector_match(model):
    config = model.config
    shape = ModelShape.from_config(config)
    pixels = tiny_inputs(config, [TEXT_TOKENS])["pixel_values"]
    total, by_module, _ = _count(
        model.model.get_image_features,
        pixel_values=pixels,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    )
    cost = prefill_cost(shape, shape.image_tokens_per_image, TEXT_TOKENS)
    assert _rel(cost.vision, total) < 0.01
    assert _rel(cost.vision_tower, by_module["CLIPVisionModel"]) < 0.01
    assert _rel(cost.projector, by_module["LlavaMultiModalProjector"]) < 0.01


@pytest.mark.parametrize("plan", PLANS, ids=["full", "prefix", "mixed", "sparse"])
def test_decoder_stack_matches_for_layer_plans(model, plan):
    shape = ModelShape.from_config(model.config)
    image_tokens = shape.image_tokens_per_image
    sub = _with_layers(model, [i for i, on in enumerate(plan) if on])
    tokens = image_tokens + TEXT_TOKENS
    embeds = _randn(1, tokens, shape.text.hidden_size)
    counted, _, out = _count(sub.model.language_model, inputs_embeds=embeds, use_cache=False)
    cost = prefill_cost(shape, image_tokens, TEXT_TOKENS, layers=plan)
    assert cost.llm == pytest.approx(counted, rel=0.01)
    assert cost.layers_run == sum(plan)
    lm_head, _, _ = _count(sub.lm_head, out.last_hidden_state)
    assert cost.lm_head == pytest.approx(lm_head, rel=0.01)


def test_whole_forward_matches_total(model):
    """HF's full forward (image merge, decoder, lm_head over all positions) = vision + llm + lm_head."""
    shape = ModelShape.from_config(model.config)
    inputs = tiny_inputs(model.config, [TEXT_TOKENS])
    counted, _, _ = _count(model, **inputs)
    cost = prefill_cost(shape, shape.image_tokens_per_image, TEXT_TOKENS)
    assert cost.total == pytest.approx(counted, rel=0.01)


@pytest.mark.parametrize("plan", [PLANS[0], PLANS[2]], ids=["full", "mixed"])
def test_decode_step_with_kv_cache_matches(model, plan):
    shape = ModelShape.from_config(model.config)
    sub = _with_layers(model, [i for i, on in enumerate(plan) if on])
    lm = sub.model.language_model
    past = 19
    with torch.no_grad():
        out = lm(inputs_embeds=_randn(1, past, shape.text.hidden_size), use_cache=True)
    step = _randn(1, 1, shape.text.hidden_size)
    counted, _, _ = _count(lm, inputs_embeds=step, **hf_compat.cache_kwargs(hf_compat.output_cache(out)))
    cost = decode_step_cost(shape, context=past + 1, layers=plan)
    assert cost.llm == pytest.approx(counted, rel=0.01)
    assert cost.vision == 0


@pytest.mark.parametrize("use_head,strategy", [(True, "full"), (False, "default")])
def test_siglip_tower_with_feature_layers_matches(use_head, strategy):
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        vision_use_head=use_head,
    )
    text = Qwen2Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=[-1, -3],
        vision_feature_select_strategy=strategy,
        image_token_id=3,
    )
    for sub in (config, config.text_config, config.vision_config):
        sub._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    shape = ModelShape.from_config(config)
    _, by_module, out = _count(
        model.model.get_image_features,
        pixel_values=_randn(2, 3, 32, 32),
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=strategy,
    )
    assert out.pooler_output[0].shape[0] == shape.image_tokens_per_image  # 16 (full) or 15 (default)
    cost = prefill_cost(shape, 2 * shape.image_tokens_per_image, 3, num_images=2)
    assert cost.vision_tower == pytest.approx(by_module["SiglipVisionModel"], rel=0.01)
    assert cost.projector == pytest.approx(by_module["LlavaMultiModalProjector"], rel=0.01)


@pytest.mark.parametrize("units,neurons", [(1, 40), (2, 128), (4, 1)])
def test_sliced_layer_matches_a_smaller_hf_layer(units, neurons):
    """Head units / neurons switched off = a layer with fewer KV groups and a narrower MLP.

    (HF requires hidden_size % num_heads == 0, hence unit counts that divide 4.)
    """
    full = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_attention_heads=8, num_key_value_heads=4, head_dim=16
    )
    sliced = LlamaConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=neurons,
        num_hidden_layers=1,
        num_attention_heads=units * 2,
        num_key_value_heads=units,
        head_dim=16,
    )
    sliced._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LlamaModel(sliced).eval()
    counted, _, _ = _count(model, inputs_embeds=_randn(1, 11, 64), use_cache=False)
    text = ModelShape.from_config(full).text
    assert layer_flops(text, 11, head_units_on=units, mlp_neurons_on=neurons).total == pytest.approx(
        counted, rel=0.01
    )
