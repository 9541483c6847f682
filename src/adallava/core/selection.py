"""The scheduler: a linear head on the latency token's hidden state, and plan selection.

Selection is pure tensor math on logits, kept apart from the module so that it is easy to test:
- `greedy_mask`: inference, the k best switches by logit (paper Sec. 3.3, s* = argmax p(s|.)).
- `gumbel_topk_mask`: seeded sampling without replacement (Gumbel top-k of the Plackett-Luce law).
- `sample_mask_straight_through`: training, k sequential masked Gumbel-softmax picks with a
  straight-through estimator, so every sampled plan keeps the budget and gradients reach the logits.
- `fit_in_order` / `sample_fit_straight_through`: the same for units of unequal cost (heads and MLP
  groups), taken in scheduler order while they fit a FLOPs capacity.
- `official_head_selection`: the official AdaLLaVA-H rule, for converted checkpoints.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from adallava.core.budget import RELATIVE_TOLERANCE

_EPS = 1e-10


def gumbel_noise(
    shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    uniform = torch.rand(shape, device=device, generator=generator).clamp(_EPS, 1 - _EPS)
    # Clamp -log(u) as a whole: clamping u alone still lets log(0) through at float precision.
    return -torch.log((-torch.log(uniform)).clamp_min(_EPS))


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Position of each switch in descending score order. [B, S] -> long [B, S]."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def _rank_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """True for the k[b] highest scores of each row. scores [B, S], k long [B] -> bool [B, S]."""
    return _ranks(scores) < k[:, None]


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


# ---- units of unequal cost (head switches) ------------------------------------------------------

FIT_TOLERANCE = RELATIVE_TOLERANCE  # relative slack on capacities: the budget rules' own


def fit_in_order(scores: torch.Tensor, costs: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Take switches in descending score order while the running cost fits the capacity.

    scores [B, S]; costs [B, S] (> 0, FLOPs); capacity [B] (FLOPs). -> bool [B, S]. The taken set is
    a prefix of the order, so its cost is <= capacity by construction (DESIGN.md, "units of unequal
    cost"); for equal costs it is exactly the top-k.
    """
    order = scores.argsort(dim=-1, descending=True, stable=True)  # [B, S]
    running = costs.gather(1, order).to(torch.float64).cumsum(dim=1)  # [B, S]
    take_sorted = running <= capacity.to(torch.float64)[:, None] * (1 + FIT_TOLERANCE)
    mask = torch.zeros_like(take_sorted)
    return mask.scatter(1, order, take_sorted)


def sample_fit_straight_through(
    logits: torch.Tensor, costs: torch.Tensor, capacity: torch.Tensor, tau: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    """Training-time plan for units of unequal cost: a Plackett-Luce order (Gumbel top-k: sampling
    without replacement), taken while it fits; straight-through gradients of the sequential soft picks.

    Returns float [B, S], exactly 0/1 forward. Step t's soft pick is softmax over the switches not
    yet taken of (logits + g) / tau, with the same noise g that fixed the order.
    """
    perturbed = logits + gumbel_noise(logits.shape, logits.device, generator)  # [B, S]
    hard = fit_in_order(perturbed.detach(), costs, capacity)  # [B, S]
    taken = hard.sum(-1)  # [B]
    steps = int(taken.max().item()) if taken.numel() else 0
    if steps == 0:
        return hard.to(logits.dtype)
    ranks = _ranks(perturbed.detach())  # [B, S]
    step = torch.arange(steps, device=logits.device)  # [K]
    remaining = ranks[:, None, :] >= step[None, :, None]  # [B, K, S]
    scores = (perturbed / tau)[:, None, :].masked_fill(~remaining, float("-inf"))
    soft = F.softmax(scores, dim=-1) * (step[None, :] < taken[:, None])[..., None]  # [B, K, S]
    soft = soft.sum(dim=1)  # [B, S]
    return hard.to(logits.dtype) - soft.detach() + soft


def official_head_selection(
    logits: torch.Tensor, units: torch.Tensor, heads: int, rank: int, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official AdaLLaVA-H rule (DESIGN.md). logits [B, L, 2*heads] per upper layer (head
    logits, then MLP-group logits); units long [B]. Each unit picks the best not-yet-taken element
    over all layers (with `noise` added when sampling), which names a layer; in that layer it takes
    the top `rank` not-yet-taken heads and top `rank` not-yet-taken MLP groups.
    Returns bool heads [B, L, heads], mlp [B, L, heads]."""
    batch, layers, width = logits.shape
    if width != 2 * heads:
        raise ValueError(f"official head logits need {2 * heads} values per layer, got {width}")
    scores = logits if noise is None else logits + noise
    taken = torch.zeros(batch, layers, width, dtype=torch.bool, device=logits.device)
    rows = torch.arange(batch, device=logits.device)
    for step in range(int(units.max().item()) if units.numel() else 0):
        active = step < units  # [B]
        flat = scores.masked_fill(taken, float("-inf")).reshape(batch, -1)
        layer = flat.argmax(dim=-1) // width  # [B]
        in_layer = logits[rows, layer].masked_fill(taken[rows, layer], float("-inf"))  # [B, 2H]
        picked = torch.zeros(batch, width, dtype=torch.bool, device=logits.device)
        for part in (slice(0, heads), slice(heads, width)):
            top = in_layer[:, part].topk(rank, dim=-1).indices + part.start  # [B, rank]
            picked.scatter_(1, top, True)
        taken[rows, layer] |= picked & active[:, None]
    return taken[..., :heads], taken[..., heads:]
