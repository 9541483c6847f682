"""Running Hugging Face decoder layers under per-row switches, without forking their code.

A layer is called exactly as the HF text model calls it; only the rows that run it are passed in.
Everything row-indexed (hidden states, masks, rotary tables, position ids) is sliced to those rows,
and the layer's KV cache then holds only their entries: the plan is fixed after prefill, so the same
rows, in the same order, reach that layer at every decoding step, and no row reads a cache it did not
write. Works for every family whose decoder layers take (hidden, attention_mask, position_embeddings,
position_ids, the KV cache, use_cache) -- Llama, Qwen2, Mistral in transformers 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adallava.engine import hf_compat


@dataclass
class LayerInputs:
    """What every decoder layer of one forward pass receives besides the hidden states."""

    masks: object  # a 4D mask, None, or {attention type: mask}
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # cos, sin: [B or 1, T, head_dim]
    position_ids: torch.Tensor  # [B or 1, T]
    past_key_values: object | None
    use_cache: bool
    layer_types: list[str] | None

    def mask_for(self, layer_index: int):
        if isinstance(self.masks, dict):
            return self.masks[self.layer_types[layer_index]]
        return self.masks


def prepare_layer_inputs(
    text_model: nn.Module,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    past_key_values,
    use_cache: bool,
) -> LayerInputs:
    """Masks and rotary tables as the HF text model builds them (one per attention type)."""
    config = text_model.config
    masks = hf_compat.causal_masks(config, hidden, attention_mask, past_key_values, position_ids)
    position_embeddings = text_model.rotary_emb(hidden, position_ids=position_ids)
    return LayerInputs(
        masks=masks,
        position_embeddings=position_embeddings,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        layer_types=getattr(config, "layer_types", None),
    )


def select_rows(value, index: torch.Tensor, batch: int):
    """Slice the batch dimension of a row-indexed tensor; broadcast (batch-1) tensors pass as they are."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value.index_select(0, index)
    return value


def call_layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    layer_index: int,
    inputs: LayerInputs,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run one HF decoder layer on all rows, or on the rows listed in `rows` (long [R])."""
    batch = hidden.shape[0]
    mask = inputs.mask_for(layer_index)
    cos, sin = inputs.position_embeddings
    position_ids = inputs.position_ids
    if rows is not None:
        mask = select_rows(mask, rows, batch)
        cos, sin = select_rows(cos, rows, batch), select_rows(sin, rows, batch)
        position_ids = select_rows(position_ids, rows, batch)
        hidden = hidden.index_select(0, rows)
    return layer(
        hidden,
        attention_mask=mask,
        position_embeddings=(cos, sin),
        position_ids=position_ids,
        use_cache=inputs.use_cache,
        **hf_compat.cache_kwargs(inputs.past_key_values),
    )
