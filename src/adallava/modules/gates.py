"""Training under head switches: per-row gates on each head unit's and MLP group's output."""

from __future__ import annotations

import torch
from torch import nn

from adallava.core.geometry import UnitGeometry


class UnitGates:
    """Training: multiply each head unit's output (the input of o_proj) and each MLP group's neurons
    (the input of down_proj) by per-row switches, via forward pre-hooks on those projections.

    Use as a context manager around the forward pass; `set(layer_index, heads [B, H], mlp [B, G])`
    installs the switch values (floats carrying straight-through gradients) for one layer.
    """

    def __init__(self, layers: nn.ModuleList, geometry: UnitGeometry):
        self.layers, self.geometry = layers, geometry
        self._values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def set(self, layer_index: int, heads: torch.Tensor, mlp: torch.Tensor) -> None:
        self._values[layer_index] = (heads, mlp)

    def __enter__(self) -> UnitGates:
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.self_attn.o_proj.register_forward_pre_hook(self._gate(index, 0)))
            self._handles.append(layer.mlp.down_proj.register_forward_pre_hook(self._gate(index, 1)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._values.clear()

    def _gate(self, layer_index: int, part: int):
        expand = self.geometry.head_channel_mask if part == 0 else self.geometry.neuron_mask

        def hook(module, args):
            if layer_index not in self._values:
                return None
            switches = self._values[layer_index][part]  # [B, H] or [B, G], floats
            (x,) = args  # [B, T, channels]
            return (x * expand(switches).to(x.dtype)[:, None, :],)

        return hook
