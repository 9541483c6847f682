"""Compiled prefill and decoding for the lean engine (`generate(..., compile=True)`): the prefill's
layer stacks and one decoding step of a whole plan (embedding, every layer unit, final norm, LM head)
as `torch.compile` graphs with static shapes, so the per-op framework overhead of a small model (or
the kernel launches of a large one) is paid once per graph instead of once per op.

Static shapes: the prompt (latency token included) is left-padded to a multiple of PREFILL_BUCKET,
padding masked as in any left-padded batch, so prompts of many lengths share a few graphs. The KV
cache is allocated for a bucketed length (`bucket_length`, a multiple of BUCKET) and zero-filled, a
step's keys are written with `index_copy_` at its position, and every cached position is attended to
under the validity mask. Finished rows are not dropped from a compiled batch (its shape would change);
they decode padding, as HF `generate` does.

A graph is specialised to the plan's structure (which rows run which layer, on which weights) and the
batch and length shapes, and that is the key it is kept under (`CompiledGraphs`: the first call of a
new key compiles; its time is recorded in `CompiledGraphs.events`, a warm-up, not a request's time, in
a steady state). Each key gets its own graph with Dynamo's guards switched off: the key already holds
everything the graph depends on, and evaluating ~100 tensor guards before every step cost more than a
quarter of a compiled step of the bundled model. The cache keeps `CompiledGraphs.limit` graphs, least
recently used first out.
"""

from __future__ import annotations

import time
import types
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from adallava.engine.lean.functional import decoder_layer, rms_norm

BUCKET = 64  # cache lengths
PREFILL_BUCKET = 16  # prompt lengths (left padding)


def bucket_length(length: int, bucket: int = BUCKET) -> int:
    """`length` rounded up to a multiple of `bucket` (the cache length a compiled request allocates;
    with PREFILL_BUCKET, the prompt length it runs)."""
    return -(-length // bucket) * bucket


def run_units(units, hidden, cos, sin, mask, write_at=None):
    """The layers of `units` (per layer, a list of (weights, rows or None, keys, values)) on hidden
    [B, T, D]: each unit's rows run its layer and are copied back. cos, sin [B, 1, T, Dh]; mask bool
    [B, 1, T, S] or None. write_at None: keys written at cache positions 0..T-1 (a prefill); else the
    positions of a decoding step (see `functional.attention_block`)."""
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
                None if mask is None else mask.index_select(0, rows),
                True,
                write_at,
            )
            hidden = hidden.index_copy(0, rows, out)
    return hidden


def static_prefill(units, hidden, cos, sin, mask):
    """Prefill layers with static shapes (the prompt is left-padded to a multiple of PREFILL_BUCKET):
    hidden [B, T, D] -> [B, T, D], keys and values written at 0..T-1."""
    return run_units(units, hidden, cos, sin, mask)


def static_step(
    units, tokens, embed, cos, sin, mask, write_at, norm_weight, norm_eps, head_weight, head_bias
):
    """One decoding step with static shapes. units: per layer, a list of (weights, rows or None, keys,
    values); tokens long [B]; cos, sin [B, 1, 1, Dh]; mask bool [B, 1, 1, L]; write_at long [1].
    Returns logits [B, V]."""
    hidden = torch.nn.functional.embedding(tokens, embed)[:, None]  # [B, 1, D]
    hidden = run_units(units, hidden, cos, sin, mask, write_at)
    return torch.nn.functional.linear(rms_norm(hidden[:, -1], norm_weight, norm_eps), head_weight, head_bias)


def fresh_graph(function, device: torch.device):
    """`function` compiled with static shapes and no guards, on a code object of its own: Dynamo keeps
    compiled graphs on the code object, so a graph compiled for one key is never found for another.
    On a CPU the graph's wrapper is C++ (inductor's `cpp_wrapper`): the Python wrapper's tensor
    allocations and size checks cost about as much as the kernels of a small model's step."""
    code = function.__code__.replace()  # a distinct code object, same bytecode
    function = types.FunctionType(code, function.__globals__, function.__name__)
    options = {"cpp_wrapper": True} if device.type == "cpu" else {}
    skip_guards = getattr(torch.compiler, "skip_all_guards_unsafe", None)
    if skip_guards is not None:
        options["guard_filter_fn"] = skip_guards
    return torch.compile(function, dynamic=False, options=options)


@dataclass
class CompiledGraphs:
    """Compiled graphs (`static_prefill`, `static_step`) by function and key (the plan's structure,
    batch, lengths, dtype, device): at most `limit`, least recently used first out, and a record of
    the compilations.

    key: hashable, and it must change whenever the graph's inputs change shape, dtype or meaning (no
    guard checks them). `keep`: objects whose `id()` the key uses, held as long as the graph so that
    an id is never reused while its key is cached."""

    limit: int = 64
    events: list[dict] = field(default_factory=list)  # {"key", "seconds"} per compilation
    _graphs: OrderedDict = field(default_factory=OrderedDict)  # key -> (compiled step, kept objects)

    def __call__(self, function, key: tuple, keep, device: torch.device, *args):
        key = (function.__name__, key)
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
            return entry[0](*args)
        graph = fresh_graph(function, device)
        started = time.perf_counter()
        out = graph(*args)
        self.events.append({"key": repr(key), "seconds": time.perf_counter() - started})
        self._graphs[key] = (graph, keep)
        while len(self._graphs) > self.limit:
            self._graphs.popitem(last=False)
        return out
