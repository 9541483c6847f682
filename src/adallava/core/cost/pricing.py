"""Prices what a batch ran: the analytic cost model (`adallava.cost`) applied row by row.

`cost.py` is pure and works on one row with plain numbers; this module turns tensors (attention
masks, plans) into those numbers and collects the per-row `Cost`s of a batch in a `BatchCost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from adallava.core.cost.flops import Cost, decode_cost, decode_step_cost, llm_prefill_flops, prefill_cost
from adallava.core.cost.shapes import ModelShape
from adallava.core.geometry import mlp_group_sizes
from adallava.core.plan import ExecutionPlan


@dataclass(frozen=True)
class BatchCost:
    """Per-row costs of one phase. `vision`, `llm`, `lm_head`, `total`: float64 FLOPs tensors [B]."""

    rows: tuple[Cost, ...]

    def _column(self, name: str) -> torch.Tensor:
        return torch.tensor([float(getattr(row, name)) for row in self.rows], dtype=torch.float64)

    @property
    def vision(self) -> torch.Tensor:
        return self._column("vision")

    @property
    def llm(self) -> torch.Tensor:
        return self._column("llm")

    @property
    def lm_head(self) -> torch.Tensor:
        return self._column("lm_head")

    @property
    def total(self) -> torch.Tensor:
        return self._column("total")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> Cost:
        return self.rows[row]

    def __add__(self, other: BatchCost) -> BatchCost:
        """Row by row, the cost of both (e.g. decoding steps before and after a plan change)."""
        if len(self) != len(other):
            raise ValueError(f"cannot add costs of {len(self)} and {len(other)} rows")
        return BatchCost(tuple(a + b for a, b in zip(self.rows, other.rows, strict=True)))

    def summary(self, row: int) -> dict[str, int]:
        """{vision, llm, lm_head, total} FLOPs of one row, JSON-ready."""
        cost = self.rows[row]
        return {"vision": cost.vision, "llm": cost.llm, "lm_head": cost.lm_head, "total": cost.total}


def _plan_rows(shape: ModelShape, plan: ExecutionPlan | None, batch: int) -> list[dict]:
    """Per-row keyword arguments of the cost functions for a plan (None: everything runs), as
    tuples so that identical rows hit the price cache."""
    if plan is None:
        return [{} for _ in range(batch)]
    layers = [tuple(row) for row in plan.layers.cpu().tolist()]
    if plan.heads is None:
        return [{"layers": row} for row in layers]
    head_units = [tuple(row) for row in plan.heads.sum(-1).cpu().tolist()]  # [B][N]
    sizes = torch.tensor(mlp_group_sizes(shape.text.intermediate_size, plan.mlp.shape[-1]), dtype=torch.long)
    neurons = [tuple(row) for row in (plan.mlp.cpu().long() * sizes).sum(-1).tolist()]  # [B][N]
    return [
        {"layers": layers[r], "head_units": head_units[r], "mlp_neurons": neurons[r]} for r in range(batch)
    ]


# Serving and evaluation price the same (shape, tokens, plan) again and again; the cost model is
# pure, so its answers are cached. Pricing a cached row takes about a microsecond.
_prefill_cost = lru_cache(maxsize=65536)(prefill_cost)
_decode_step_cost = lru_cache(maxsize=65536)(decode_step_cost)


def full_llm_flops(shape: ModelShape, tokens: torch.Tensor) -> list[int]:
    """Full decoder-stack prefill FLOPs of each row (what a budget fraction is a fraction of)."""
    return [llm_prefill_flops(shape.text, int(t)) for t in tokens.tolist()]


def price_prefill(
    shape: ModelShape,
    tokens: torch.Tensor,
    image_tokens: torch.Tensor,
    logits_tokens: torch.Tensor,
    plan: ExecutionPlan | None,
    with_vision: bool,
    num_images: torch.Tensor | None = None,
) -> BatchCost:
    """Cost of a prefill. tokens / image_tokens / logits_tokens: long [B] real tokens per row (image
    tokens included, latency token included), of them visual tokens, positions through lm_head.
    num_images: images per row through the tower (default: visual tokens / tokens per image; give it
    when visual tokens were selected, e.g. by PruMerge)."""
    per_image = shape.image_tokens_per_image if shape.vision is not None else 0
    rows = []
    for r, kwargs in enumerate(_plan_rows(shape, plan, len(tokens))):
        image_count = int(image_tokens[r])
        if not with_vision:
            images = 0
        elif num_images is not None:
            images = int(num_images[r])
        else:
            images = image_count // per_image if per_image else 0
        rows.append(
            _prefill_cost(
                shape,
                image_tokens=image_count,
                text_tokens=int(tokens[r]) - image_count,
                logits_tokens=int(logits_tokens[r]),
                num_images=images,
                **kwargs,
            )
        )
    return BatchCost(tuple(rows))


def price_decode_step(shape: ModelShape, contexts: torch.Tensor, plan: ExecutionPlan | None) -> BatchCost:
    """Cost of one decoding step per row; contexts: long [B] keys attended (past + 1)."""
    rows = _plan_rows(shape, plan, len(contexts))
    return BatchCost(
        tuple(_decode_step_cost(shape, int(c), **kw) for c, kw in zip(contexts.tolist(), rows, strict=True))
    )


def price_decode(
    shape: ModelShape, past_tokens: torch.Tensor, new_tokens: torch.Tensor, plan: ExecutionPlan | None
) -> BatchCost:
    """Cost of `new_tokens[b]` decoding steps after `past_tokens[b]` cached positions, per row."""
    rows = _plan_rows(shape, plan, len(past_tokens))
    return BatchCost(
        tuple(
            decode_cost(shape, int(p), int(n), **kw)
            for p, n, kw in zip(past_tokens.tolist(), new_tokens.tolist(), rows, strict=True)
        )
    )
