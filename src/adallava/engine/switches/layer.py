"""Layer switches (AdaLLaVA-L): a row runs a decoder layer whole or not at all."""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from adallava.core.planning import LayerPlanner
from adallava.engine.stack import LayerInputs, call_layer
from adallava.engine.switches.base import StackRun, SwitchKind


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


class LayerSwitches(SwitchKind):
    """AdaLLaVA-L: one switch per upper layer; a budget unit is a layer."""

    name = "layer"
    label = "AdaLLaVA-L (layer switches)"

    @property
    def total_units(self) -> int:
        return self.num_layers

    @property
    def prefix_units(self) -> int:
        return self.num_prefix

    @property
    def num_switches(self) -> int:
        return self.num_layers - self.num_prefix

    @cached_property
    def planner(self) -> LayerPlanner:
        return LayerPlanner(self.adaptive, self.num_layers, self.num_prefix)

    @classmethod
    def run_layer(cls, layer, index, hidden, inputs, plan, gates, run: StackRun) -> torch.Tensor:
        if gates is not None:  # training: off layers are identities, gradients flow through the gates
            return run_layer_gated(layer, hidden, index, inputs, gates[:, index - run.num_prefix])
        return run_layer_skipping(layer, hidden, index, inputs, plan.layers[:, index])
