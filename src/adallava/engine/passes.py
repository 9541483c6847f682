"""The tensors of one forward call of the adaptive decoder, as its stages fill them in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adallava.core.plan import ExecutionPlan


@dataclass
class Embedded:
    """Token embeddings of one call and what the input layout says about images."""

    hidden: torch.Tensor  # [B, T, D]
    attention_mask: torch.Tensor | None  # [B, past + T] (None: all real)
    labels: torch.Tensor | None  # [B, T]
    image_tokens: torch.Tensor | None  # long [B] visual tokens per row (None: count placeholders)
    relaid: bool = False  # rows were re-laid out (token selection): positions follow the new mask


@dataclass
class Pass:
    """The tensors of one forward call as its stages fill them in."""

    hidden: torch.Tensor  # [B, T', D]
    attention_mask: torch.Tensor  # [B, past + T']
    position_ids: torch.Tensor  # [B, T']
    labels: torch.Tensor | None
    image_tokens: torch.Tensor  # long [B]
    cache: object | None
    past_length: int
    with_vision: bool
    relaid: bool
    fractions: torch.Tensor | None = None  # float64 [B] budget fractions
    units: torch.Tensor | None = None  # long [B] budget units
    latency_positions: torch.Tensor | None = None  # long [B]
    plan: ExecutionPlan | None = None
    gates: object | None = None  # training switch values
    scheduler_logits: torch.Tensor | None = None
    latency_loss: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.hidden.shape[0]
