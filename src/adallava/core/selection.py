"""The scheduler: a linear head on the latency token's hidden state, and plan selection.

Selection is pure tensor math on logits, kept apart from the module so that it is easy to test:
- `greedy_mask`: inference, the k best switches by logit (paper Sec. 3.3, s* = argmax p(s|.)).
- `gumbel_topk_mask`: seeded sampling without replacement (Gumbel top-k of the Plackett-Luce law).
- `sample_mask_straight_through`: training, k sequential masked Gumbel-softmax picks with a
  straight-through estimator, so every sampled plan keeps the budget and gradients reach the logits.
- `fit_in_order` / `sample_fit_straight_through`: the same for units of unequal cost (heads and MLP
  groups), taken in scheduler order while they fit a FLOPs capacity.
- `official_head_gates` / `official_head_selection`: the official AdaLLaVA-H rule (training, with
  the authors' straight-through gradients, and inference), and `official_units`, the authors'
  budget arithmetic, for converted checkpoints.
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
    """Take switches in descending score order, each one that still fits the remaining capacity.

    scores [B, S]; costs [B, S] (> 0, FLOPs); capacity [B] (FLOPs). -> bool [B, S]. A switch that
    does not fit is passed over and later, cheaper ones are still tried, so the plan is maximal: no
    switch left out would fit (DESIGN.md, "units of unequal cost"); its cost is <= capacity by
    construction, and for equal costs it is exactly the top-k.
    """
    order = scores.argsort(dim=-1, descending=True, stable=True)  # [B, S]
    take_sorted = _fit_sorted(costs.gather(1, order), capacity)
    return torch.zeros_like(take_sorted).scatter(1, order, take_sorted)


def _fit_sorted(sorted_costs: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Greedy fill in the given order: bool [B, S], True where the switch fits what is left."""
    left = capacity.to(torch.float64) * (1 + FIT_TOLERANCE)  # [B]
    sorted_costs = sorted_costs.to(torch.float64)
    take = torch.zeros(sorted_costs.shape, dtype=torch.bool, device=sorted_costs.device)
    for position in range(sorted_costs.shape[1]):  # sequential by nature; vectorised over rows
        cost = sorted_costs[:, position]
        fits = cost <= left
        take[:, position] = fits
        left = left - torch.where(fits, cost, torch.zeros_like(cost))
    return take


def sample_fit_straight_through(
    logits: torch.Tensor, costs: torch.Tensor, capacity: torch.Tensor, tau: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    """Training-time plan for units of unequal cost: a Plackett-Luce order (Gumbel top-k: sampling
    without replacement), each switch taken if it still fits (as `fit_in_order`); straight-through
    gradients of the sequential soft picks.

    Returns float [B, S], exactly 0/1 forward. Step t's soft pick is softmax over the switches not
    yet taken of (logits + g) / tau, with the same noise g that fixed the order.
    """
    perturbed = logits + gumbel_noise(logits.shape, logits.device, generator)  # [B, S]
    order = perturbed.detach().argsort(dim=-1, descending=True, stable=True)  # [B, S]
    take_sorted = _fit_sorted(costs.gather(1, order), capacity)  # [B, S] in the sampled order
    hard = torch.zeros_like(take_sorted).scatter(1, order, take_sorted)
    steps = int(take_sorted.sum(-1).max().item()) if take_sorted.numel() else 0
    if steps == 0:
        return hard.to(logits.dtype)
    # The k-th pick happens at the order position of the k-th switch taken; the soft pick there is
    # over the switches from that position on (those passed over earlier did not fit).
    width = take_sorted.shape[1]
    positions = torch.arange(width, device=logits.device).expand_as(take_sorted)
    at = positions.masked_fill(~take_sorted, width).sort(dim=-1).values[:, :steps]  # [B, K]
    valid = at < width
    ranks = _ranks(perturbed.detach())  # [B, S]
    remaining = ranks[:, None, :] >= at.masked_fill(~valid, 0)[:, :, None]  # [B, K, S]
    scores = (perturbed / tau)[:, None, :].masked_fill(~remaining, float("-inf"))
    soft = (F.softmax(scores, dim=-1) * valid[..., None]).sum(dim=1)  # [B, S]
    return hard.to(logits.dtype) - soft.detach() + soft


# ---- the official AdaLLaVA-H rule --------------------------------------------------------------
# Jav1Star/AdaLLaVA-X, src/adallava/model/scheduler/scheduler_utils.py: `latency_quantizing`,
# `masked_gumbel_softmax`, `masked_gumbel_softmax_topk`, `n_times_gumbel_softmax_head_version`.

OfficialNoise = tuple[torch.Tensor, torch.Tensor]
"""Gumbel noise of the official rule: (layer picks [U, B, L, 2H], in-layer picks [U, B, 2H]); step u
uses row u of each, as the authors draw fresh noise for every pick."""


def official_units(
    fractions: torch.Tensor, total_units: int, prefix_units: int, dtype: torch.dtype
) -> torch.Tensor:
    """Units a budget buys under the authors' arithmetic, `relu(floor(Nu * latency) - Pu)` with the
    latency a tensor of the model's dtype (their `generate`: `torch.full(..., latency, dtype=self.dtype)`,
    then `latency_quantizing`), so a float16 model at 0.57 of 100 units gets floor(56.97) = 56, not 57.
    fractions [B] -> long [B]."""
    latency = fractions.to(dtype)  # [B]
    return torch.relu(torch.floor(total_units * latency) - prefix_units).long()


def official_noise(
    steps: int, shape: tuple[int, int, int], device: torch.device, generator: torch.Generator | None = None
) -> OfficialNoise:
    """Noise for `steps` units of the official rule on logits of `shape` [B, L, 2H]."""
    batch, layers, width = shape
    layer = gumbel_noise(torch.Size((steps, batch, layers, width)), device, generator)
    units = gumbel_noise(torch.Size((steps, batch, width)), device, generator)
    return layer, units


def official_head_gates(
    logits: torch.Tensor, units: torch.Tensor, heads: int, rank: int, tau: float = 1.0,
    noise: OfficialNoise | None = None,
) -> torch.Tensor:  # fmt: skip
    """The official AdaLLaVA-H rule with the authors' straight-through gradients. logits [B, L, 2H]
    per upper layer (head logits, then MLP-group logits); units long [B].

    Each unit picks the best not-yet-taken element over all layers' flattened logits, which names a
    layer; in that layer it takes the top `rank` not-yet-taken heads and the top `rank` not-yet-taken
    MLP groups. With `noise`, picks compare (logits + noise) / tau and their soft values are the
    masked softmax of that (training, or sampling); without, the logits themselves (the authors'
    inference). Returns float [B, L, 2H], 0/1 forward; its gradient is the authors' (the layer's soft
    pick times the units' soft picks). Hard picks never depend on the gradient path, so the same
    logits and noise give the same plan in training and at inference."""
    batch, layers, width = logits.shape
    if width != 2 * heads:
        raise ValueError(f"official head logits need {2 * heads} values per layer, got {width}")
    rows = torch.arange(batch, device=logits.device)
    taken = torch.zeros(batch, layers, width, dtype=torch.bool, device=logits.device)
    gates = torch.zeros_like(logits)
    for step in range(int(units.max().item()) if units.numel() else 0):
        active = step < units  # [B]; finished rows pick too (unmasked, so finite), then count for 0
        step_noise = (None, None) if noise is None else (noise[0][step], noise[1][step])
        layer_gate, layer = _official_layer_pick(logits, taken & active[:, None, None], step_noise[0], tau)
        # The picked layer's logits: exact for the hard picks, through the layer gate for gradients
        # (the authors' `sub_logits = (logits * layer_mask).sum(0)`).
        picked = (logits.detach()[rows, layer], (logits * layer_gate[..., None]).sum(1))  # [B, 2H] each
        done = taken[rows, layer] & active[:, None]  # [B, 2H]: taken in the picked layer
        unit_gate = _official_unit_picks(picked, done, step_noise[1], heads, rank, tau)  # [B, 2H]
        on = active.to(logits.dtype)[:, None, None]
        gates = gates + on * layer_gate[:, :, None] * unit_gate[:, None, :]  # [B, L, 2H]
        taken[rows, layer] |= (unit_gate.detach() > 0.5) & active[:, None]
    return gates


def official_head_selection(
    logits: torch.Tensor, units: torch.Tensor, heads: int, rank: int,
    noise: OfficialNoise | None = None, tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The official AdaLLaVA-H rule's plan (`official_head_gates`, no gradients).
    Returns bool heads [B, L, heads], mlp [B, L, heads]."""
    with torch.no_grad():
        on = official_head_gates(logits, units, heads, rank, tau, noise) > 0.5
    return on[..., :heads], on[..., heads:]


def _official_scores(values: torch.Tensor, noise: torch.Tensor | None, tau: float, mask: torch.Tensor):
    """What a pick compares: (values + noise) / tau, or the values alone; taken entries at -inf."""
    scores = values if noise is None else (values + noise) / tau
    return scores.masked_fill(mask, float("-inf"))


def _official_layer_pick(logits, mask, noise, tau) -> tuple[torch.Tensor, torch.Tensor]:
    """One masked Gumbel-softmax pick over all layers' flattened logits [B, L, 2H]: the picked
    layer's straight-through gate [B, L] (the one-hot pick summed over its layer) and its index [B]."""
    flat_noise = None if noise is None else noise.flatten(1)
    scores = _official_scores(logits.flatten(1), flat_noise, tau, mask.flatten(1))  # [B, L * 2H]
    index = scores.detach().argmax(dim=-1)  # [B]
    soft = scores.softmax(dim=-1)  # [B, L * 2H]
    hard = F.one_hot(index, soft.shape[-1]).to(soft.dtype)
    gate = (hard - soft.detach() + soft).view_as(logits).sum(-1)  # [B, L]
    return gate, torch.div(index, logits.shape[-1], rounding_mode="floor")


def _official_unit_picks(picked, mask, noise, heads: int, rank: int, tau: float) -> torch.Tensor:
    """The top `rank` of each half (heads, MLP groups) of the picked layer, not yet taken: hard from the
    exact logits, soft from the gated ones (a masked softmax per half). -> straight-through [B, 2H]."""
    exact, gated = picked
    parts = []
    for part in (slice(0, heads), slice(heads, 2 * heads)):
        part_noise = None if noise is None else noise[:, part]
        top = _official_scores(exact[:, part], part_noise, tau, mask[:, part]).topk(rank, dim=-1).indices
        hard = torch.zeros_like(gated[:, part]).scatter(1, top, 1.0)  # [B, H]
        soft = _official_scores(gated[:, part], part_noise, tau, mask[:, part]).softmax(dim=-1)  # [B, H]
        parts.append(hard - soft.detach() + soft)
    return torch.cat(parts, dim=-1)
