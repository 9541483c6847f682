"""BudgetSpace: the budget rules in one place, checked against hand computations (DESIGN.md)."""

from __future__ import annotations

import math

import pytest
import torch

from adallava.core.budget import RELATIVE_TOLERANCE, BudgetSpace
from adallava.core.config import AdaptiveConfig
from adallava.core.cost.flops import llm_prefill_flops
from adallava.core.cost.shapes import ModelShape, TextShape
from adallava.core.geometry import UnitGeometry
from adallava.core.planning import HeadPlanner, LayerPlanner
from adallava.core.selection import fit_in_order
from adallava.engine.llava import AdaLlava
from adallava.testing import tiny_llava


def test_units_at_unit_boundaries_follow_floor_nu_b_minus_pu():
    # Bug caught: dropping the tolerance (0.57 * 100 is 56.99999999999999 in binary, so a plain floor
    # buys 56 units where the user asked for 57), or an off-by-one in "- Pu".
    assert 0.57 * 100 < 57  # the float arithmetic that makes the tolerance necessary
    assert BudgetSpace(100, 0).units_for(0.57) == 57
    assert BudgetSpace(100, 50).units_for(0.57) == 7
    assert BudgetSpace(32, 16).units_for(0.75) == 8  # the paper's L model: 24 layers, 16 of them prefix
    assert BudgetSpace(32, 16).units_for(0.5) == 0 and BudgetSpace(32, 16).units_for(1.0) == 16
    assert BudgetSpace(128, 64).units_for(0.6) == 12  # head switches, rank 8 of 32 heads: Nu = 32 * 4


def test_b_min_and_the_minimum_check():
    # Bug caught: a budget just below b_min (rounding) refused, or one clearly below it accepted.
    space = BudgetSpace(32, 16)
    assert space.b_min == 0.5
    assert not space.below_minimum(0.5 * (1 - RELATIVE_TOLERANCE / 2))
    assert space.below_minimum(0.49)


def test_fractions_convert_caps_and_refuse_out_of_range():
    # Bug caught: FLOPs caps not converted against each row's own full cost, or silently clamped.
    space = BudgetSpace(8, 4)
    fractions = space.fractions(["3.5T", 0.75], 2, full_llm_flops=[7e12, 1e12])
    assert fractions.tolist() == [0.5, 0.75]
    with pytest.raises(ValueError, match=r"\[0.5, 1\]"):
        space.fractions(0.3, 1)


def test_capacity_is_the_budget_minus_the_prefix():
    # Bug caught: the head planner's FLOPs capacity forgetting the prefix's cost.
    assert BudgetSpace.capacity(0.75, 10.0, 8, 4) == 0.75 * 8 * 10.0 - 4 * 10.0 == 20.0


def test_violations_allow_only_the_tolerance():
    # Bug caught: the violation check written with its own literal tolerance, or none at all.
    full = torch.tensor([100.0, 100.0, 100.0], dtype=torch.float64)
    cost = [50.0, 50.0 * (1 + RELATIVE_TOLERANCE / 2), 50.0 * (1 + 10 * RELATIVE_TOLERANCE)]
    assert BudgetSpace.violates(torch.tensor(cost, dtype=torch.float64), full, 0.5).tolist() == [
        False,
        False,
        True,
    ]


@pytest.mark.parametrize("switches,units", [("layer", (8, 4)), ("head", (8 * 4 // 2, 4 * 4 // 2))])
def test_the_model_counts_units_as_its_switch_kind_says(switches, units):
    # Bug caught: a head-switched model counting budget units as layers (rank ignored).
    model = AdaLlava.from_base(tiny_llava(seed=0), AdaptiveConfig(switches=switches, rank=2))
    assert (model.budgets.total_units, model.budgets.prefix_units) == units
    assert model.b_min == 0.5


# ---- plans are maximal: no unit left out would still fit ----------------------------------------

TEXT = TextShape(num_layers=6, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8,
                 intermediate_size=50, vocab_size=10)  # fmt: skip
PREFIX = 3
GEOMETRY = UnitGeometry(num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=50, mlp_groups=3)


def random_rows(seed: int, rows: int, b_min: float, switches: int):
    """Seeded random scheduler logits [B, S], budgets in [b_min, 1] and token counts."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, switches, generator=gen)
    fractions = b_min + (1 - b_min) * torch.rand(rows, generator=gen, dtype=torch.float64)
    tokens = torch.randint(1, 40, (rows,), generator=gen)
    return logits, fractions, tokens


# Catches: the layer planner taking one layer too few or too many (an off-by-one in floor(N b) - P, or
# the budget units ignored), or not the top-scored layers.
def test_layer_plans_take_exactly_the_layers_the_budget_buys():
    n, p = 8, 3
    planner = LayerPlanner(AdaptiveConfig().resolve(n), n, p)
    logits, fractions, tokens = random_rows(0, 64, p / n, n - p)
    units = BudgetSpace(n, p).units_for_rows(fractions)
    plan = planner.choose(logits, units, fractions, tokens, training=False, sample=False)[0]
    for row in range(64):
        k = math.floor(n * float(fractions[row])) - p  # by hand (no random budget sits on a boundary)
        assert plan.layers[row, p:].sum() == k
        top = sorted((p + logits[row].argsort(descending=True)[:k]).tolist())
        assert plan.executed_layers()[row] == list(range(p)) + top
        # maximal: one more layer (all cost the same) would exceed the budget
        assert p + k == n or (p + k + 1) / n > float(fractions[row])


def head_plans(seed: int):
    """Plans the head planner picks for random logits, budgets and token counts."""
    n, p = TEXT.num_layers, PREFIX
    adaptive = AdaptiveConfig(switches="head", rank=1, mlp_groups=3).resolve(n)
    planner = HeadPlanner(adaptive, n, p, GEOMETRY, ModelShape(TEXT))
    switches = (n - p) * (GEOMETRY.head_units + GEOMETRY.mlp_groups)
    logits, fractions, tokens = random_rows(seed, 48, p / n, switches)
    units = BudgetSpace(n * 2, p * 2).units_for_rows(fractions)
    plan = planner.choose(logits, units, fractions, tokens, training=False, sample=False)[0]
    return plan, logits, fractions, tokens


def cost_with(plan, row: int, tokens: int, switch: int | None = None) -> int:
    """Cost of the row's plan (by the cost model), with upper switch `switch` (per upper layer: head
    units, then MLP groups) also on when given."""
    sizes, units = GEOMETRY.group_sizes(), GEOMETRY.head_units
    heads = plan.heads[row].sum(-1).tolist()
    neurons = [sum(s for s, on in zip(sizes, groups, strict=True) if on) for groups in plan.mlp[row].tolist()]
    if switch is not None:
        layer, unit = divmod(switch, units + len(sizes))
        layer += PREFIX  # switches live in the upper layers
        if unit < units:
            heads[layer] += 1
        else:
            neurons[layer] += sizes[unit - units]
    return llm_prefill_flops(TEXT, tokens, head_units=heads, mlp_neurons=neurons)


def left_out(plan, row: int) -> list[int]:
    """Upper switches the row's plan left out, as flat switch indices."""
    on = torch.cat([plan.heads[row, PREFIX:], plan.mlp[row, PREFIX:]], dim=-1).flatten()
    return (~on).nonzero().flatten().tolist()


# Catches: head plans over budget (capacity without the prefix subtracted, tolerance widened), or
# plans that stop early: the first unit left out, in scheduler order, must not fit.
def test_head_plans_fit_their_budget_and_stop_only_when_the_next_unit_does_not_fit():
    plan, logits, fractions, tokens = head_plans(seed=1)
    for row in range(len(fractions)):
        count = int(tokens[row])
        budget = float(fractions[row]) * llm_prefill_flops(TEXT, count)
        assert cost_with(plan, row, count) <= budget * (1 + RELATIVE_TOLERANCE)
        skipped = left_out(plan, row)
        if skipped:
            first = max(skipped, key=lambda s: float(logits[row, s]))
            assert cost_with(plan, row, count, first) > budget * (1 + RELATIVE_TOLERANCE), row


# Catches: a plan that leaves out a unit which still fits the row's FLOPs budget.
def test_head_plans_leave_out_no_unit_that_still_fits():
    plan, _, fractions, tokens = head_plans(seed=1)
    for row in range(len(fractions)):
        count = int(tokens[row])
        budget = float(fractions[row]) * llm_prefill_flops(TEXT, count)
        for switch in left_out(plan, row):
            assert cost_with(plan, row, count, switch) > budget * (1 + RELATIVE_TOLERANCE), (row, switch)


# Catches: the tolerance dropped from the range check: a budget typed with 10 digits (0.3333333333)
# lies 1e-10 below b_min = 1/3 and is what the user meant, not an error.
def test_a_budget_a_rounding_below_b_min_is_accepted():
    space = BudgetSpace(3, 1)
    assert space.fractions(0.3333333333, 1).tolist() == [0.3333333333]
    assert space.units_for(0.3333333333) == 0
    with pytest.raises(ValueError, match=r"\[0.333333, 1\]"):
        space.fractions(0.333, 1)


# Catches: the tolerance dropped from fitting units into a FLOPs capacity: 0.57 of 100 unit-cost
# layers is 56.99999999999999 in binary, and the 7 upper units it buys must all be taken.
def test_units_that_fill_the_capacity_up_to_rounding_are_taken():
    capacity = BudgetSpace.capacity(0.57, 1.0, 100, 50)
    assert capacity < 7  # the float arithmetic that makes the tolerance necessary
    scores = -torch.arange(50.0)[None]  # [1, 50]
    taken = fit_in_order(
        scores, torch.ones(1, 50, dtype=torch.float64), torch.tensor([capacity], dtype=torch.float64)
    )
    assert taken.sum().item() == 7 and taken[0, :7].all()


def test_booleans_and_other_types_are_not_budgets():
    # Bug caught: True accepted as the fraction 1.0 (bool is an int in Python), or a list element of
    # another type passed on to a float conversion deep inside.
    for bad in (True, None, b"0.5"):
        with pytest.raises(ValueError, match="budget must be a number or a FLOPs string"):
            BudgetSpace(8, 4).fractions([bad], 1)
