"""AdaLlava: a Hugging Face Llava whose upper decoder layers run, per request, only as its scheduler
picks: the adaptive decoder (`adallava.engine.decoder`) with Llava's vision tower and projector in
front of it. Checkpoints are a plain HF Llava folder plus two adaptive files, so
`LlavaForConditionalGeneration.from_pretrained` still loads the base model from them.
"""

from __future__ import annotations

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from adallava.engine import hf_compat
from adallava.engine.decoder import ADAPTIVE_CONFIG_FILE, ADAPTIVE_WEIGHTS_FILE, AdaptiveDecoder
from adallava.engine.lean.vision import lean_image_features
from adallava.engine.outputs import AdaGenerateOutput, AdaLlavaOutput
from adallava.engine.passes import Embedded
from adallava.engine.tokens.selection import select_image_tokens, splice_image_tokens

__all__ = ["ADAPTIVE_CONFIG_FILE", "ADAPTIVE_WEIGHTS_FILE", "AdaGenerateOutput", "AdaLlava", "AdaLlavaOutput"]


class AdaLlava(AdaptiveDecoder):
    """The adaptive decoder on `LlavaForConditionalGeneration` (vision tower + projector + any LM)."""

    config_class = LlavaConfig

    @classmethod
    def _new_base(cls, config):
        return LlavaForConditionalGeneration(config)

    @classmethod
    def _load_base(cls, directory, **kwargs):
        return LlavaForConditionalGeneration.from_pretrained(directory, **kwargs)

    @classmethod
    def _check_base(cls, base) -> None:
        if not isinstance(base, LlavaForConditionalGeneration):
            raise TypeError(
                f"{cls.__name__}.from_base expects a LlavaForConditionalGeneration, got {type(base).__name__}"
            )

    @property
    def llava(self) -> LlavaForConditionalGeneration:
        """The wrapped Hugging Face Llava (shared, not copied)."""
        return self.base

    @property
    def text_model(self):
        return self.base.model.language_model

    def selects_tokens(self, pixel_values, past_length: int) -> bool:
        return self.adaptive.token_selection != "none" and pixel_values is not None and past_length == 0

    def image_token_counts(self, input_ids, real: torch.Tensor, with_vision: bool) -> torch.Tensor:
        """Image placeholders per row (for pricing the vision tower and projector). long [B]."""
        if input_ids is not None:
            return (input_ids == self.config.image_token_id).sum(-1).cpu()
        # embeddings given: one image per row when pixels came with them
        return torch.full_like(real, self.shape.image_tokens_per_image if with_vision else 0)

    def embed(self, input_ids, pixel_values, inputs_embeds, attention_mask, labels, past_length,
              lean: bool = False) -> Embedded:  # fmt: skip
        """Token embeddings with image features scattered into the image-token slots, as HF Llava
        does; with token selection (PruMerge), each row's selected visual tokens instead, rows
        re-laid out left-padded."""
        if self.selects_tokens(pixel_values, past_length):
            return self._embed_selected(input_ids, pixel_values, inputs_embeds, attention_mask, labels)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        llava_model = self.base.model
        if inputs_embeds is None:
            inputs_embeds = llava_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if lean:
                features = lean_image_features(llava_model, self.config, pixel_values)
            else:
                features = hf_compat.image_features(llava_model, pixel_values)
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)  # [images * tokens, D]
            slots = hf_compat.image_slots(llava_model, input_ids, inputs_embeds, features)
            inputs_embeds = inputs_embeds.masked_scatter(slots, features)
        return Embedded(inputs_embeds, attention_mask, labels, None)

    def _embed_selected(self, input_ids, pixel_values, inputs_embeds, attention_mask, labels) -> Embedded:
        if input_ids is None:
            raise ValueError("token selection needs input_ids (to find the image placeholders)")
        if inputs_embeds is None:
            inputs_embeds = self.base.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        images = select_image_tokens(self.base.model, pixel_values, self.adaptive.token_selection)
        embeds, mask, labels, counts = splice_image_tokens(
            inputs_embeds, input_ids, attention_mask, labels, images, self.config.image_token_id
        )
        return Embedded(embeds, mask, labels, counts.cpu(), relaid=True)
