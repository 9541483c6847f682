"""Head and neuron switches (AdaLLaVA-H): rows run a layer sliced to their head units and MLP
groups."""

from __future__ import annotations

import torch
from torch import nn

from adallava.engine.cache_slots import CacheSlots
from adallava.engine.stack import LayerInputs, select_rows


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
            attention_mask=select_rows(inputs.mask_for(layer_index), rows, batch),
            position_embeddings=(select_rows(cos, rows, batch), select_rows(sin, rows, batch)),
            position_ids=select_rows(inputs.position_ids, rows, batch),
            past_key_values=inputs.past_key_values,
            use_cache=inputs.use_cache,
            cache_index=slots.take(layer_index) if bool(group_heads.any()) else None,
        )
        out = out.index_copy(0, rows, result)
    return out
