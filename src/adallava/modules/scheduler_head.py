"""The scheduler head: the linear map from the latency token's hidden state at layer P to one
logit per switch (paper Sec. 3)."""

from __future__ import annotations

import torch
from torch import nn


class SchedulerHead(nn.Module):
    """hidden state of the latency token at the input of layer P -> one logit per switch."""

    def __init__(self, hidden_size: int, num_switches: int):
        super().__init__()
        self.head = nn.Linear(hidden_size, num_switches)

    def forward(self, latency_hidden: torch.Tensor) -> torch.Tensor:
        """[B, hidden] -> float32 logits [B, num_switches]."""
        return self.head(latency_hidden.to(self.head.weight.dtype)).float()


# ---- units of unequal cost (head switches) ------------------------------------------------------


