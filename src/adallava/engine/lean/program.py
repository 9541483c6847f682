"""What one request's decoder stack runs, decided once at prefill: per layer, the groups of rows that
run it, on which weights, into which preallocated KV cache.

A plan is fixed after prefill, so this *program* is built once per request and replayed at every
decoding step; nothing about the plan is looked at again. A `RowGroup` is a set of rows that run a
layer together (all rows, the rows whose plan keeps a layer, or the rows sharing a head-plan group);
layers with the same rows share one group and so one slice of the step's masks and rotary tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adallava.core.plan import ExecutionPlan
from adallava.engine.lean.weights import LayerWeights


@dataclass
class RowGroup:
    """Rows (indices into the running batch; None: every row) that run some layers together, and the
    per-step inputs cut to them."""

    rows: torch.Tensor | None
    cos: torch.Tensor | None = None  # [R, 1, T, Dh] this step's rotary tables
    sin: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # bool [R, 1, T, S] or None (no padding)

    def take(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None or self.rows is None:
            return tensor
        return tensor.index_select(0, self.rows)


@dataclass
class Unit:
    """One row group running one layer: its weights and its slot of the KV cache [R, Hkv, L, Dh]."""

    weights: LayerWeights
    group: RowGroup
    keys: torch.Tensor | None
    values: torch.Tensor | None


@dataclass
class Program:
    """Per layer, the units that run it (an empty list: no row runs the layer)."""

    layers: list[list[Unit]] = field(default_factory=list)
    groups: dict[tuple, RowGroup] = field(default_factory=dict)

    def group(self, rows: torch.Tensor | None, batch: int) -> RowGroup:
        """The group of `rows` (long [R], sorted), shared by every layer those rows run."""
        if rows is not None and rows.numel() == batch:
            rows = None  # every row: no slicing at all
        key = _key(rows)
        if key not in self.groups:
            self.groups[key] = RowGroup(rows)
        return self.groups[key]

    def reindex(self, batch: int) -> None:
        """After the rows of groups changed (finished rows left the batch): key each group by its new
        rows and merge groups that now hold the same rows."""
        merged: dict[tuple, RowGroup] = {}
        for group in self.groups.values():
            if group.rows is not None and group.rows.numel() == batch:
                group.rows = None
            merged.setdefault(_key(group.rows), group)
        for units in self.layers:
            for unit in units:
                unit.group = merged[_key(unit.group.rows)]
        self.groups = merged


def _key(rows: torch.Tensor | None) -> tuple:
    return ("all",) if rows is None else tuple(rows.tolist())


def layer_row_sets(
    plan: ExecutionPlan, index: int
) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
    """The row sets that run layer `index` under `plan`: [(rows long [R], heads bool [H] or None,
    mlp bool [G] or None)]; heads/mlp None means the whole layer. Head plans group rows by their
    (heads, MLP groups) for the layer, in sorted mask order (a fixed order, as the HF path uses)."""
    layers = plan.layers[:, index].cpu()
    if plan.heads is None or bool(plan.heads[:, index].all() and plan.mlp[:, index].all()):
        rows = layers.nonzero().flatten()
        return [(rows, None, None)] if rows.numel() else []
    on = layers[:, None]
    heads, mlp = plan.heads[:, index].cpu() & on, plan.mlp[:, index].cpu() & on
    masks = torch.cat([heads, mlp], dim=-1)  # [B, H + G]
    groups, assignment = torch.unique(masks, dim=0, return_inverse=True)
    sets = []
    for number, mask in enumerate(groups):
        if bool(mask.any()):
            rows = (assignment == number).nonzero().flatten()
            sets.append((rows, mask[: heads.shape[1]], mask[heads.shape[1] :]))
    return sets
