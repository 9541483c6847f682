"""ExecutionPlan: which parts of the decoder stack run, per row of a batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ExecutionPlan:
    """Per-row switch states. `layers[b, i]` is True when layer i runs for row b.

    For head switches `heads[b, i, h]` / `mlp[b, i, g]` say which head units / MLP neuron groups of
    layer i run; a layer whose units are all off is off in `layers` too. `cost` optionally holds the
    per-row cost the plan was priced at (set by the model).
    """

    layers: torch.Tensor  # bool [B, N]
    heads: torch.Tensor | None = None  # bool [B, N, H]
    mlp: torch.Tensor | None = None  # bool [B, N, G]
    cost: object | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.layers.dtype != torch.bool or self.layers.dim() != 2:
            raise ValueError(
                f"plan.layers must be a bool tensor [batch, layers], got {self.layers.dtype} "
                f"{tuple(self.layers.shape)}"
            )
        if (self.heads is None) != (self.mlp is None):
            raise ValueError("plan.heads and plan.mlp must be given together (head switches) or not at all")
        for name in ("heads", "mlp"):
            mask = getattr(self, name)
            if mask is not None and (
                mask.dtype != torch.bool
                or mask.dim() != 3
                or tuple(mask.shape[:2]) != tuple(self.layers.shape)
            ):
                raise ValueError(
                    f"plan.{name} must be a bool tensor [batch, layers, units] matching plan.layers "
                    f"{tuple(self.layers.shape)}, got {mask.dtype} {tuple(mask.shape)}"
                )

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_layers(cls, num_layers: int, executed: Sequence[Sequence[int]]) -> ExecutionPlan:
        """A layer plan from the executed layer indices of each row, e.g. [[0, 1, 2, 3, 5], ...]."""
        layers = torch.zeros(len(executed), num_layers, dtype=torch.bool)
        for row, indices in enumerate(executed):
            for index in indices:
                if not 0 <= int(index) < num_layers:
                    raise ValueError(f"plan row {row}: layer index {index} is outside [0, {num_layers - 1}]")
                layers[row, int(index)] = True
        return cls(layers)

    @classmethod
    def from_masks(
        cls, layers: torch.Tensor, heads: torch.Tensor | None = None, mlp: torch.Tensor | None = None
    ) -> ExecutionPlan:
        """A plan from boolean masks; layers with every head and group off are switched off."""
        layers = layers.bool()
        if heads is not None and mlp is not None:
            heads, mlp = heads.bool(), mlp.bool()
            layers = layers & (heads.any(-1) | mlp.any(-1))
        return cls(layers, heads, mlp)

    @classmethod
    def full(cls, batch_size: int, num_layers: int) -> ExecutionPlan:
        return cls(torch.ones(batch_size, num_layers, dtype=torch.bool))

    @classmethod
    def early_exit(cls, batch_size: int, num_layers: int, layers_run: int) -> ExecutionPlan:
        """The naive truncation baseline: the first `layers_run` layers run, the rest are skipped."""
        layers = torch.zeros(batch_size, num_layers, dtype=torch.bool)
        layers[:, :layers_run] = True
        return cls(layers)

    # ---- views --------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.layers.shape[0]

    @property
    def num_layers(self) -> int:
        return self.layers.shape[1]

    @property
    def kind(self) -> str:
        return "layer" if self.heads is None else "head"

    def executed_layers(self) -> list[list[int]]:
        """Indices of the layers each row runs."""
        return [row.nonzero().flatten().tolist() for row in self.layers.cpu()]

    def rows(self, index: torch.Tensor | Sequence[int]) -> ExecutionPlan:
        """The plan of a subset of rows (in the given order)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.layers.device)
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def to(self, device: torch.device | str) -> ExecutionPlan:
        return self._map(lambda t: t.to(device), keep_cost=True)

    def expand(self, batch_size: int) -> ExecutionPlan:
        """Broadcast a one-row plan to `batch_size` rows; a plan that already has them is returned as is."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(
                f"plan has {self.batch_size} rows but the batch has {batch_size}; "
                "give one plan row for the batch or one per row"
            )
        return self._map(lambda t: t.expand(batch_size, *t.shape[1:]).clone())

    def _map(self, fn, keep_cost: bool = False) -> ExecutionPlan:
        """Apply `fn` to every mask (heads/mlp only when present)."""
        heads = None if self.heads is None else fn(self.heads)
        mlp = None if self.mlp is None else fn(self.mlp)
        return ExecutionPlan(fn(self.layers), heads, mlp, self.cost if keep_cost else None)

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {"kind": self.kind, "num_layers": self.num_layers, "layers": self.executed_layers()}
        if self.heads is not None:
            data["heads"] = self.heads.cpu().int().tolist()
            data["mlp"] = self.mlp.cpu().int().tolist()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> ExecutionPlan:
        plan = cls.from_layers(int(data["num_layers"]), data["layers"])
        if data.get("heads") is not None:
            return cls.from_masks(
                plan.layers, torch.tensor(data["heads"]).bool(), torch.tensor(data["mlp"]).bool()
            )
        return plan

    def __repr__(self) -> str:
        lines = [f"ExecutionPlan(kind={self.kind}, batch={self.batch_size}, layers={self.num_layers})"]
        for row, mask in enumerate(self.layers.cpu()):
            strip = "".join("█" if on else "·" for on in mask.tolist())
            lines.append(f"  row {row}: {strip}  ({int(mask.sum())}/{self.num_layers} layers)")
        return "\n".join(lines)
