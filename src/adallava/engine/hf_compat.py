"""The one seam between adallava and the internals of `transformers`.

Everything adallava needs from transformers beyond loading, calling and configuring models and
processors lives here: private names, generation and cache internals, masking utilities, the output
classes we subclass, the cache slot of an attention module. Each item says which transformers
behaviour it relies on and the releases it was checked against. The rest of the package imports only
public transformers API and this module, so a new release should need changes here and nowhere else.

Releases checked: 5.15.0 (the oldest allowed), 5.23.0, 5.24.0, 5.25.0; `tests/engine/test_hf_compat.py`
pins the behaviour relied on.
Why not older: before 5.15 `generate` hands `pixel_values` to every decoding step (HF Llava then
fails its image-token check), and before 5.6 the masking utilities need `cache_position`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect

import torch
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.generation import BaseStreamer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.masking_utils import create_masks_for_generate
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput, is_torchvision_available

__all__ = [
    "CACHE_NAME",
    "BaseStreamer",
    "GenerateOutput",
    "GenerativeModel",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "add_cache_slot",
    "attention_implementation",
    "attention_weights",
    "cache_kwargs",
    "cache_output",
    "generation_config",
    "generation_default",
    "causal_lm_loss",
    "causal_masks",
    "clip_image_processor_class",
    "image_features",
    "llava_image_processor_class",
    "new_cache",
    "output_cache",
    "resolve_cache",
    "set_attention_implementation",
    "set_cache_slot",
]

# ---- the name of the KV cache ------------------------------------------------------------------
# 5.24 renamed the KV cache from `past_key_values` to `cache` in every forward signature, in the
# masking utilities, in generate's model kwargs and in the output dataclasses (5.15-5.23:
# `past_key_values`; 5.24-5.25: `cache`, the old keyword deprecated until 5.40). Read off the output
# class that every causal LM returns, so the keyword and the field always agree.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_kwargs(cache) -> dict:
    """The KV cache as the keyword argument HF decoder layers, attention modules and models take."""
    return {CACHE_NAME: cache}


def resolve_cache(past_key_values, cache):
    """The cache handed to our `forward` under either name: users (and HF `generate`, which passes
    the installed name) may use `past_key_values` or `cache`. Both at once must be the same object."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError("give the KV cache as `cache` or as `past_key_values`, not two different ones")
    return cache if cache is not None else past_key_values


def output_cache(output):
    """The KV cache held by a HF model output (`.cache` from 5.24 on, `.past_key_values` before)."""
    return output.get(CACHE_NAME)


def cache_output(cls: type) -> type:
    """Use instead of `@dataclass` on a `ModelOutput` subclass that declares a `cache` field: the
    field is given the name the installed transformers reads (`CACHE_NAME`), since HF `generate`
    finds the cache of a step's output by that name (5.24+ `"cache" in outputs`; before,
    `past_key_values`), and 5.24's output metaclass rewrites a `past_key_values=` keyword to `cache`."""
    fields = []
    for name, kind in inspect.get_annotations(cls).items():
        default = cls.__dict__.get(name)
        fields.append((CACHE_NAME if name == "cache" else name, kind, dataclasses.field(default=default)))
    namespace = {"__doc__": cls.__doc__, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return dataclasses.make_dataclass(cls.__name__, fields, bases=cls.__bases__, namespace=namespace)


# Output classes we subclass (`ModelOutput` semantics: dict and attribute access, None fields left
# out; `GenerateDecoderOnlyOutput`: what `generate(return_dict_in_generate=True)` returns). 5.15-5.25.
ModelOutputBase = ModelOutput
GenerateOutput = GenerateDecoderOnlyOutput


# ---- cache internals ----------------------------------------------------------------------------
def new_cache(config) -> DynamicCache:
    """An empty dynamic KV cache whose layers follow `config` (sliding-window layers where the
    config has them). `DynamicCache(config=...)`: 5.15-5.25."""
    return DynamicCache(config=config)


def add_cache_slot(cache: DynamicCache, index: int, like_layer: int) -> None:
    """Make sure `cache` has a slot `index`, new slots being empty copies of `like_layer`'s kind.
    Relies on `DynamicCache.layers` (a list of per-layer caches, filled lazily on first update) and
    on `cache.update(k, v, layer_idx)` using that list's index: 5.15-5.25. The copied layer must still
    be empty (we never write a head-switched layer's own slot)."""
    while len(cache.layers) <= index:
        cache.layers.append(copy.deepcopy(cache.layers[like_layer]))


def set_cache_slot(attention: torch.nn.Module, index: int | None) -> None:
    """Point an HF attention module at another KV-cache slot: the modules write and read their
    cache through `cache.update(..., self.layer_idx)` (Llama, Qwen2, Mistral; 5.15-5.25)."""
    attention.layer_idx = index


def causal_masks(config, inputs_embeds, attention_mask, cache, position_ids):
    """The attention masks the HF text model would build for this step: a 4D mask, None (SDPA may
    use its own causal path), or {attention type: mask} for models with several layer types.
    `transformers.masking_utils.create_masks_for_generate`: 5.15-5.25 (its cache keyword renamed
    in 5.24)."""
    return create_masks_for_generate(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **cache_kwargs(cache),
    )


# ---- the model base class -----------------------------------------------------------------------
class GenerativeModel(PreTrainedModel, GenerationMixin):
    """Base class of the adaptive models: a `PreTrainedModel` that HF `generate` can drive.

    The private class attributes and methods below are what `PreTrainedModel` and `GenerationMixin`
    read (5.15-5.25): the attention implementations the wrapped layers support, weight
    initialisation (ours never re-draws weights: they come from the base model or a checkpoint), and
    the per-step update of generate's model kwargs, where subclasses get the public hook
    `continue_generation`.
    """

    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        pass

    def continue_generation(self, outputs, model_kwargs: dict) -> None:
        """Called after each generation step with its outputs, before HF updates `model_kwargs`."""

    def _update_model_kwargs_for_generation(
        self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1
    ):
        self.continue_generation(outputs, model_kwargs)
        return super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder, num_new_tokens
        )


def generation_config(model, config, kwargs: dict):
    """(the generation config, the kwargs it did not take) for a `generate` call, resolved as HF
    `generate` resolves it: call kwargs over `config` (or `model.generation_config`) over HF's global
    defaults. `GenerationMixin._prepare_generation_config`, 5.15-5.25."""
    return model._prepare_generation_config(config, **kwargs)


def generation_default(name: str):
    """HF's global default of a generation option (what an unset option means in `generate`):
    `GenerationConfig._get_default_generation_params`, 5.15-5.25."""
    return GenerationConfig._get_default_generation_params().get(name)


def causal_lm_loss(model: PreTrainedModel, logits, labels, vocab_size: int, **kwargs) -> torch.Tensor:
    """The model's own causal-LM loss (shifted cross-entropy, -100 ignored, `num_items_in_batch`
    honoured): `PreTrainedModel.loss_function`, 5.15-5.25."""
    return model.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)


# ---- vision side --------------------------------------------------------------------------------
def image_features(llava_model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features [images * tokens, D], as `LlavaModel.forward` computes them:
    `get_image_features(..., return_dict=True).pooler_output` is a list or a tensor of per-image
    features (5.15-5.25)."""
    features = llava_model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
    return torch.cat(list(features), dim=0)


def image_slots(llava_model, input_ids, inputs_embeds, features) -> torch.Tensor:
    """bool mask of the embedding slots the image features go to (checks the counts match):
    `LlavaModel.get_placeholder_mask`, 5.15-5.25."""
    return llava_model.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=features)


def clip_image_processor_class() -> type:
    """The CLIP image processor with the PIL backend where transformers has one (no torchvision
    needed and no fallback notice; `CLIPImageProcessorPil`, later 5.x), else the plain one."""
    try:
        from transformers.models.clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def llava_image_processor_class() -> type:
    """The Llava image processor: the torchvision backend when torchvision is importable, else the PIL
    one (same options); releases without a separate PIL class have one class for both."""
    import transformers

    pil = getattr(transformers, "LlavaImageProcessorPil", None)
    if pil is None or is_torchvision_available():
        return transformers.LlavaImageProcessor
    return pil


# ---- attention ----------------------------------------------------------------------------------
def attention_implementation(config) -> str:
    """The attention kernel a config selects ("eager", "sdpa", ...): `config._attn_implementation`."""
    return config._attn_implementation


def set_attention_implementation(config, implementation: str) -> None:
    """Select the attention kernel on a config (and its sub-configs) before a model is built from
    it: the private `_attn_implementation` that `PreTrainedModel.__init__` reads, 5.15-5.25."""
    for sub in (config, *(getattr(config, name, None) for name in ("text_config", "vision_config"))):
        if sub is not None:
            sub._attn_implementation = implementation


def attention_weights(output) -> torch.Tensor | None:
    """The weights [B, H, T, T] an HF attention module returned with eager attention: its forward
    returns (attn_output, attn_weights), 5.15-5.25."""
    return output[1]
