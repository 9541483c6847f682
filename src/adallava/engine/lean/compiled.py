"""Compiled decoding steps for the lean engine (`generate(..., compile=True)`): one decoding step of a
whole plan (embedding, every layer unit, final norm, LM head) as a `torch.compile` graph with static
shapes, so the per-op framework overhead of a small model (or the kernel launches of a large one) is
paid once per step instead of once per op.

Static shapes need a cache whose length does not change: the KV cache is allocated for a bucketed
length (`bucket_length`, a multiple of 64) and zero-filled, keys are written with `index_copy_` at the
step's position, and every cached position is attended to under the validity mask. Finished rows are
not dropped from a compiled batch (its shape would change); they decode padding, as HF `generate`
does. A graph is specialised to the plan's structure (which rows run which layer, on which weights)
and the batch and cache shapes: the first step of a new (plan, batch, length) compiles, and its time
is recorded in `CompiledSteps.events` (a warm-up, not a request's time, in a steady state); graphs are
kept by torch's own compile cache, bounded by `torch._dynamo.config.recompile_limit` per function,
beyond which steps run eagerly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from adallava.engine.lean.functional import decoder_layer, rms_norm

BUCKET = 64


def bucket_length(length: int) -> int:
    """The cache length a compiled request allocates: `length` rounded up to a multiple of BUCKET."""
    return -(-length // BUCKET) * BUCKET


def static_step(
    units, tokens, embed, cos, sin, mask, write_at, norm_weight, norm_eps, head_weight, head_bias
):
    """One decoding step with static shapes. units: per layer, a list of (weights, rows or None, keys,
    values); tokens long [B]; cos, sin [B, 1, 1, Dh]; mask bool [B, 1, 1, L]; write_at long [1].
    Returns logits [B, V]."""
    hidden = torch.nn.functional.embedding(tokens, embed)[:, None]  # [B, 1, D]
    for layer in units:
        for weights, rows, keys, values in layer:
            if rows is None:
                hidden = decoder_layer(weights, hidden, cos, sin, keys, values, 0, mask, True, write_at)
                continue
            out = decoder_layer(
                weights,
                hidden.index_select(0, rows),
                cos.index_select(0, rows),
                sin.index_select(0, rows),
                keys,
                values,
                0,
                mask.index_select(0, rows),
                True,
                write_at,
            )
            hidden = hidden.index_copy(0, rows, out)
    return torch.nn.functional.linear(rms_norm(hidden[:, -1], norm_weight, norm_eps), head_weight, head_bias)


@dataclass
class CompiledSteps:
    """The compiled step function and a record of its compilations."""

    events: list[dict] = field(default_factory=list)  # {"key", "seconds"} per first use of a key
    _seen: set = field(default_factory=set)
    _step: object | None = None

    def __call__(self, key: tuple, *args):
        if self._step is None:
            self._step = torch.compile(static_step, dynamic=False)
        if key in self._seen:
            return self._step(*args)
        started = time.perf_counter()
        out = self._step(*args)
        self._seen.add(key)
        self.events.append({"key": repr(key), "seconds": time.perf_counter() - started})
        return out
