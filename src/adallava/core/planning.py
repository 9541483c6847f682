"""Plan selection: from scheduler logits and budgets to an ExecutionPlan (and, in training, the
straight-through switch values that gate the layers or units). One planner per switch kind:

- `LayerPlanner`: exactly the n upper layers the budget buys (top-k, or sampled without replacement);
- `HeadPlanner`: head units and MLP groups taken in scheduler order while they fit the row's FLOPs
  capacity, or (`selection="official"`) the authors' rule, in training and at inference alike;
- both: the deterministic ablation (`deterministic`): thresholded switches plus a latency loss,
  budgets not enforced (paper Table 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adallava.core.budget import BudgetSpace
from adallava.core.config import AdaptiveConfig
from adallava.core.cost.flops import head_unit_flops, layer_unit_flops, mlp_group_flops
from adallava.core.cost.shapes import ModelShape
from adallava.core.geometry import UnitGeometry
from adallava.core.plan import ExecutionPlan
from adallava.core.selection import (
    fit_in_order,
    greedy_mask,
    gumbel_noise,
    gumbel_topk_mask,
    official_head_gates,
    official_noise,
    official_units,
    sample_fit_straight_through,
    sample_mask_straight_through,
)


def budget_units(adaptive: AdaptiveConfig, budgets: BudgetSpace, fractions: torch.Tensor, dtype: torch.dtype):
    """Upper units each row's budget buys. long [B]. The default rule is floor(Nu * b) - Pu with a
    relative tolerance (a user's 0.57 of 100 units buys 57); `selection="official"` repeats the authors'
    arithmetic in the model's `dtype` (`official_units`), so converted checkpoints plan as they did."""
    if adaptive.selection == "official":
        return official_units(fractions, budgets.total_units, budgets.prefix_units, dtype)
    return budgets.units_for_rows(fractions)


def latency_loss(share: torch.Tensor, fractions: torch.Tensor, num_prefix: int, num_layers: int):
    """The deterministic ablation's latency loss: (expected fraction of the full stack - budget)^2,
    averaged over rows; `share` [B] is the expected share of the upper layers' cost that runs."""
    prefix = num_prefix / num_layers
    expected = prefix + (1 - prefix) * share  # [B] expected fraction of the full decoder stack
    return ((expected - fractions.to(expected.device)) ** 2).mean()


def straight_through(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thresholded switches: (probabilities, hard bool, soft values equal to hard whose gradient is
    the probabilities')."""
    probs = torch.sigmoid(logits)  # [B, S]
    hard = probs > 0.5
    return probs, hard, hard.to(logits.dtype) - probs.detach() + probs


@dataclass(frozen=True)
class LayerPlanner:
    """Plans for layer switches. `choose` returns (plan, gates): gates are None at inference; in
    training, float switch values [B, N-P] carrying straight-through gradients."""

    adaptive: AdaptiveConfig
    num_layers: int
    num_prefix: int

    def choose(self, logits, units, fractions, tokens, *, training: bool, sample: bool, generator=None):
        """Exactly units[b] upper layers on: the most probable, a seeded sample, or (training) a
        straight-through Gumbel sample."""
        gates = None
        if training:
            gates = sample_mask_straight_through(logits, units, self.adaptive.tau, generator)  # [B, N-P]
            upper = gates.detach() > 0.5
        elif sample:
            upper = gumbel_topk_mask(logits, units, generator=generator)
        else:
            upper = greedy_mask(logits, units)
        return self._plan(upper), gates

    def deterministic(self, logits, fractions, tokens, *, training: bool):
        """Layer u runs when sigmoid(logit_u) > 0.5, whatever the budget. Returns (plan, gates, loss)."""
        probs, hard, soft = straight_through(logits)
        share = probs.double().mean(-1)
        loss = latency_loss(share, fractions, self.num_prefix, self.num_layers).to(logits.dtype)
        return self._plan(hard), (soft if training else None), loss

    def _plan(self, upper: torch.Tensor) -> ExecutionPlan:
        prefix = torch.ones(upper.shape[0], self.num_prefix, dtype=torch.bool, device=upper.device)
        return ExecutionPlan(torch.cat([prefix, upper], dim=-1))


@dataclass(frozen=True)
class HeadPlanner:
    """Plans for head and neuron switches: per upper layer, `head_units` head units then `mlp_groups`
    MLP groups. Training gates are a pair ([B, N-P, H], [B, N-P, G])."""

    adaptive: AdaptiveConfig
    num_layers: int
    num_prefix: int
    geometry: UnitGeometry
    shape: ModelShape

    def choose(self, logits, units, fractions, tokens, *, training: bool, sample: bool, generator=None):
        """Units in scheduler order while they fit the row's FLOPs capacity, or the official rule
        (`selection="official"`: see `official`)."""
        if self.adaptive.selection == "official":
            return self.official(logits, units, training=training, sample=sample, generator=generator)
        costs, capacity = self.unit_costs(tokens, fractions)  # [B, S], [B] FLOPs
        costs, capacity = costs.to(logits.device), capacity.to(logits.device)
        gates = None
        if training:
            soft = sample_fit_straight_through(logits, costs, capacity, self.adaptive.tau, generator)
            on = soft.detach() > 0.5
            gates = self._split(soft)
        else:
            scores = logits + gumbel_noise(logits.shape, logits.device, generator) if sample else logits
            on = fit_in_order(scores, costs, capacity)
        return self._plan(*self._split(on)), gates

    def official(self, logits, units, *, training: bool, sample: bool, generator=None):
        """The authors' rule (`official_head_gates`), one rule for training and inference: training
        samples it with fresh Gumbel noise per pick and straight-through gates, as their scheduler;
        inference takes it greedily (their inference) or, with `sample`, with noise drawn exactly as
        training draws it, so a seeded generator gives the same plan in both."""
        view = self._view(logits)
        steps = int(units.max().item()) if units.numel() else 0
        noise = official_noise(steps, view, logits.device, generator) if training or sample else None
        values = logits if training else logits.detach()
        gates = official_head_gates(
            values.view(view), units, self.geometry.head_units, self.adaptive.rank, self.adaptive.tau, noise
        )  # [B, N-P, 2H]
        on = gates.detach() > 0.5
        heads = self.geometry.head_units
        plan = self._plan(on[..., :heads], on[..., heads:])
        return plan, ((gates[..., :heads], gates[..., heads:]) if training else None)

    def deterministic(self, logits, fractions, tokens, *, training: bool):
        """Unit u runs when sigmoid(logit_u) > 0.5, whatever the budget; the expected cost weighs each
        unit by its FLOPs. Returns (plan, gates, loss)."""
        probs, hard, soft = straight_through(logits)
        costs, capacity = self.unit_costs(tokens, torch.ones_like(fractions))  # capacity = upper layers
        costs, capacity = costs.to(logits.device), capacity.to(logits.device)
        share = (probs.double() * costs).sum(-1) / capacity  # expected share of the upper layers
        loss = latency_loss(share, fractions, self.num_prefix, self.num_layers).to(logits.dtype)
        return self._plan(*self._split(hard)), (self._split(soft) if training else None), loss

    def unit_costs(self, tokens: torch.Tensor, fractions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FLOPs of each switch (per upper layer: head units, then MLP groups) for each row's token
        count, and each row's capacity: its budget minus what the prefix layers cost."""
        text, upper = self.shape.text, self.num_layers - self.num_prefix
        sizes = self.geometry.group_sizes()
        rows, capacity = [], []
        for count, fraction in zip(tokens.tolist(), fractions.tolist(), strict=True):
            per_layer = [head_unit_flops(text, count, count)] * self.geometry.head_units
            per_layer += [mlp_group_flops(text, count, size) for size in sizes]
            rows.append(per_layer * upper)
            layer = layer_unit_flops(text, count, count)
            capacity.append(BudgetSpace.capacity(fraction, layer, self.num_layers, self.num_prefix))
        return torch.tensor(rows, dtype=torch.float64), torch.tensor(capacity, dtype=torch.float64)

    def _view(self, switches: torch.Tensor) -> tuple[int, int, int]:
        upper = self.num_layers - self.num_prefix
        return (switches.shape[0], upper, self.geometry.head_units + self.geometry.mlp_groups)

    def _split(self, switches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, S] switches -> (heads [B, N-P, H], MLP groups [B, N-P, G])."""
        on = switches.view(self._view(switches))
        return on[..., : self.geometry.head_units], on[..., self.geometry.head_units :]

    def _plan(self, heads: torch.Tensor, mlp: torch.Tensor) -> ExecutionPlan:
        """Upper layers' units [B, N-P, H] and [B, N-P, G] -> a plan whose prefix runs in full."""
        batch, device = heads.shape[0], heads.device
        full = torch.ones(batch, self.num_prefix, 1, dtype=torch.bool, device=device)
        heads = torch.cat([full.expand(-1, -1, heads.shape[-1]), heads], dim=1)  # [B, N, H]
        mlp = torch.cat([full.expand(-1, -1, mlp.shape[-1]), mlp], dim=1)  # [B, N, G]
        layers = torch.ones(batch, self.num_layers, dtype=torch.bool, device=device)
        return ExecutionPlan.from_masks(layers, heads, mlp)
