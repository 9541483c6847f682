"""AdaLLM: the same adaptive engine on a text-only causal LM (Llama, Qwen2, Mistral).

Everything of AdaLlava applies (budgets, plans, layer and head switches, generation, costs,
save/load); there is no vision tower, so `pixel_values` is refused. Checkpoints are a plain HF causal
LM folder plus the two adaptive files, so `AutoModelForCausalLM.from_pretrained` still loads them.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
)

from adallava.engine.llava import AdaLlava


class AdaLLM(AdaLlava):
    config_class = PretrainedConfig

    @classmethod
    def _new_base(cls, config):
        return AutoModelForCausalLM.from_config(config)

    @classmethod
    def _load_base(cls, directory, **kwargs):
        return AutoModelForCausalLM.from_pretrained(directory, **kwargs)

    @classmethod
    def _check_base(cls, base) -> None:
        decoder = getattr(base, "model", None)
        if (
            not isinstance(base, PreTrainedModel)
            or isinstance(base, LlavaForConditionalGeneration)
            or not hasattr(base, "lm_head")
            or not hasattr(decoder, "layers")
        ):
            raise TypeError(
                f"AdaLLM.from_base expects a text-only causal LM (e.g. LlamaForCausalLM, Qwen2ForCausalLM, "
                f"MistralForCausalLM), got {type(base).__name__}; for Llava models use AdaLlava"
            )

    @property
    def llava(self):
        raise AttributeError("AdaLLM wraps a text-only causal LM; use `.base`")

    @property
    def text_model(self):
        return self.base.model

    def _image_token_counts(self, input_ids, real: torch.Tensor, with_vision: bool) -> torch.Tensor:
        return torch.zeros_like(real)

    def _embed(self, input_ids, pixel_values, inputs_embeds) -> torch.Tensor:
        if pixel_values is not None:
            raise ValueError("AdaLLM is text-only and takes no pixel_values; use AdaLlava for Llava models")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        return self.base.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
