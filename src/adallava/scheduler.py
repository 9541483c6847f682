"""The scheduler: a linear head on the latency token's hidden state, and plan selection.

Selection is pure tensor math on logits, kept apart from the module so that it is easy to test:
- `greedy_mask`: inference, the k best switches by logit (paper Sec. 3.3, s* = argmax p(s|.)).
- `gumbel_topk_mask`: seeded sampling without replacement (Gumbel top-k of the Plackett-Luce law).
- `sample_mask_straight_through`: training, k sequential masked Gumbel-softmax picks with a
  straight-through estimator, so every sampled plan keeps the budget and gradients reach the logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_EPS = 1e-10


class SchedulerHead(nn.Module):
    """hidden state of the latency token at the input of layer P -> one logit per switch."""

    def __init__(self, hidden_size: int, num_switches: int):
        super().__init__()
        self.head = nn.Linear(hidden_size, num_switches)

    def forward(self, latency_hidden: torch.Tensor) -> torch.Tensor:
        """[B, hidden] -> float32 logits [B, num_switches]."""
        return self.head(latency_hidden.to(self.head.weight.dtype)).float()


def gumbel_noise(
    shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    uniform = torch.rand(shape, device=device, generator=generator).clamp(_EPS, 1 - _EPS)
    # Clamp -log(u) as a whole: clamping u alone still lets log(0) through at float precision.
    return -torch.log((-torch.log(uniform)).clamp_min(_EPS))


def _rank_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """True for the k[b] highest scores of each row. scores [B, S], k long [B] -> bool [B, S]."""
    order = scores.argsort(dim=-1, descending=True, stable=True)  # [B, S]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < k[:, None]


def greedy_mask(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The most probable plan under a budget of k switches: the top-k logits. -> bool [B, S]."""
    return _rank_mask(logits, k)


def gumbel_topk_mask(
    logits: torch.Tensor, k: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A sampled plan: k switches drawn without replacement with probabilities softmax(logits / tau)."""
    noise = gumbel_noise(logits.shape, logits.device, generator)
    return _rank_mask(logits / tau + noise, k)


def sample_mask_straight_through(
    logits: torch.Tensor, k: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training-time plan: k[b] sequential picks without replacement, each a hard Gumbel-softmax.

    Returns float [B, S] whose values are exactly 0/1 in the forward pass and whose gradient is that
    of the soft picks (straight-through), as in the paper's code (tau = 5).
    """
    batch, switches = logits.shape
    taken = torch.zeros(batch, switches, dtype=torch.bool, device=logits.device)
    mask = torch.zeros_like(logits)
    max_k = int(k.max().item()) if k.numel() else 0
    for step in range(max_k):
        active = (step < k).to(logits.dtype)[:, None]  # [B, 1]: rows that still pick
        scores = (logits + gumbel_noise(logits.shape, logits.device, generator)) / tau
        soft = F.softmax(scores.masked_fill(taken, float("-inf")), dim=-1)  # [B, S]
        hard = F.one_hot(soft.argmax(dim=-1), switches).to(logits.dtype)
        mask = mask + active * (hard - soft.detach() + soft)
        taken = taken | (hard.bool() & active.bool())
    return mask
