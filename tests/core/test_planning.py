"""Planners under the official AdaLLaVA-H rule (issue 14): the authors' budget arithmetic, and one
rule for training and inference, checked against the authors' scheduler written out plainly."""

import pytest
import torch

from adallava.core.budget import BudgetSpace
from adallava.core.config import AdaptiveConfig
from adallava.core.geometry import UnitGeometry
from adallava.core.planning import HeadPlanner, budget_units
from adallava.core.selection import official_head_gates, official_noise

HEADS, RANK, LAYERS, PREFIX = 4, 2, 6, 2  # 4 upper layers of 4 heads and 4 MLP groups
UPPER = LAYERS - PREFIX


# ---- (a) budgets at unit boundaries ----------------------------------------------------------------
# The authors turn a budget into units with `latency_quantizing` (scheduler_utils.py):
#   units = relu(floor(Nu * latency) - Pu), latency = torch.full((B,), budget, dtype=self.dtype)
# (ada_llava_llama.py, `generate`), i.e. in the model's dtype. By hand, at 0.57 of Nu = 100 units:
# - float16: 0.57 -> 1167 / 2048 = 0.56982421875; x 100 = 56.982421875, rounded to float16's 1/32
#   spacing on [32, 64): 1823 / 32 = 56.96875; floor 56.
# - bfloat16: 0.57 -> 146 / 256 = 0.5703125; x 100 = 57.03125, rounded to the 1/4 spacing: 57.0.
# - float32: 0.57 -> 0.569999992847...; x 100 = 56.99999928..., within half of float32's 2^-18
#   spacing of 57, so 57.0.
# - float64: 0.57 x 100 = 56.99999999999999 (Python's own float); floor 56.
# The default rule adds a 1e-9 relative slack: floor(57.0000000x) = 57.
# At Nu = 200 (a 40-layer, 40-head LLaMA at rank 8, e.g. 13B), float16: 0.56982421875 x 200 =
# 113.96484375, rounded to the 1/16 spacing on [64, 128): 1823 / 16 = 113.9375; floor 113.
@pytest.mark.parametrize(
    ("total", "prefix", "dtype", "official", "default"),
    [
        (100, 50, torch.float16, 56 - 50, 57 - 50),
        (100, 50, torch.bfloat16, 57 - 50, 57 - 50),
        (100, 50, torch.float32, 57 - 50, 57 - 50),
        (100, 50, torch.float64, 56 - 50, 57 - 50),
        (200, 100, torch.float16, 113 - 100, 114 - 100),
    ],
)
def test_units_at_a_boundary_follow_each_rule(total, prefix, dtype, official, default):
    # Bug: converted checkpoints planning with our tolerance instead of the authors' float arithmetic
    # (or the default rule losing a unit to 0.57 * 100 = 56.99999999999999).
    budgets = BudgetSpace(total, prefix)
    fractions = torch.tensor([0.57, 0.5, 1.0], dtype=torch.float64)
    got = budget_units(AdaptiveConfig(selection="official"), budgets, fractions, dtype)
    assert got.tolist() == [official, 0, total - prefix]
    assert budget_units(AdaptiveConfig(), budgets, fractions, dtype).tolist() == [default, 0, total - prefix]


# ---- (b) training and inference take the same rule ------------------------------------------------
def authors_scheduler_row(logits, n, tau, layer_noise, unit_noise):
    """`n_times_gumbel_softmax_head_version` (Jav1Star/AdaLLaVA-X scheduler_utils.py, training=True,
    hard=True) for one row, written as the authors wrote it, with its Gumbel draws passed in.
    logits [L, 2H]; layer_noise [n, L, 2H]; unit_noise [n, 2H]. -> [L, 2H]."""
    cumulate = torch.zeros_like(logits)
    for step in range(n):
        taken = cumulate.reshape(-1).bool()
        flat = ((logits.reshape(-1) + layer_noise[step].reshape(-1)) / tau).masked_fill(taken, float("-inf"))
        y_soft = flat.softmax(-1)
        index = y_soft.masked_fill(taken, -1.0).argmax()
        y_hard = torch.zeros_like(y_soft).scatter(0, index[None], 1.0)
        layer_mask = (y_hard - y_soft.detach() + y_soft).view(logits.shape).sum(1)  # [L]
        mask = (cumulate * layer_mask[:, None]).sum(0).view(2, -1)
        sub_logits = (logits * layer_mask[:, None]).sum(0).view(2, -1)
        picks = []
        for half in range(2):
            scores = (sub_logits[half] + unit_noise[step].view(2, -1)[half]) / tau
            soft = scores.masked_fill(mask[half].bool(), float("-inf")).softmax(-1)
            top = soft.masked_fill(mask[half].bool(), -1.0).topk(RANK).indices
            picks.append(torch.zeros_like(soft).scatter(0, top, 1.0) - soft.detach() + soft)
        cumulate = cumulate + layer_mask[:, None] * torch.stack(picks).view(-1)[None, :]
    return cumulate


def planner() -> HeadPlanner:
    adaptive = AdaptiveConfig(switches="head", rank=RANK, mlp_groups=HEADS, selection="official", tau=5.0)
    geometry = UnitGeometry(num_heads=HEADS, num_kv_heads=HEADS, head_dim=2, intermediate_size=8,
                            mlp_groups=HEADS)  # fmt: skip
    # shape prices the FLOPs-fit rule only; the official rule never reads it.
    return HeadPlanner(adaptive, LAYERS, PREFIX, geometry, shape=None)


def test_official_rule_trains_as_it_infers():
    # Bug: training with selection="official" falling back to the FLOPs-fit rule, so fine-tuning an
    # official H checkpoint trains other plans than it serves.
    logits = torch.randn(3, UPPER * 2 * HEADS, generator=torch.Generator().manual_seed(0), requires_grad=True)
    units = torch.tensor([0, 3, UPPER * HEADS // RANK])  # nothing, some, everything
    trained, gates = planner().choose(logits, units, None, None, training=True, sample=False,
                                      generator=torch.Generator().manual_seed(7))  # fmt: skip
    inferred, none = planner().choose(logits, units, None, None, training=False, sample=True,
                                      generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert none is None
    assert torch.equal(trained.heads, inferred.heads) and torch.equal(trained.mlp, inferred.mlp)
    assert trained.heads[:, PREFIX:].sum((1, 2)).tolist() == (units * RANK).tolist()

    # The same plan, gate values and gradients as the authors' scheduler given the same noise.
    seeded = torch.Generator().manual_seed(7)
    noise = official_noise(int(units.max()), (3, UPPER, 2 * HEADS), logits.device, seeded)
    weights = torch.randn(3, UPPER, 2 * HEADS, generator=torch.Generator().manual_seed(1))
    (torch.cat(gates, -1) * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    for row in range(3):
        row_logits, n = logits[row].view(UPPER, 2 * HEADS), int(units[row])
        theirs = authors_scheduler_row(row_logits, n, 5.0, noise[0][:, row], noise[1][:, row])
        assert torch.equal(theirs.detach() > 0.5, torch.cat([trained.heads, trained.mlp], -1)[row, PREFIX:])
        torch.testing.assert_close(torch.cat(gates, -1)[row].detach(), theirs.detach(), atol=1e-6, rtol=0)
        if n:  # a row that takes nothing has no graph
            (theirs * weights[row]).sum().backward()
    torch.testing.assert_close(ours, logits.grad, atol=1e-6, rtol=1e-5)
    assert ours[1].abs().sum() > 0 and ours[2].abs().sum() > 0  # gradients reach the scheduler logits
    assert torch.all(ours[0] == 0)  # a row that takes nothing gets none


def test_official_rule_without_noise_is_the_authors_inference():
    # Bug: the greedy (noise-free) official plan changing when the training form was added.
    logits = torch.randn(2, UPPER, 2 * HEADS, generator=torch.Generator().manual_seed(3))
    units = torch.tensor([2, 5])
    gates = official_head_gates(logits, units, HEADS, RANK, tau=5.0)
    for row in range(2):
        zero = (torch.zeros(5, UPPER, 2 * HEADS), torch.zeros(5, 2 * HEADS))
        # With zero noise and tau = 1 the authors' training picks are their inference picks.
        theirs = authors_scheduler_row(logits[row], int(units[row]), 1.0, *zero)
        assert torch.equal(gates[row] > 0.5, theirs > 0.5)
