"""Compiled decoding steps for the lean engine (`generate(..., compile=True)`): one decoding step of a
whole plan (embedding, every layer unit, final norm, LM head) as a `torch.compile` graph with static
shapes, so the per-op framework overhead of a small model (or the kernel launches of a large one) is
paid once per step instead of once per op.

Static shapes need a cache whose length does not change: the KV cache is allocated for a bucketed
length (`bucket_length`, a multiple of 64) and zero-filled, keys are written with `index_copy_` at the
step's position, and every cached position is attended to under the validity mask. Finished rows are
not dropped from a compiled batch (its shape would change); they decode padding, as HF `generate`
does. A graph is specialised to the plan's structure (which rows run which layer, on which weights)
and the batch and cache shapes, and that is the key it is kept under (`CompiledSteps`: the first step of
a new key compiles; its time is recorded in `CompiledSteps.events`, a warm-up, not a request's time, in
a steady state). Each key gets its own graph with Dynamo's guards switched off: the key already holds
everything the graph depends on, and evaluating ~100 tensor guards before every step cost more than a
quarter of a compiled step of the bundled model. The cache keeps `CompiledSteps.limit` graphs, least
recently used first out.
"""

from __future__ import annotations

import time
import types
from collections import OrderedDict
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


def fresh_step(device: torch.device):
    """`static_step` compiled with static shapes and no guards, on a code object of its own: Dynamo keeps
    compiled graphs on the code object, so a graph compiled for one key is never found for another.
    On a CPU the graph's wrapper is C++ (inductor's `cpp_wrapper`): the Python wrapper's tensor
    allocations and size checks cost about as much as the kernels of a small model's step."""
    code = static_step.__code__.replace()  # a distinct code object, same bytecode
    function = types.FunctionType(code, static_step.__globals__, static_step.__name__)
    options = {"cpp_wrapper": True} if device.type == "cpu" else {}
    skip_guards = getattr(torch.compiler, "skip_all_guards_unsafe", None)
    if skip_guards is not None:
        options["guard_filter_fn"] = skip_guards
    return torch.compile(function, dynamic=False, options=options)


@dataclass
class CompiledSteps:
    """Compiled step graphs by key (the plan's structure, batch, cache length, dtype, device): at most
    `limit`, least recently used first out, and a record of the compilations.

    key: hashable, and it must change whenever the graph's inputs change shape, dtype or meaning (no
    guard checks them). `keep`: objects whose `id()` the key uses, held as long as the graph so that
    an id is never reused while its key is cached."""

    limit: int = 32
    events: list[dict] = field(default_factory=list)  # {"key", "seconds"} per compilation
    _graphs: OrderedDict = field(default_factory=OrderedDict)  # key -> (compiled step, kept objects)

    def __call__(self, key: tuple, keep, device: torch.device, *args):
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
            return entry[0](*args)
        step = fresh_step(device)
        started = time.perf_counter()
        out = step(*args)
        self.events.append({"key": repr(key), "seconds": time.perf_counter() - started})
        self._graphs[key] = (step, keep)
        while len(self._graphs) > self.limit:
            self._graphs.popitem(last=False)
        return out
