"""AdaLLM: the adaptive decoder on a text-only causal LM (Llama, Qwen2, Mistral).

Everything of the adaptive engine applies (budgets, plans, layer and head switches, generation,
costs, save/load); there is no vision tower, so `pixel_values` is refused. Checkpoints are a plain HF
causal LM folder plus the two adaptive files, so `AutoModelForCausalLM.from_pretrained` still loads
them.
"""

from __future__ import annotations

from transformers import (
    AutoModelForCausalLM,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
)

from adallava.engine.decoder import AdaptiveDecoder


class AdaLLM(AdaptiveDecoder):
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
    def text_model(self):
        return self.base.model
