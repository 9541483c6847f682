"""The lean prefill and decode loop: one request batch from prompt to tokens with nothing rebuilt
that did not change.

Per request: the KV cache is preallocated per layer and per row group (rows that run a layer only),
the rotary tables are cut once from a table kept per model, the key-validity mask is one bool tensor
[B, L] updated in place, and the plan's `Program` (which rows run which layer, on which weights) is
built once after the prefill. A decoding step is then an embedding lookup, the program's layers
(`functional.decoder_layer`), the final norm and the LM head. Rows that finish (end of sequence, or a
stopping criterion such as a client that left) are dropped from the running batch, their cache rows
with them, so finished work is not computed.

The prefill shares the adaptive decoder's own stages (embedding, latency token, scheduler, pricing),
so plans and costs are those of `forward`; only the layers are run here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from adallava.core.plan import ExecutionPlan
from adallava.engine.lean.compiled import (
    PREFILL_BUCKET,
    CompiledGraphs,
    bucket_length,
    static_prefill,
    static_step,
)
from adallava.engine.lean.functional import decoder_layer, rms_norm, rotary_tables
from adallava.engine.lean.program import Program, Unit, layer_row_sets
from adallava.engine.lean.sampling import Sampling, TokenChooser
from adallava.engine.lean.weights import WeightsCache


class LeanEngine:
    """Per-model state of the lean engine: layer weights read once (and re-read when they change)
    and the rotary tables, computed once for the longest request so far."""

    def __init__(self):
        self.weights = WeightsCache()
        self._rotary: tuple | None = None  # (stamp, cos [P, Dh], sin [P, Dh])
        self.sampling_memo: dict = {}  # resolved generation options (`sampling.resolve_sampling`)
        self.compiled = CompiledGraphs()  # compiled prefill and steps (generate(..., compile=True))
        self.structure_memo: dict = {}  # `weights.unsupported_reason`'s per-layer verdict

    def clear(self) -> None:
        self.weights.clear()
        self._rotary = None
        self.sampling_memo.clear()
        self.structure_memo.clear()

    def rotary_tables(self, text_model, positions: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin (`functional.rotary_tables`) [P >= positions, Dh] for positions 0..P-1 as the
        HF rotary module computes them (its scaling included); a position's table does not depend on
        the others."""
        rotary = text_model.rotary_emb
        inv_freq = getattr(rotary, "inv_freq", None)
        stamp = (dtype, device, None if inv_freq is None else (inv_freq.data_ptr(), inv_freq._version))
        if self._rotary is None or self._rotary[0] != stamp or self._rotary[1].shape[0] < positions:
            size = max(positions, 256 if self._rotary is None else 2 * self._rotary[1].shape[0])
            probe = torch.zeros(1, 1, 1, dtype=dtype, device=device)
            ids = torch.arange(size, device=device)[None]
            cos, sin = rotary(probe, position_ids=ids)
            self._rotary = (stamp, *rotary_tables(cos[0], sin[0]))
        return self._rotary[1], self._rotary[2]


@dataclass
class LeanResult:
    """What a lean generate call produced: sequences [B, T + G] (prompt as run, then new tokens),
    per-step raw logits / processed scores when asked for, and the wall-clock split."""

    sequences: torch.Tensor
    logits: tuple | None
    scores: tuple | None
    prefill_ms: float
    decode_ms: float


class _Batch:
    """The running batch: its rows' KV caches (inside the program's units), key validity, next
    positions, and which original rows they are."""

    def __init__(self, program: Program, valid: torch.Tensor, next_positions: torch.Tensor, length: int):
        self.program = program
        self.valid = valid  # bool [B, L]: cache positions each row may attend to
        self.next_positions = next_positions  # long [B]: rotary position of each row's next token
        self.length = length  # cache positions filled (the same for every row: left padding)
        self.has_pads = not bool(valid[:, :length].all())
        self.original_rows = torch.arange(valid.shape[0], device=valid.device)  # long [B]
        self.compiled_inputs: tuple | None = None  # compiled decoding: units, graph key, kept, tensors

    @property
    def size(self) -> int:
        return self.valid.shape[0]

    def drop(self, keep: torch.Tensor) -> None:
        """Keep only the rows with keep[b] True (bool [B]), in every cache slot and row group."""
        kept = keep.nonzero().flatten()
        new_index = torch.cumsum(keep.long(), 0) - 1  # old row -> new row
        kept_in: dict[int, torch.Tensor] = {}  # id(group) -> positions of its rows that stay
        for group in self.program.groups.values():
            if group.rows is None:
                kept_in[id(group)] = kept
            else:
                stays = keep.index_select(0, group.rows).nonzero().flatten()  # [R']
                kept_in[id(group)] = stays
                group.rows = new_index.index_select(0, group.rows.index_select(0, stays))
        for units in self.program.layers:
            for unit in units:
                if unit.keys is not None:
                    unit.keys = unit.keys.index_select(0, kept_in[id(unit.group)])
                    unit.values = unit.values.index_select(0, kept_in[id(unit.group)])
        self.program.reindex(int(kept.numel()))
        self.valid = self.valid.index_select(0, kept)
        self.next_positions = self.next_positions.index_select(0, kept)
        self.original_rows = self.original_rows.index_select(0, kept)


def run_layers(program: Program, hidden: torch.Tensor, start: int, layers: range) -> torch.Tensor:
    """Layers `layers` of the program on hidden [B, T, D], new keys written at cache position `start`."""
    for index in layers:
        for unit in program.layers[index]:
            group = unit.group
            if group.rows is not None and group.rows.numel() == 0:
                continue  # every row of this group has finished
            rows_hidden = group.take(hidden)
            out = decoder_layer(
                unit.weights,
                rows_hidden,
                group.cos,
                group.sin,
                unit.keys,
                unit.values,
                start,
                group.mask,
                causal=True,
            )
            hidden = out if group.rows is None else hidden.index_copy(0, group.rows, out)
    return hidden


def set_step_inputs(
    program: Program, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
) -> None:
    """Cut this step's rotary tables [B, 1, T, Dh] and mask [B, 1, T, S] to each row group."""
    for group in program.groups.values():
        group.cos, group.sin, group.mask = group.take(cos), group.take(sin), group.take(mask)


def lean_generate(
    model,
    input_ids,
    attention_mask,
    pixel_values,
    budget,
    plan,
    sampling: Sampling,
    sink: dict,
    streamer=None,
    stopping_criteria=None,
    generator=None,
    compile: bool = False,
    monitor=None,
    speculative=None,
) -> LeanResult:
    """Prefill then decode, greedy or sampled, for a left-padded batch. `sink` receives the prefill's
    plan, budget and costs (as `forward` records them for HF `generate`), and the plan changes a
    `monitor` made. monitor(tokens_done) -> upper units to keep per row for the remaining tokens, or
    None: a deadline request falling behind drops upper layers mid-answer (layer plans, eager only;
    see `LayerDropper`). speculative: a `speculative.SpeculativeConfig` (greedy, eager, layer plans):
    the decode loop drafts with a cheaper plan and verifies (`speculative.speculative_decode`); its
    report goes to sink["speculative"]."""
    started = time.perf_counter()
    engine = model.lean_engine
    text_model = model.text_model
    base_mode = budget is None and plan is None
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    # HF generate's positions for a left-padded prompt: count real tokens (padding at 0).
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    run = model._embed_inputs(
        input_ids, pixel_values, None, attention_mask, position_ids, None, None, 0, use_cache=False, lean=True
    )
    if budget is not None:
        model._insert_latency_token(run, budget)
    else:
        full = ExecutionPlan.full(run.batch, model.num_layers) if plan is None else plan
        run.plan = model._check_plan(full, run.batch, run.hidden.device)
    if compile:  # static shapes: a few prompt lengths, not one per request
        _pad_prompt(run, bucket_length(run.hidden.shape[1], PREFILL_BUCKET))
    hidden = run.hidden
    device, dtype = hidden.device, hidden.dtype
    length = hidden.shape[1]
    max_length = length + sampling.max_new_tokens
    extra = 0 if speculative is None else speculative.num_draft_tokens + 1  # a round's verified positions
    max_length += extra
    if compile:
        max_length = bucket_length(max_length)  # static shapes: a few cache lengths, not one per request
    valid = torch.zeros(batch, max_length, dtype=torch.bool, device=device)
    valid[:, :length] = run.attention_mask.bool()
    cos_table, sin_table = engine.rotary_tables(
        text_model, int(run.position_ids.max()) + sampling.max_new_tokens + extra + 1, dtype, device
    )
    positions = run.position_ids  # [B, T]
    cos, sin = cos_table[positions][:, None], sin_table[positions][:, None]  # [B, 1, T, Dh]
    batch_state = _Batch(Program(), valid, positions[:, -1] + 1, length)
    mask = None
    if batch_state.has_pads:
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        # Padding rows attend to themselves only (a fully masked row would give NaN in SDPA).
        eye = torch.eye(length, dtype=torch.bool, device=device)
        mask = (causal & valid[:, None, None, :length]) | eye  # [B, 1, T, T]
    program = batch_state.program
    compiled = engine.compiled if compile else None
    start_upper = 0
    if run.plan is None:  # budget: the prefix runs for every row, then the scheduler plans
        _add_units(
            model, program, engine, range(model.num_prefix), None, batch, max_length, dtype, device, compile
        )
        hidden = _prefill_layers(program, hidden, range(model.num_prefix), cos, sin, mask, compiled)
        run.hidden = hidden
        model._plan(run, False, None)
        start_upper = model.num_prefix
    _add_units(
        model,
        program,
        engine,
        range(start_upper, model.num_layers),
        run.plan,
        batch,
        max_length,
        dtype,
        device,
        compile,
    )
    hidden = _prefill_layers(program, hidden, range(start_upper, model.num_layers), cos, sin, mask, compiled)
    logits = _head(model, text_model, hidden[:, -1])  # [B, V]
    run.hidden = hidden
    model._price_pass(run, 1, sink)
    if base_mode:
        sink["plan"], sink["budget"] = None, None
    dropper = None
    if monitor is not None and not compile and run.plan is not None and run.plan.heads is None:
        dropper = LayerDropper(model, run.plan, run.scheduler_logits, monitor)
        sink["plan_changes"] = dropper.changes
    if speculative is not None:
        from adallava.engine.lean.speculative import speculative_decode  # it builds on this module

        decoded, sink["speculative"] = speculative_decode(
            model, batch_state, run, input_ids, logits, sampling, streamer, stopping_criteria, cos_table,
            sin_table, speculative,
        )  # fmt: skip
    else:
        decoded = _decode(
            model,
            batch_state,
            input_ids,
            logits,
            sampling,
            streamer,
            stopping_criteria,
            generator,
            cos_table,
            sin_table,
            compiled,
            dropper,
        )
    sequences = torch.cat([input_ids, decoded.tokens.to(input_ids.device)], dim=1)
    return LeanResult(
        sequences,
        decoded.logits,
        decoded.scores,
        (decoded.first_token - started) * 1e3,
        (decoded.end - decoded.first_token) * 1e3,
    )


@dataclass
class _Decoded:
    tokens: torch.Tensor  # long [B, G]
    logits: tuple | None
    scores: tuple | None
    first_token: float  # perf_counter time the first new token was chosen (end of the prefill)
    end: float


def _decode(
    model,
    state: _Batch,
    prompt_ids,
    logits,
    sampling: Sampling,
    streamer,
    stopping_criteria,
    generator,
    cos_table,
    sin_table,
    compiled: CompiledGraphs | None = None,
    dropper: LayerDropper | None = None,
) -> _Decoded:
    """The decode loop from the prefill's logits [B, V]; prompt_ids [B, T] (what stopping criteria see
    before the new tokens). compiled: run each step as a compiled static-shape graph (finished rows
    then keep decoding padding instead of leaving the batch)."""
    text_model = model.text_model
    running = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)  # compiled: not finished
    embed = model.get_input_embeddings().weight
    batch, device = logits.shape[0], logits.device
    new_tokens = torch.full(
        (batch, sampling.max_new_tokens), sampling.pad_token_id, dtype=torch.long, device=device
    )
    all_logits, all_scores = [], []
    chooser = TokenChooser(sampling, device, generator)
    whole_batch = True  # no row has finished yet: running row r is original row r
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    prefill_end = None
    produced = 0
    for step in range(sampling.max_new_tokens):
        scores, chosen = chooser(logits.float(), step)  # [B', V], [B'] for the running rows
        if compiled is not None:  # finished rows stay in the batch and write padding, as in HF
            chosen = torch.where(running, chosen, sampling.pad_token_id)
        rows = state.original_rows
        if whole_batch:
            new_tokens[:, step] = chosen
        else:
            new_tokens[rows, step] = chosen
        if sampling.output_logits or sampling.output_scores or stopping_criteria is not None:
            logits, scores = _whole_batch(logits.float(), rows, batch), _whole_batch(scores, rows, batch)
            if sampling.output_logits:
                all_logits.append(logits)
            if sampling.output_scores:
                all_scores.append(scores)
        produced = step + 1
        if prefill_end is None:
            prefill_end = time.perf_counter()
        if streamer is not None:
            streamer.put(new_tokens[:, step].cpu())
        done = chooser.finished(chosen)
        if stopping_criteria is not None:
            sequences = torch.cat([prompt_ids, new_tokens[:, :produced].to(prompt_ids.device)], dim=1)
            done = done | stopping_criteria(sequences, scores).to(device).index_select(0, rows)
        if compiled is not None:
            done = done | ~running
            running = ~done
        finished = int(done.sum())
        if finished == done.numel() or produced == sampling.max_new_tokens:
            break
        if compiled is not None:
            logits = _compiled_step(model, state, chosen, cos_table, sin_table, compiled)
            continue
        if finished:
            keep = ~done
            state.drop(keep)
            chosen = chosen[keep]
            whole_batch = False
        if dropper is not None:
            dropper(produced, state)
        # one decoding step for the running rows
        position = state.next_positions  # [B']
        mask = None
        if state.has_pads:
            state.valid[:, state.length] = True
            mask = state.valid[:, None, None, : state.length + 1]
        cos = cos_table.index_select(0, position)[:, None, None]  # [B', 1, 1, Dh]
        sin = sin_table.index_select(0, position)[:, None, None]
        set_step_inputs(state.program, cos, sin, mask)
        hidden = torch.nn.functional.embedding(chosen, embed)[:, None]  # [B', 1, D]
        hidden = run_layers(state.program, hidden, state.length, range(model.num_layers))
        logits = _head(model, text_model, hidden[:, -1])
        state.length += 1
        state.next_positions = position + 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    end = time.perf_counter()
    if streamer is not None:
        streamer.end()
    return _Decoded(
        new_tokens[:, :produced],
        tuple(all_logits) if sampling.output_logits else None,
        tuple(all_scores) if sampling.output_scores else None,
        prefill_end or end,
        end,
    )


class LayerDropper:
    """Mid-generation, for a deadline request falling behind: after each token, asks `monitor` how many
    upper layers each row may keep for its remaining tokens and, when fewer than it runs, switches off
    each row's lowest-priority executed upper layers (by its scheduler logits; for an explicit plan,
    the deepest first) in the running program: their rows leave those layers' units and KV caches.
    Turning layers off is safe (a layer a row stops running simply has no later keys); turning them on
    is never done (its keys for the earlier tokens were never computed). `changes` lists (k, plan after
    the k-th token) for pricing."""

    def __init__(self, model, plan: ExecutionPlan, scheduler_logits: torch.Tensor | None, monitor):
        self.model, self.plan, self.monitor = model, plan, monitor
        self.priority = None if scheduler_logits is None else scheduler_logits.float().cpu()  # [B, N - P]
        self.changes: list[tuple[int, ExecutionPlan]] = []

    def __call__(self, produced: int, state: _Batch) -> None:
        keep = self.monitor(produced)
        if keep is None:
            return
        prefix = self.model.num_prefix
        layers = self.plan.layers.cpu().clone()  # [B, N] original rows
        for row in state.original_rows.tolist():
            upper = [i for i in range(prefix, layers.shape[1]) if layers[row, i]]
            if len(upper) <= keep:
                continue
            if self.priority is None:
                ranked = upper  # an explicit plan: keep the shallowest
            else:
                ranked = sorted(upper, key=lambda i: -float(self.priority[row, i - prefix]))
            for index in ranked[keep:]:
                layers[row, index] = False
        if torch.equal(layers, self.plan.layers.cpu()):
            return
        _leave_layers(state, layers.to(state.valid.device))
        self.plan = ExecutionPlan(layers.to(self.plan.layers.device))
        self.changes.append((produced, self.plan))


def _leave_layers(state: _Batch, layers: torch.Tensor) -> None:
    """Take running rows out of the units of the layers they no longer run (layers: bool [B, N] over
    original rows)."""
    program = state.program
    for index, units in enumerate(program.layers):
        kept_units = []
        for unit in units:
            rows = unit.group.rows
            running = torch.arange(state.size, device=layers.device) if rows is None else rows
            stays = layers[state.original_rows.index_select(0, running), index]  # bool [R]
            if bool(stays.all()):
                kept_units.append(unit)
                continue
            if not bool(stays.any()):
                continue  # no row runs this layer any more
            inside = stays.nonzero().flatten()
            group = program.group(running.index_select(0, inside), state.size)
            keys = None if unit.keys is None else unit.keys.index_select(0, inside)
            values = None if unit.values is None else unit.values.index_select(0, inside)
            kept_units.append(Unit(unit.weights, group, keys, values))
        program.layers[index] = kept_units


def _pad_prompt(run, length: int) -> None:
    """Left-pad the prefill's hidden states, attention mask and positions to `length` (masked padding,
    as in any left-padded batch; the latency token's position moves with its row)."""
    pad = length - run.hidden.shape[1]
    if pad <= 0:
        return
    run.hidden = torch.nn.functional.pad(run.hidden, (0, 0, pad, 0))
    run.attention_mask = torch.nn.functional.pad(run.attention_mask, (pad, 0))
    run.position_ids = torch.nn.functional.pad(run.position_ids, (pad, 0))
    if run.latency_positions is not None:
        run.latency_positions = run.latency_positions + pad


def _prefill_layers(program: Program, hidden, layers: range, cos, sin, mask, compiled: CompiledGraphs | None):
    """The prefill through `layers` of the program (hidden [B, T, D]; cos, sin [B, 1, T, Dh]; mask
    [B, 1, T, T] or None): eager, or as one compiled graph."""
    if compiled is None:
        set_step_inputs(program, cos, sin, mask)
        return run_layers(program, hidden, 0, layers)
    units, structure, keep = _graph_units(program, layers)
    shapes = (tuple(hidden.shape), hidden.dtype, hidden.device, mask is None, _cache_length(program))
    key = (structure, shapes, torch.is_grad_enabled())
    return compiled(static_prefill, key, keep, hidden.device, units, hidden, cos, sin, mask)


def _graph_units(program: Program, layers: range) -> tuple[list, tuple, list]:
    """A compiled graph's view of `layers` of the program: units as (weights, rows, keys, values), the
    structure its key holds (weights identities and rows) and the objects those identities need kept."""
    chosen = [program.layers[index] for index in layers]
    units = [[(u.weights, u.group.rows, u.keys, u.values) for u in layer] for layer in chosen]
    structure = tuple(tuple((id(u.weights), _rows_key(u.group.rows)) for u in layer) for layer in chosen)
    return units, structure, [u.weights for layer in chosen for u in layer]


def _cache_length(program: Program) -> int | None:
    """The cache length L of the program's KV slots (None: no unit holds one)."""
    return next((u.keys.shape[2] for layer in program.layers for u in layer if u.keys is not None), None)


def _compiled_step(model, state: _Batch, chosen, cos_table, sin_table, compiled: CompiledGraphs):
    """One decoding step of the whole batch through the compiled static-shape graph."""
    position = state.next_positions
    state.valid[:, state.length] = True
    mask = state.valid[:, None, None, :]  # [B, 1, 1, L]: every cache position, the unwritten masked
    cos = cos_table.index_select(0, position)[:, None, None]
    sin = sin_table.index_select(0, position)[:, None, None]
    write_at = torch.tensor([state.length], device=chosen.device)
    if state.compiled_inputs is None:  # a compiled batch never changes its program: made once
        units, structure, keep = _graph_units(state.program, range(len(state.program.layers)))
        embed = model.get_input_embeddings().weight
        norm, head = model.text_model.norm, model.base.lm_head
        tensors = (embed, norm.weight, head.weight, head.bias)
        fixed = tuple((id(t), None if t is None else (t.dtype, t.device, tuple(t.shape))) for t in tensors)
        shapes = (state.size, state.valid.shape[1], chosen.device, torch.is_grad_enabled())
        key = (structure, fixed, norm.variance_epsilon, shapes)
        inputs = (embed, norm.weight, norm.variance_epsilon, head.weight, head.bias)
        state.compiled_inputs = (units, key, (keep, tensors), inputs)
    units, key, keep, (embed, norm_weight, norm_eps, head_weight, head_bias) = state.compiled_inputs
    logits = compiled(static_step, key, keep, chosen.device, units, chosen, embed, cos, sin, mask, write_at,
                      norm_weight, norm_eps, head_weight, head_bias)  # fmt: skip
    state.length += 1
    state.next_positions = position + 1
    return logits


def _rows_key(rows: torch.Tensor | None) -> tuple | None:
    return None if rows is None else tuple(rows.tolist())


def _whole_batch(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """[B', V] of the running rows -> [B, V] of the whole batch (zeros for finished rows)."""
    if values.shape[0] == batch:
        return values
    return values.new_zeros(batch, values.shape[-1]).index_copy(0, rows, values)


def _head(model, text_model, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head on the last position's hidden states [B, D] -> logits [B, V]."""
    norm = text_model.norm
    head = model.base.lm_head
    return torch.nn.functional.linear(
        rms_norm(hidden, norm.weight, norm.variance_epsilon), head.weight, head.bias
    )


def _add_units(
    model,
    program: Program,
    engine,
    layers: range,
    plan,
    batch: int,
    max_length: int,
    dtype,
    device,
    zeroed: bool = False,
) -> None:
    """Program entries for `layers`: every row (plan None) or the row sets the plan gives, each with
    its weights and a preallocated KV slot [R, Hkv, L, Dh]."""
    text_model = model.text_model
    while len(program.layers) < layers.stop:
        program.layers.append([])
    for index in layers:
        layer = text_model.layers[index]
        sets = [(None, None, None)] if plan is None else layer_row_sets(plan, index)
        units = []
        for rows, heads, mlp in sets:
            if heads is None:
                weights = engine.weights.get(layer)
            else:
                weights = engine.weights.get(
                    model.slices.get(index, layer, model._geometry_for(plan), heads, mlp)
                )
            group = program.group(None if rows is None else rows.to(device), batch)
            size = batch if group.rows is None else group.rows.numel()
            keys = values = None
            if weights.num_kv_heads:
                shape = (size, weights.num_kv_heads, max_length, weights.head_dim)
                new = torch.zeros if zeroed else torch.empty  # compiled steps read every position
                keys = new(shape, dtype=dtype, device=device)
                values = new(shape, dtype=dtype, device=device)
            units.append(Unit(weights, group, keys, values))
        program.layers[index] = units
