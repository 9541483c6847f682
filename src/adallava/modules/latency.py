"""The latency encoder (budget -> one token embedding) and where that token goes in a sequence.

Encoding as in the official AdaLLaVA checkpoints (DESIGN.md): the budget is first quantised to the
number n of switchable units it buys; q = n / (Nu - Pu + 1); x = 2 pi q; features are sin and cos of
x at F frequencies f_i = 1 / 10000^(i / F); then LayerNorm -> Linear -> GELU -> Linear.
"""

from __future__ import annotations

import math

import torch
from torch import nn

IGNORE_INDEX = -100


def latency_features(
    units: torch.Tensor, total_units: int, prefix_units: int, frequencies: int
) -> torch.Tensor:
    """Sinusoidal features of the unit count a budget buys. units: long [B] -> float32 [B, 2F]."""
    q = units.float() / (total_units - prefix_units + 1)  # [B], in [0, 1)
    x = 2 * math.pi * q
    exponents = torch.arange(frequencies, device=units.device, dtype=torch.float32) / frequencies
    freqs = 1.0 / (10000.0**exponents)  # [F]
    angles = x[:, None] * freqs[None, :]  # [B, F]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # [B, 2F]


class LatencyEncoder(nn.Module):
    """Budget (as a unit count) -> a latency token of the LLM's hidden size."""

    def __init__(self, hidden_size: int, frequencies: int = 128):
        super().__init__()
        self.frequencies = frequencies
        features = 2 * frequencies
        # Indices 0..3 mirror the official `scheduler_up_proj.net` so weights convert one to one.
        self.net = nn.Sequential(
            nn.LayerNorm(features),
            nn.Linear(features, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, units: torch.Tensor, total_units: int, prefix_units: int) -> torch.Tensor:
        """units: long [B] -> latency tokens [B, hidden] (float32; the caller casts)."""
        features = latency_features(units, total_units, prefix_units, self.frequencies)
        weight_dtype = self.net[1].weight.dtype
        return self.net(features.to(weight_dtype)).float()


def latency_positions(attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Where each row's latency token goes: right after its prompt. [B, T] -> long [B].

    Without labels the prompt is every real token, so the token goes after the last one (before any
    right padding). With labels it goes after the last real position whose label is ignored, i.e.
    before the (last) answer, as the official code places it.
    """
    index = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # [T]
    real = attention_mask.bool()
    prompt = real if labels is None else real & (labels == IGNORE_INDEX)
    last = torch.where(prompt, index, torch.full_like(index, -1)).amax(dim=-1)  # [B]
    return last + 1


def insert_at(
    values: torch.Tensor, positions: torch.Tensor, fill: torch.Tensor | float | int
) -> torch.Tensor:
    """Insert one entry per row at `positions[b]` along dim 1, shifting later entries right.

    values: [B, T, ...]; positions: long [B] in [0, T]; fill: a scalar or [B, ...] per-row entries.
    Returns [B, T + 1, ...]. Vectorised gather, no per-row loop.
    """
    batch, length = values.shape[:2]
    new_index = torch.arange(length + 1, device=values.device)[None, :]  # [1, T+1]
    after = new_index > positions[:, None]  # [B, T+1]
    source = (new_index - after.long()).clamp(max=length - 1)  # [B, T+1]
    gather_index = source.view(batch, length + 1, *([1] * (values.dim() - 2))).expand(
        batch, length + 1, *values.shape[2:]
    )
    shifted = values.gather(1, gather_index)  # [B, T+1, ...]
    is_new = (new_index == positions[:, None]).view(batch, length + 1, *([1] * (values.dim() - 2)))
    fill = torch.as_tensor(fill, dtype=values.dtype, device=values.device)
    if fill.dim() > 0:
        fill = fill[:, None]  # [B, 1, ...]
    return torch.where(is_new, fill, shifted)


def insert_position_ids(position_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Position ids with the latency token inserted: it takes the previous token's position + 1 and
    every later token moves one further. [B, T] -> [B, T + 1]."""
    length = position_ids.shape[1]
    new_index = torch.arange(length + 1, device=position_ids.device)[None, :]  # [1, T+1]
    at_or_after = new_index >= positions[:, None]  # [B, T+1]
    source = (new_index - at_or_after.long()).clamp(min=0, max=length - 1)
    return position_ids.gather(1, source) + at_or_after.long()
