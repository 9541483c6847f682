"""Budgets: what a request may spend, as a fraction of its full decoder-stack prefill FLOPs.

Three forms are accepted from users and turned into one per-row fraction tensor here:
a fraction in [b_min, 1], an absolute FLOPs cap (a number or a string such as "3.5T" / "800G"),
one value for the batch or one per row. Nothing is clamped: a value outside the feasible range is a
`ValueError` that names the value and the range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adallava.core.deadline import Deadline, is_deadline_text, parse_deadline

# Budgets are compared with this relative slack so that a user's 0.3 (stored as 0.29999...) buys the
# 3 of 10 units they meant; it is far below the cost of any unit.
RELATIVE_TOLERANCE = 1e-9

_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_FLOPS_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGTP]?)\s*(?:FLOPS?)?\s*$", re.I)


def parse_budget(text: str) -> float | str | Deadline:
    """A budget as a user types it: '0.6' -> 0.6 (a fraction); '300ms' / '0.3s' -> a `Deadline`
    (checked here); anything else ('2M', '3.5T') is kept as a FLOPs string for `budget_fractions` to
    check against the request's own cost."""
    if isinstance(text, str) and is_deadline_text(text):
        return parse_deadline(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_flops(text: str | float | int) -> float:
    """'3.5T' -> 3.5e12, '800G' -> 8e11, 1e12 -> 1e12. Raises ValueError on anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _FLOPS_PATTERN.match(str(text))
        if not match:
            raise ValueError(
                f"budget {text!r} is not a FLOPs amount; write a number or a number with a suffix "
                "K, M, G, T or P (e.g. '3.5T', '800G')"
            )
        value = float(match.group(1)) * _SUFFIXES[match.group(2).upper()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"budget {text!r} must be a positive, finite number of FLOPs")
    return value


def min_fraction(total_units: int, prefix_units: int) -> float:
    """b_min: the share of the decoder stack that always runs (prefix only), e.g. 0.5 for P = N/2."""
    return prefix_units / total_units


def upper_units_for_fraction(total_units: int, prefix_units: int, fraction: float) -> int:
    """Number of switchable units a budget buys when all units cost the same.

    The paper's rule (DESIGN.md): n = floor(Nu * l) - Pu, never below 0. For layer switches with
    fraction budgets of decoder-stack FLOPs this is exactly "the most layers that fit".
    """
    return max(0, math.floor(total_units * fraction * (1 + RELATIVE_TOLERANCE)) - prefix_units)


def budget_fractions(
    budget: float | str | Sequence[float | str] | torch.Tensor,
    batch_size: int,
    b_min: float,
    full_llm_flops: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise any accepted budget form to a float64 tensor [B] of fractions in [b_min, 1].

    `full_llm_flops[r]` is row r's full decoder-stack prefill FLOPs; it is needed only to turn
    absolute caps (numbers > 1 or strings like "3.5T") into fractions. Raises ValueError naming the
    bad value and the allowed range; never clamps.
    """
    values = _as_list(budget, batch_size)
    fractions = []
    for row, value in enumerate(values):
        if isinstance(value, Deadline) or (isinstance(value, str) and is_deadline_text(value)):
            raise ValueError(
                f"budget {value!r} for row {row} is a deadline; deadlines are planned by the model's latency "
                "profile in `generate` (lean engine), not converted to a fraction here"
            )
        if isinstance(value, str) or (
            isinstance(value, (int, float)) and value > 1.0 and math.isfinite(value)
        ):
            cap = parse_flops(value)
            if full_llm_flops is None:
                raise ValueError(
                    f"budget {value!r} is read as an absolute FLOPs cap (fractions lie in [{b_min:g}, 1]), "
                    "but no cost model was given to convert it"
                )
            full = float(full_llm_flops[row])
            fraction = cap / full
            if fraction < b_min * (1 - RELATIVE_TOLERANCE):
                raise ValueError(
                    f"budget {value!r} for row {row} is read as an absolute FLOPs cap and is below what the "
                    f"always-run prefix layers cost: the minimum feasible cap is {b_min * full:.4g} FLOPs "
                    f"({b_min:g} of the full decoder stack's {full:.4g} FLOPs); "
                    f"fractions lie in [{b_min:g}, 1]"
                )
            fractions.append(min(fraction, 1.0))  # a cap above the full cost buys the full model
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"budget must be a number or a FLOPs string, got {value!r} ({type(value).__name__})"
            )
        if not math.isfinite(value) or not (b_min * (1 - RELATIVE_TOLERANCE) <= value <= 1.0):
            raise ValueError(
                f"budget {value!r} for row {row} is outside the allowed range [{b_min:g}, 1] "
                f"(fraction of the full decoder-stack FLOPs; the prefix alone costs {b_min:g})"
            )
        fractions.append(float(value))
    return torch.tensor(fractions, dtype=torch.float64)


def _as_list(budget, batch_size: int) -> list:
    if isinstance(budget, torch.Tensor):
        if budget.dim() == 0:
            return [budget.item()] * batch_size
        if budget.dim() != 1:
            raise ValueError(
                f"budget tensor must be a scalar or 1-D [batch], got shape {tuple(budget.shape)}"
            )
        budget = budget.tolist()
    if isinstance(budget, (str, int, float, Deadline)):
        return [budget] * batch_size
    if not isinstance(budget, (list, tuple)):
        raise ValueError(
            f"budget must be a number, a FLOPs string, a list or a 1-D tensor, got {type(budget).__name__}"
        )
    values = list(budget)
    if len(values) == 1:
        return values * batch_size
    if len(values) != batch_size:
        raise ValueError(
            f"budget has {len(values)} values but the batch has {batch_size} rows; "
            "give one budget for the whole batch or one per row"
        )
    return values


def over_budget(
    cost: Sequence[float] | torch.Tensor,
    full_cost: Sequence[float] | torch.Tensor,
    budget: float | Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """bool [B]: rows whose cost exceeds `budget` x their full cost (a fraction, one or one per row)
    by more than RELATIVE_TOLERANCE. cost, full_cost: FLOPs [B] (compared in float64)."""
    cost = torch.as_tensor(cost, dtype=torch.float64)
    cap = torch.as_tensor(budget, dtype=torch.float64) * torch.as_tensor(full_cost, dtype=torch.float64)
    return cost > cap * (1 + RELATIVE_TOLERANCE)


@dataclass(frozen=True)
class BudgetSpace:
    """The budget rules of one model, in one place (DESIGN.md): the decoder stack has Nu budget
    units (layers, or groups of `rank` head units), Pu of them in the always-run prefix. A fraction
    b in [b_min, 1] buys floor(Nu * b) - Pu upper units; FLOPs comparisons allow RELATIVE_TOLERANCE
    so that a user's 0.3 (0.29999... in binary) buys what they meant."""

    total_units: int  # Nu
    prefix_units: int  # Pu

    @property
    def b_min(self) -> float:
        """The smallest fraction a budget may be: the prefix's share of the decoder stack."""
        return min_fraction(self.total_units, self.prefix_units)

    def below_minimum(self, fraction: float) -> bool:
        """Whether a fraction is below b_min (beyond the tolerance): it cannot be met."""
        return fraction < self.b_min * (1 - RELATIVE_TOLERANCE)

    def units_for(self, fraction: float) -> int:
        """Upper units a fraction buys: floor(Nu * b) - Pu, never below 0."""
        return upper_units_for_fraction(self.total_units, self.prefix_units, fraction)

    def units_for_rows(self, fractions: torch.Tensor) -> torch.Tensor:
        """`units_for` of each row's fraction. long [B]."""
        return torch.tensor([self.units_for(float(f)) for f in fractions], dtype=torch.long)

    def fractions(self, budget, batch_size: int, full_llm_flops=None) -> torch.Tensor:
        """Any accepted budget form -> float64 fractions [B] in [b_min, 1] (see `budget_fractions`)."""
        return budget_fractions(budget, batch_size, self.b_min, full_llm_flops)

    @staticmethod
    def capacity(fraction: float, layer_flops: float, num_layers: int, num_prefix: int) -> float:
        """FLOPs a row may spend on upper units: its budget of the full stack (N layers of
        `layer_flops` each) minus what the P prefix layers cost."""
        return fraction * num_layers * layer_flops - num_prefix * layer_flops

    @staticmethod
    def violates(cost, full_cost, budget) -> torch.Tensor:
        """bool [B]: rows whose cost exceeds budget x full cost beyond the tolerance."""
        return over_budget(cost, full_cost, budget)
