"""Head and neuron switches (AdaLLaVA-H): rows run a layer sliced to their head units and MLP
groups."""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from adallava.core.geometry import geometry_of
from adallava.core.planning import HeadPlanner
from adallava.engine.cache_slots import CacheSlots
from adallava.engine.stack import LayerInputs, call_layer, select_rows
from adallava.engine.switches.base import StackRun, SwitchKind
from adallava.engine.switches.layer import run_layer_skipping


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


class HeadSwitches(SwitchKind):
    """AdaLLaVA-H: per upper layer, one switch per head unit (a KV head and its query heads) and one
    per MLP neuron group; a budget unit is `rank` head units, as the official checkpoints count."""

    name = "head"
    label = "AdaLLaVA-H (head switches)"
    unit_settings = ("rank", "mlp_groups")

    def __init__(self, adaptive, text_config, shape):
        super().__init__(adaptive, text_config, shape)
        geometry, head_units, rank = self.geometry, self.geometry.head_units, adaptive.rank
        if head_units % rank:
            raise ValueError(
                f"AdaptiveConfig.rank must divide the {head_units} head units per layer, got {rank}"
            )
        if adaptive.selection == "official" and geometry.mlp_groups != head_units:
            raise ValueError(
                f"the official head selection needs mlp_groups == head units ({head_units}), "
                f"got {geometry.mlp_groups}"
            )

    @classmethod
    def unit_geometry(cls, text_config, adaptive):
        return geometry_of(text_config, adaptive.mlp_groups)

    @property
    def total_units(self) -> int:
        return self.num_layers * self.geometry.head_units // self.adaptive.rank

    @property
    def prefix_units(self) -> int:
        return self.num_prefix * self.geometry.head_units // self.adaptive.rank

    @property
    def num_switches(self) -> int:
        return (self.num_layers - self.num_prefix) * (self.geometry.head_units + self.geometry.mlp_groups)

    @cached_property
    def planner(self) -> HeadPlanner:
        return HeadPlanner(self.adaptive, self.num_layers, self.num_prefix, self.geometry, self.shape)

    @classmethod
    def describe(cls, adaptive) -> str:
        return f"AdaLLaVA-H (head switches, rank {adaptive.rank})"

    @classmethod
    def run_layer(cls, layer, index, hidden, inputs, plan, gates, run: StackRun) -> torch.Tensor:
        if gates is not None:  # training: each unit's output scaled by its straight-through switch
            upper = index - run.num_prefix
            run.unit_gates.set(index, gates[0][:, upper], gates[1][:, upper])
            return call_layer(layer, hidden, index, inputs)
        if bool(plan.heads[:, index].all() and plan.mlp[:, index].all()):  # every unit on: a layer plan
            return run_layer_skipping(layer, hidden, index, inputs, plan.layers[:, index])
        on = plan.layers[:, index, None]  # a layer switched off runs none of its units
        heads, mlp = plan.heads[:, index] & on, plan.mlp[:, index] & on
        if run.unit_gates is not None:  # the masked fallback: full compute, off units zeroed
            run.unit_gates.set(index, heads.to(hidden.dtype), mlp.to(hidden.dtype))
            return call_layer(layer, hidden, index, inputs)
        return run_layer_head_plan(
            layer, hidden, index, inputs, heads, mlp, run.slices, run.geometry, run.slots
        )

    @classmethod
    def needs_unit_gates(cls, plan, gates, run: StackRun) -> bool:
        return gates is not None or run.masked
