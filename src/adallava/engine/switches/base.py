"""The interface of a switch kind: what one budget unit is, how the scheduler's logits become a
plan, and how a decoder layer runs under a plan of that kind. Adding a kind is adding a module beside
this one (a `SwitchKind` subclass) and naming it in `adallava.engine.switches.KINDS`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from adallava.core.config import AdaptiveConfig
from adallava.core.cost.shapes import ModelShape
from adallava.core.geometry import UnitGeometry, geometry_of
from adallava.core.plan import ExecutionPlan
from adallava.engine.cache_slots import CacheSlots
from adallava.engine.sliced import SliceCache
from adallava.engine.stack import LayerInputs
from adallava.modules.gates import UnitGates


@dataclass
class StackRun:
    """What running the decoder stack under one plan needs besides the layers' inputs: the plan's
    unit geometry (head plans), where sliced layers and head-group KV slots come from, whether head
    plans run masked (full layers, off units zeroed: one batched matmul whatever the mix of plans)
    instead of sliced, and the unit gates installed for this pass (training or masked runs)."""

    num_prefix: int
    slots: CacheSlots
    slices: SliceCache
    geometry: UnitGeometry
    masked: bool = False
    unit_gates: UnitGates | None = None


class SwitchKind(ABC):
    """One kind of switch, bound to a model's shape and adaptive config.

    Budget units: `total_units` (Nu) and `prefix_units` (Pu); a fraction b buys floor(Nu*b) - Pu
    upper units. The scheduler head has `num_switches` outputs; `planner` turns them into plans.
    Running is per plan (`run_layer`, a classmethod): an explicit plan of another kind runs as that
    kind (e.g. an early-exit layer plan on a head-switched model).
    """

    name: str  # the AdaptiveConfig.switches value that selects this kind
    label: str  # how the CLI and reports name a model with these switches
    unit_settings: tuple[str, ...] = ()  # AdaptiveConfig keys only this kind reads (e.g. rank)

    def __init__(self, adaptive: AdaptiveConfig, text_config, shape: ModelShape):
        self.adaptive, self.text_config, self.shape = adaptive, text_config, shape
        self.num_layers, self.num_prefix = text_config.num_hidden_layers, adaptive.num_prefix_layers
        self.geometry = self.unit_geometry(text_config, adaptive)

    @classmethod
    def unit_geometry(cls, text_config, adaptive: AdaptiveConfig) -> UnitGeometry:
        """Head units and MLP groups of a layer as this kind counts them (one MLP group: no neuron
        switches)."""
        return geometry_of(text_config, None)

    @property
    @abstractmethod
    def total_units(self) -> int:
        """Nu: budget units in the whole decoder stack."""

    @property
    @abstractmethod
    def prefix_units(self) -> int:
        """Pu: budget units of the prefix layers, which always run."""

    @property
    @abstractmethod
    def num_switches(self) -> int:
        """Outputs of the scheduler head."""

    @property
    @abstractmethod
    def planner(self):
        """The plan selection rule (`choose`, `deterministic`) of this kind (adallava.core.planning)."""

    @classmethod
    @abstractmethod
    def run_layer(cls, layer: nn.Module, index: int, hidden: torch.Tensor, inputs: LayerInputs,
                  plan: ExecutionPlan, gates, run: StackRun) -> torch.Tensor:  # fmt: skip
        """Decoder layer `index` under `plan`; `gates` are training switch values (or None)."""

    @classmethod
    def describe(cls, adaptive: AdaptiveConfig) -> str:
        """How the CLI names a model with these switches and settings."""
        return cls.label

    @classmethod
    def needs_unit_gates(cls, plan: ExecutionPlan, gates, run: StackRun) -> bool:
        """Whether this pass needs hooks that scale units' outputs (see `UnitGates`)."""
        return False
