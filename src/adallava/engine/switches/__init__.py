"""One module per switch kind: what a budget unit is, how plans are chosen, how a row runs a decoder
layer under its plan. `KINDS` names them; `kind_of(plan)` is the kind a plan runs as."""

from __future__ import annotations

from adallava.core.plan import ExecutionPlan
from adallava.engine.switches.base import StackRun, SwitchKind
from adallava.engine.switches.head import HeadSwitches
from adallava.engine.switches.layer import LayerSwitches

KINDS: dict[str, type[SwitchKind]] = {kind.name: kind for kind in (LayerSwitches, HeadSwitches)}


def switch_kind(name: str) -> type[SwitchKind]:
    """The switch kind an `AdaptiveConfig.switches` value names."""
    if name not in KINDS:
        raise ValueError(f"unknown switch kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


def unit_settings_of_other_kinds(kind: type[SwitchKind]) -> set[str]:
    """AdaptiveConfig keys that other kinds read and `kind` ignores (e.g. rank for layer switches)."""
    return {key for other in KINDS.values() for key in other.unit_settings} - set(kind.unit_settings)


def kind_of(plan: ExecutionPlan) -> type[SwitchKind]:
    """The kind a plan runs as (a plan with unit masks is a head plan)."""
    return KINDS[plan.kind]


__all__ = [
    "KINDS",
    "HeadSwitches",
    "LayerSwitches",
    "StackRun",
    "SwitchKind",
    "kind_of",
    "switch_kind",
    "unit_settings_of_other_kinds",
]
