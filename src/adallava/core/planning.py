"""Plan selection: from scheduler logits and budgets to an ExecutionPlan (and, in training, the
straight-through switch values that gate the layers or units).

- layer switches: exactly the n upper layers the budget buys (top-k, or sampled without replacement);
- head switches: head units and MLP groups taken in scheduler order while they fit the row's FLOPs
  capacity (or the official rule for converted checkpoints);
- the deterministic ablation: thresholded switches plus a latency loss, budgets not enforced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    official_head_selection,
    sample_fit_straight_through,
    sample_mask_straight_through,
)


@dataclass(frozen=True)
class Planner:
    """What plan selection needs to know about the model. `choose` returns (plan, gates): gates are
    None at inference; in training, float switch values [B, N-P] (layers) or a pair
    ([B, N-P, H], [B, N-P, G]) (heads) carrying straight-through gradients."""

    adaptive: AdaptiveConfig
    num_layers: int
    num_prefix: int
    geometry: UnitGeometry
    shape: ModelShape

    def choose(self, logits, units, fractions, tokens, *, training: bool, sample: bool, generator=None):
        """Training (grad enabled): straight-through Gumbel samples, returned as gates. Otherwise the
        most probable plan, or a seeded sample. Layer plans have exactly units[b] upper layers on;
        head plans take units in scheduler order while they fit the row's FLOPs budget."""
        if self.adaptive.switches == "head":
            return self._head_plan(logits, units, fractions, tokens, training, sample, generator)
        gates = None
        if training:
            gates = sample_mask_straight_through(logits, units, self.adaptive.tau, generator)  # [B, N-P]
            upper = gates.detach() > 0.5
        elif sample:
            upper = gumbel_topk_mask(logits, units, generator=generator)
        else:
            upper = greedy_mask(logits, units)
        prefix = torch.ones(logits.shape[0], self.num_prefix, dtype=torch.bool, device=logits.device)
        return ExecutionPlan(torch.cat([prefix, upper], dim=-1)), gates

    def deterministic(self, logits, fractions, tokens, *, training: bool):
        """The ablation's scheduler: switch u is on when sigmoid(logit_u) > 0.5 (straight-through in
        training), whatever the budget; the latency loss is (expected cost / full cost - budget)^2
        with the expected cost sum_u sigmoid(logit_u) * cost_u. Returns (plan, gates, latency loss)."""
        probs = torch.sigmoid(logits)  # [B, S]
        hard = probs > 0.5
        batch, upper = logits.shape[0], self.num_layers - self.num_prefix
        if self.adaptive.switches == "head":
            costs, capacity = self.unit_costs(tokens, torch.ones_like(fractions))  # capacity = upper layers
            costs, capacity = costs.to(logits.device), capacity.to(logits.device)
            share = (probs.double() * costs).sum(-1) / capacity  # expected share of the upper layers
        else:
            share = probs.double().mean(-1)
        prefix = self.num_prefix / self.num_layers
        expected = prefix + (1 - prefix) * share  # [B] expected fraction of the full decoder stack
        latency_loss = ((expected - fractions.to(expected.device)) ** 2).mean().to(logits.dtype)
        soft = hard.to(logits.dtype) - probs.detach() + probs
        if self.adaptive.switches == "head":
            units = self.geometry.head_units
            on = hard.view(batch, upper, -1)
            full = torch.ones(batch, self.num_prefix, 1, dtype=torch.bool, device=logits.device)
            heads = torch.cat([full.expand(-1, -1, units), on[..., :units]], dim=1)
            mlp = torch.cat([full.expand(-1, -1, on.shape[-1] - units), on[..., units:]], dim=1)
            plan = ExecutionPlan.from_masks(torch.ones(batch, self.num_layers, dtype=torch.bool), heads, mlp)
            gates = (soft.view(batch, upper, -1)[..., :units], soft.view(batch, upper, -1)[..., units:])
        else:
            prefix_on = torch.ones(batch, self.num_prefix, dtype=torch.bool, device=logits.device)
            plan, gates = ExecutionPlan(torch.cat([prefix_on, hard], dim=-1)), soft
        return plan, (gates if training else None), latency_loss

    def _head_plan(self, logits, units, fractions, tokens, training, sample, generator):
        batch, upper = logits.shape[0], self.num_layers - self.num_prefix
        head_units, groups = self.geometry.head_units, self.geometry.mlp_groups
        gates = None
        if self.adaptive.selection == "official" and not training:
            noise = gumbel_noise(logits.shape, logits.device, generator) if sample else None
            view = (batch, upper, head_units + groups)
            heads, mlp = official_head_selection(
                logits.view(view),
                units,
                head_units,
                self.adaptive.rank,
                None if noise is None else noise.view(view),
            )
        else:
            costs, capacity = self.unit_costs(tokens, fractions)  # [B, S], [B] FLOPs
            costs, capacity = costs.to(logits.device), capacity.to(logits.device)
            if training:
                soft = sample_fit_straight_through(logits, costs, capacity, self.adaptive.tau, generator)
                on = soft.detach() > 0.5
                soft = soft.view(batch, upper, head_units + groups)
                gates = (soft[..., :head_units], soft[..., head_units:])
            else:
                scores = logits + gumbel_noise(logits.shape, logits.device, generator) if sample else logits
                on = fit_in_order(scores, costs, capacity)
            on = on.view(batch, upper, head_units + groups)
            heads, mlp = on[..., :head_units], on[..., head_units:]
        full = torch.ones(batch, self.num_prefix, 1, dtype=torch.bool, device=logits.device)
        heads = torch.cat([full.expand(-1, -1, head_units), heads], dim=1)  # [B, N, H]
        mlp = torch.cat([full.expand(-1, -1, groups), mlp], dim=1)  # [B, N, G]
        layers = torch.ones(batch, self.num_layers, dtype=torch.bool, device=logits.device)
        return ExecutionPlan.from_masks(layers, heads, mlp), gates

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
            capacity.append(fraction * self.num_layers * layer - self.num_prefix * layer)
        return torch.tensor(rows, dtype=torch.float64), torch.tensor(capacity, dtype=torch.float64)
