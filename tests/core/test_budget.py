"""BudgetSpace: the budget rules in one place, checked against hand computations (DESIGN.md)."""

from __future__ import annotations

import pytest
import torch

from adallava.core.budget import RELATIVE_TOLERANCE, BudgetSpace
from adallava.core.config import AdaptiveConfig
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
