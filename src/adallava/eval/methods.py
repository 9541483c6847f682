"""Plan providers for evaluation: what runs for each question at each budget.

* `adaptive`: the model's scheduler under the budget (the latency token is inserted; AdaLLaVA).
* `early-exit`: the paper's naive truncation: at budget b, layers 0..floor(N*b)-1 run, the rest are
  skipped (works on any Llava, the adaptive model's own weights included).
* `random`: the P prefix layers plus a random set of as many upper layers as the budget buys
  (floor(N*b) - P). Each question's order of upper layers is drawn from (seed, benchmark, question), so
  a plan never depends on the batch and a larger budget adds layers to a smaller budget's plan.
* `static`: the prefix plus the one fixed set of upper layers, per budget, that scored best on validation
  data (`search_static`: every subset when N - P <= 8, else greedy).
* `full`: every layer, the unmodified model (`budget=None`); one result at budget 1.0.

Providers only decide plans; `adallava.eval.engine` runs them. Each returns the keyword arguments of
`AdaLlava.generate` / `AdaLlava.forward` for one batch.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from adallava.core.budget import RELATIVE_TOLERANCE, BudgetSpace
from adallava.core.plan import ExecutionPlan

EXHAUSTIVE_MAX_UPPER = 8
"""Static search tries every subset when the model has at most this many upper layers (C(8, 4) = 70)."""


@dataclass(frozen=True)
class Depth:
    """The decoder stack a plan is made for: N layers, of which the first P always run."""

    num_layers: int
    num_prefix: int

    @property
    def num_upper(self) -> int:
        return self.num_layers - self.num_prefix

    @property
    def budgets(self) -> BudgetSpace:
        """Budget units are layers here: plans for layer switches (baselines)."""
        return BudgetSpace(self.num_layers, self.num_prefix)

    @property
    def b_min(self) -> float:
        return self.budgets.b_min


# ---- pure plan rules ----------------------------------------------------------------------------------
def early_exit_layers(num_layers: int, budget: float) -> int:
    """Layers the naive truncation runs at `budget`: floor(N * b) (at least layer 0), the most that fit."""
    return max(1, math.floor(num_layers * budget * (1 + RELATIVE_TOLERANCE)))


def upper_layers_for(depth: Depth, budget: float) -> int:
    """Upper layers a budget buys with the prefix always on: floor(N * b) - P. A budget below the prefix's
    share P / N cannot be met and is a ValueError."""
    if depth.budgets.below_minimum(budget):
        raise ValueError(
            f"budget {budget:g} is below what the {depth.num_prefix} always-run prefix layers of "
            f"{depth.num_layers} cost ({depth.b_min:g}); --budgets must be >= {depth.b_min:g} for this method"
        )
    return depth.budgets.units_for(budget)


def random_upper_order(num_upper: int, key: str, seed: int) -> list[int]:
    """A permutation of 0..num_upper-1 drawn from a generator seeded by a hash of (seed, key)."""
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.randperm(num_upper, generator=generator).tolist()


def plan_with_upper(depth: Depth, upper: Sequence[Sequence[int]]) -> ExecutionPlan:
    """A layer plan per row: the prefix plus the given upper layers (absolute layer indices)."""
    rows = [[*range(depth.num_prefix), *sorted(layers)] for layers in upper]
    for layers in upper:
        if any(not depth.num_prefix <= layer < depth.num_layers for layer in layers):
            raise ValueError(
                f"upper layers {list(layers)} must lie in [{depth.num_prefix}, {depth.num_layers - 1}]"
            )
    return ExecutionPlan.from_layers(depth.num_layers, rows)


# ---- static search ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StaticChoice:
    """The best fixed set of `k` upper layers found on validation data."""

    k: int
    upper: tuple[int, ...]
    """Absolute indices of the chosen upper layers."""
    validation_score: float | None
    """Primary score on the validation data (None when there was nothing to choose: k = 0 or N - P)."""
    search: str
    """'exhaustive', 'greedy' or 'forced' (a single candidate)."""
    evaluated: int
    """Candidate plans scored for this k (evaluations shared with other k are counted once per k)."""

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "upper": list(self.upper),
            "validation_score": self.validation_score,
            "search": self.search,
            "evaluated": self.evaluated,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> StaticChoice:
        return cls(
            int(data["k"]), tuple(data["upper"]), data["validation_score"], data["search"], data["evaluated"]
        )


def search_static(
    depth: Depth, ks: Sequence[int], evaluate: Callable[[tuple[int, ...]], float]
) -> dict[int, StaticChoice]:
    """For each k, the set of k upper layers with the best `evaluate(upper_layers)` score. Every subset is
    tried when N - P <= EXHAUSTIVE_MAX_UPPER; otherwise greedy forward selection (add the layer that helps
    most, one at a time; one pass serves every k). Ties go to the earlier candidate (lower layers).
    `evaluate` is called at most once per subset."""
    upper = tuple(range(depth.num_prefix, depth.num_layers))
    scores: dict[tuple[int, ...], float] = {}

    def score(subset: tuple[int, ...]) -> float:
        if subset not in scores:
            scores[subset] = float(evaluate(subset))
        return scores[subset]

    def best(candidates: list[tuple[int, ...]]) -> tuple[tuple[int, ...], float]:
        values = [score(c) for c in candidates]
        top = max(range(len(values)), key=lambda i: (values[i], -i))
        return candidates[top], values[top]

    choices: dict[int, StaticChoice] = {}
    for k in sorted(set(ks)):
        if not 0 <= k <= len(upper):
            raise ValueError(f"cannot choose {k} of {len(upper)} upper layers")
        if k in (0, len(upper)):
            choices[k] = StaticChoice(k, upper[:k], None, "forced", 0)
    wanted = sorted(k for k in set(ks) if k not in choices)
    if not wanted:
        return choices
    if len(upper) <= EXHAUSTIVE_MAX_UPPER:
        for k in wanted:
            candidates = list(itertools.combinations(upper, k))
            subset, value = best(candidates)
            choices[k] = StaticChoice(k, subset, value, "exhaustive", len(candidates))
        return choices
    chosen: tuple[int, ...] = ()
    evaluated = 0
    for k in range(1, wanted[-1] + 1):
        candidates = [tuple(sorted((*chosen, layer))) for layer in upper if layer not in chosen]
        evaluated += len(candidates)
        chosen, value = best(candidates)
        if k in wanted:
            choices[k] = StaticChoice(k, chosen, value, "greedy", evaluated)
    return choices


# ---- providers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Adaptive:
    """The model's own scheduler at the budget."""

    name: str = "adaptive"

    def check(self, depth: Depth, budgets: Sequence[float], adaptive: bool) -> None:
        if not adaptive:
            raise ValueError(
                "--methods adaptive needs an adallava checkpoint (a folder with adaptive_config.json); this "
                "model is a plain HF Llava: evaluate it with early-exit, random, static or full"
            )
        low = [b for b in budgets if depth.budgets.below_minimum(b)]
        if low:
            raise ValueError(
                f"--budgets {low[0]:g} is below the model's smallest budget b_min = {depth.b_min:g} (its "
                f"{depth.num_prefix} of {depth.num_layers} layers always run)"
            )

    def budgets(self, budgets: Sequence[float]) -> tuple[float, ...]:
        return tuple(budgets)

    def kwargs(self, benchmark: str, keys: Sequence[str], budget: float) -> dict:
        return {"budget": budget}


@dataclass(frozen=True)
class EarlyExit:
    """Layers 0..floor(N*b)-1."""

    depth: Depth
    name: str = "early-exit"

    def check(self, depth: Depth, budgets: Sequence[float], adaptive: bool) -> None:
        pass  # any budget in (0, 1] leaves at least layer 0

    def budgets(self, budgets: Sequence[float]) -> tuple[float, ...]:
        return tuple(budgets)

    def kwargs(self, benchmark: str, keys: Sequence[str], budget: float) -> dict:
        layers = early_exit_layers(self.depth.num_layers, budget)
        return {"plan": ExecutionPlan.early_exit(len(keys), self.depth.num_layers, layers)}


class _ChoosesUpperLayers:
    """Methods that pick the upper layers a budget buys themselves: every budget must cover the
    always-run prefix (`upper_layers_for` raises otherwise), and each is run as given."""

    def check(self, depth: Depth, budgets: Sequence[float], adaptive: bool) -> None:
        for budget in budgets:
            upper_layers_for(depth, budget)

    def budgets(self, budgets: Sequence[float]) -> tuple[float, ...]:
        return tuple(budgets)


@dataclass(frozen=True)
class RandomPlans(_ChoosesUpperLayers):
    """The prefix plus a per-question random choice of the upper layers the budget buys."""

    depth: Depth
    seed: int = 0
    name: str = "random"

    def kwargs(self, benchmark: str, keys: Sequence[str], budget: float) -> dict:
        k = upper_layers_for(self.depth, budget)
        upper = [
            [
                self.depth.num_prefix + i
                for i in random_upper_order(self.depth.num_upper, f"{benchmark}/{key}", self.seed)[:k]
            ]
            for key in keys
        ]
        return {"plan": plan_with_upper(self.depth, upper)}


@dataclass(frozen=True)
class StaticPlans(_ChoosesUpperLayers):
    """One fixed plan per (benchmark, budget), chosen on validation data (`search_static`)."""

    depth: Depth
    choices: Mapping[str, Mapping[int, StaticChoice]] = field(default_factory=dict)
    name: str = "static"

    def kwargs(self, benchmark: str, keys: Sequence[str], budget: float) -> dict:
        k = upper_layers_for(self.depth, budget)
        choice = self.choices.get(benchmark, {}).get(k)
        if choice is None:
            raise ValueError(f"static: no plan was chosen for {benchmark} with {k} upper layers")
        return {"plan": plan_with_upper(self.depth, [choice.upper] * len(keys))}


@dataclass(frozen=True)
class Full:
    """The unmodified model: no latency token, no plan."""

    name: str = "full"

    def check(self, depth: Depth, budgets: Sequence[float], adaptive: bool) -> None:
        pass

    def budgets(self, budgets: Sequence[float]) -> tuple[float, ...]:
        return (1.0,)

    def kwargs(self, benchmark: str, keys: Sequence[str], budget: float) -> dict:
        return {}
