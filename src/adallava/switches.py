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

from adallava import hf_compat


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


def _rows(value, index: torch.Tensor, batch: int):
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
        mask = _rows(mask, rows, batch)
        cos, sin = _rows(cos, rows, batch), _rows(sin, rows, batch)
        position_ids = _rows(position_ids, rows, batch)
        hidden = hidden.index_select(0, rows)
    return layer(
        hidden,
        attention_mask=mask,
        position_embeddings=(cos, sin),
        position_ids=position_ids,
        use_cache=inputs.use_cache,
        **hf_compat.cache_kwargs(inputs.past_key_values),
    )


def run_layer_skipping(
    layer: nn.Module, hidden: torch.Tensor, layer_index: int, inputs: LayerInputs, active: torch.Tensor
) -> torch.Tensor:
    """Inference: rows with active[b] False skip the layer (identity); its work is not computed."""
    if bool(active.all()):
        return call_layer(layer, hidden, layer_index, inputs)
    rows = active.nonzero().flatten()  # [R]
    if rows.numel() == 0:
        return hidden
    out = call_layer(layer, hidden, layer_index, inputs, rows)  # [R, T, D]
    return hidden.index_copy(0, rows, out)


def run_layer_gated(
    layer: nn.Module, hidden: torch.Tensor, layer_index: int, inputs: LayerInputs, gate: torch.Tensor
) -> torch.Tensor:
    """Training: h + s * (layer(h) - h) with s in {0, 1} per row carrying straight-through gradients,
    so an off layer is exactly the identity on the residual stream."""
    out = call_layer(layer, hidden, layer_index, inputs)
    gate = gate.to(hidden.dtype)[:, None, None]  # [B, 1, 1]
    return hidden + gate * (out - hidden)


class CacheSlots:
    """KV-cache slots for row groups of head-switched layers.

    Rows of one layer that run different head units cannot share one cache tensor (their numbers of
    KV heads differ), so each (layer, plan group) gets a slot of its own beyond the model's N layers.
    Slots are handed out in a fixed order (layers in order, groups in sorted mask order), and the
    plan is fixed after prefill, so every decoding step finds its rows' entries in the same slot.
    """

    def __init__(self, cache, num_layers: int):
        self.cache, self.next = cache, num_layers

    def take(self, like_layer: int) -> int:
        index, self.next = self.next, self.next + 1
        if self.cache is not None:
            # A fresh slot of the same kind as the layer's own (e.g. a sliding window). The layer's own
            # slot is never written under head switches, so a copy of it is empty.
            hf_compat.add_cache_slot(self.cache, index, like_layer)
        return index


def run_layer_head_plan(layer: nn.Module, hidden: torch.Tensor, layer_index: int, inputs: LayerInputs,
                        heads: torch.Tensor, mlp: torch.Tensor, slices, geometry, slots: CacheSlots
                        ) -> torch.Tensor:  # fmt: skip
    """Inference under head/neuron switches: rows are grouped by their (heads, MLP groups) plan for
    this layer; each group runs a layer whose weights were sliced to its plan (built once, cached),
    on its rows only. heads: bool [B, H]; mlp: bool [B, G]."""
    masks = torch.cat([heads, mlp], dim=-1)  # [B, H + G]
    groups, assignment = torch.unique(masks.cpu(), dim=0, return_inverse=True)  # sorted: a fixed order
    out = hidden
    for group, mask in enumerate(groups):
        if not bool(mask.any()):
            continue  # everything off: the layer is an identity for these rows
        rows = (assignment == group).nonzero().flatten().to(hidden.device)  # [R]
        group_heads, group_mlp = mask[: heads.shape[1]], mask[heads.shape[1] :]
        sliced = slices.get(layer_index, layer, geometry, group_heads, group_mlp)
        batch = hidden.shape[0]
        cos, sin = inputs.position_embeddings
        result = sliced(
            hidden.index_select(0, rows),
            attention_mask=_rows(inputs.mask_for(layer_index), rows, batch),
            position_embeddings=(_rows(cos, rows, batch), _rows(sin, rows, batch)),
            position_ids=_rows(inputs.position_ids, rows, batch),
            past_key_values=inputs.past_key_values,
            use_cache=inputs.use_cache,
            cache_index=slots.take(layer_index) if bool(group_heads.any()) else None,
        )
        out = out.index_copy(0, rows, result)
    return out
