"""Self-speculative decoding on the lean engine: a cheap plan of the same model drafts tokens, the
request's own plan verifies them in one forward, and the output is that of the request's plan.

One set of AdaLLaVA weights runs at every depth, so its cheap plans are ready draft models. Per
round, for every running row:

1. **Draft** k tokens one at a time under the *draft plan*: the prefix layers plus the verify plan's
   highest-ranked upper layers that fit the draft budget (`draft_layers`), so every layer the draft
   runs is one the verify plan runs and has its cache from the prefill.
2. **Verify** the k + 1 tokens (the last accepted token and the k drafts) in one forward of the
   verify plan. Layers below the first one where draft and verify differ for some row (the *shared
   depth*) see the same inputs in both, so the draft's keys for them are kept and its hidden states
   at the shared depth are fed to verification instead of being recomputed; only the layers from
   the shared depth up run on the k + 1 tokens. Keys the draft wrote into deeper layers at these
   positions are scratch: verification overwrites every one of them.
3. **Accept** the longest prefix of drafts that the verifier's greedy choices agree with, plus the
   verifier's own next token (`accepted_lengths`): 1 to k + 1 tokens per row and round, exactly the
   tokens the verify plan would have produced one by one.

Rows accept different counts. They share one cache write position (`_Batch.length`); a row that
accepted fewer tokens than the round's best leaves its rejected positions invalid in the key-validity
mask (holes, like left padding), and the cache is compacted (each row's valid entries moved to the
front) when the next round would not fit. Greedy decoding only; layer plans only (head plans are
refused: `check_speculative`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from adallava.core.cost.pricing import price_decode_step
from adallava.core.plan import ExecutionPlan
from adallava.engine.lean.functional import decoder_layer
from adallava.engine.lean.program import Program, Unit
from adallava.engine.lean.runner import _Batch, _Decoded, _head, run_layers, set_step_inputs
from adallava.engine.lean.sampling import Sampling
from adallava.engine.outputs import SpeculativeReport

MAX_DRAFT_TOKENS = 64


@dataclass(frozen=True)
class SpeculativeConfig:
    """Self-speculative decoding options (`generate(..., speculative=SpeculativeConfig(...))`).

    draft_budget: the draft plan's budget, a fraction of the full stack in [b_min, 1]; None: the
    prefix layers alone (b_min). Rows whose own budget is smaller draft with their own plan.
    num_draft_tokens: tokens drafted per round (k >= 1); a round yields 1 to k + 1 tokens.
    observer: called with each generate call's `SpeculativeReport` (e.g. a server counting
    acceptance for its metrics, which sees answers rather than generate's output)."""

    draft_budget: float | None = None
    num_draft_tokens: int = 4
    observer: Callable[[SpeculativeReport], None] | None = field(default=None, compare=False)

    def __post_init__(self):
        budget = self.draft_budget
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0
        ):
            raise ValueError(
                f"SpeculativeConfig.draft_budget must be a fraction in (0, 1] or None (the prefix alone), "
                f"got {budget!r}"
            )
        k = self.num_draft_tokens
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_DRAFT_TOKENS:
            raise ValueError(
                f"SpeculativeConfig.num_draft_tokens must be an integer in [1, {MAX_DRAFT_TOKENS}], got {k!r}"
            )


def resolve_speculative(value) -> SpeculativeConfig | None:
    """generate's `speculative` argument -> options: None / False (off), True (defaults) or a
    SpeculativeConfig."""
    if value is None or value is False:
        return None
    if value is True:
        return SpeculativeConfig()
    if isinstance(value, SpeculativeConfig):
        return value
    raise TypeError(
        f"speculative must be True, False, None or a SpeculativeConfig, got {type(value).__name__}"
    )


def check_speculative(
    model, config: SpeculativeConfig, budget, plan, sampling: Sampling, compile: bool
) -> None:
    """Refuse, before any work, what speculative decoding does not support, naming the conflict."""
    if compile:
        raise ValueError(
            "speculative decoding runs the eager lean engine; it cannot be combined with compile=True "
            "(drop one of them)"
        )
    if sampling.do_sample:
        raise ValueError(
            "speculative decoding is greedy only (do_sample=False); drop speculative or do_sample"
        )
    if (budget is not None and model.adaptive.switches != "layer") or (
        plan is not None and plan.heads is not None
    ):
        raise ValueError(
            "speculative decoding supports layer plans only; this call runs a head plan (AdaLLaVA-H): "
            "drop speculative"
        )
    if config.draft_budget is not None and config.draft_budget < model.b_min - 1e-9:
        raise ValueError(
            f"SpeculativeConfig.draft_budget must be in [b_min, 1] = [{model.b_min:g}, 1] for this model "
            f"(the prefix layers always run), got {config.draft_budget!r}"
        )


# ---- the draft plan and acceptance (pure) -----------------------------------------------------------
def draft_layers(
    verify: torch.Tensor, num_prefix: int, units: torch.Tensor, priority: torch.Tensor | None
) -> torch.Tensor:
    """bool [B, N]: each row's draft plan, the prefix layers plus its `units[b]` (long [B]) verify
    layers (verify: bool [B, N]) of highest `priority` (scheduler logits [B, N - P]; None: the
    shallowest first). A row whose verify plan has no more upper layers drafts with it whole."""
    upper = verify[:, num_prefix:]  # [B, N - P]
    if priority is None:  # shallowest first: a descending score by depth
        priority = -torch.arange(upper.shape[1], dtype=torch.float32, device=verify.device).expand_as(upper)
    scores = priority.float().masked_fill(~upper, float("-inf"))
    rank = scores.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # [B, N - P] 0 = best
    keep = upper & (rank < units.to(verify.device)[:, None])
    return torch.cat([verify[:, :num_prefix], keep], dim=1)


def shared_depth(draft: torch.Tensor, verify: torch.Tensor) -> int:
    """The first layer where some row's draft and verify plans differ (bool [B, N] each); N if none.
    Below it both run the same layers on the same inputs."""
    differ = (draft != verify).any(0).nonzero()
    return int(differ[0]) if differ.numel() else draft.shape[1]


def accepted_lengths(drafts: torch.Tensor, verified: torch.Tensor) -> torch.Tensor:
    """long [B]: how many leading drafts (long [B, k]) equal the verifier's choices (verified [B, k+1],
    the token the verify plan picks after each prefix)."""
    return (drafts == verified[:, : drafts.shape[1]]).long().cumprod(dim=1).sum(dim=1)


def greedy_scores(
    logits: torch.Tensor, produced: torch.Tensor, sampling: Sampling, suppress, eos
) -> torch.Tensor:
    """HF's greedy processors on raw logits [..., V] (float32) whose tokens are new token number
    `produced` (long, logits' shape without V): suppressed tokens, and end of sequence before
    `min_new_tokens`, get -inf (`sampling.process_logits`, per position)."""
    scores = logits
    if suppress is not None:
        scores = scores.index_fill(-1, suppress, float("-inf"))
    if eos is not None and sampling.min_new_tokens > 0:
        early = produced < sampling.min_new_tokens
        if bool(early.any()):
            blocked = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            blocked[eos] = True
            scores = scores.masked_fill(early[..., None] & blocked, float("-inf"))
    return scores


# ---- costs (pure) -----------------------------------------------------------------------------------
def work_flops(
    shape, layers: torch.Tensor, head: bool, tokens: torch.Tensor, contexts: torch.Tensor
) -> torch.Tensor:
    """float64 [B]: FLOPs of `tokens[b]` positions through `layers[b]` (bool [B, N]) and, if `head`, the
    LM head, where the positions attended `contexts[b]` keys in all (the sum over positions). A
    layer's per-position FLOPs are affine in its context (`flops.decode_cost`), so counts suffice."""
    one, two = price_decode_step(shape, torch.tensor([1, 2]), None).rows
    at_one = torch.tensor([layer.total for layer in one.per_layer], dtype=torch.float64)  # [N]
    slope = torch.tensor([layer.total for layer in two.per_layer], dtype=torch.float64) - at_one
    tokens, contexts = tokens.double().cpu(), contexts.double().cpu()
    per_layer = tokens[:, None] * (at_one - slope) + contexts[:, None] * slope  # [B, N]
    flops = (per_layer * layers.cpu().double()).sum(-1)
    return flops + tokens * one.lm_head if head else flops


# ---- the decode loop --------------------------------------------------------------------------------
@dataclass
class _Work:
    """Per original row: positions run and keys attended (summed) by each kind of work."""

    drafted: torch.Tensor  # draft tokens proposed
    accepted: torch.Tensor  # of them, in the output (the verifier agreed and the answer went on)
    rounds: torch.Tensor  # verification forwards
    draft_contexts: torch.Tensor  # draft steps: draft plan + LM head
    shared_tokens: torch.Tensor  # the last draft through the shared layers (no LM head)
    shared_contexts: torch.Tensor
    verify_tokens: torch.Tensor  # verification: verify layers from the shared depth + LM head
    verify_contexts: torch.Tensor

    @classmethod
    def of_rounds(cls, batch: int, log: list[tuple]) -> _Work:
        """Sums over the rounds' log [(rows long [B'], past keys long [B'], k, tokens taken long [B'], drafts
        among them long [B'])] (kept as it is during decoding, so that counting costs the loop nothing)."""
        work = cls(*(torch.zeros(batch, dtype=torch.long) for _ in range(8)))
        for rows, past, k, taken, accepted in log:
            rows, past, taken = rows.cpu(), past.cpu(), taken.cpu()
            work.drafted[rows] += k
            work.accepted[rows] += accepted.cpu()
            work.rounds[rows] += 1
            work.draft_contexts[rows] += k * past + k * (k + 1) // 2
            work.shared_tokens[rows] += 1
            work.shared_contexts[rows] += past + k + 1
            work.verify_tokens[rows] += k + 1
            work.verify_contexts[rows] += (k + 1) * past + (k + 1) * (k + 2) // 2
        return work


def speculative_decode(
    model,
    state: _Batch,
    run,
    prompt_ids: torch.Tensor,
    logits: torch.Tensor,
    sampling: Sampling,
    streamer,
    stopping_criteria,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    config: SpeculativeConfig,
) -> tuple[_Decoded, SpeculativeReport]:
    """The decode loop from the prefill's logits [B, V] (`run`: the prefill's `Pass`, for the verify
    plan, scheduler logits and real token counts). Returns the tokens (as `runner._decode`) and what
    was drafted, accepted and computed."""
    verify = run.plan.layers.to(logits.device)  # [B, N]
    fraction = model.b_min if config.draft_budget is None else config.draft_budget
    units = model.units_for(torch.full((verify.shape[0],), float(fraction), dtype=torch.float64))
    draft = draft_layers(verify, model.num_prefix, units, run.scheduler_logits)
    loop = _Rounds(model, state, draft, verify, sampling, cos_table, sin_table, config.num_draft_tokens)
    cached = run.attention_mask.sum(-1).cpu()  # [B] real positions in the cache after the prefill
    decoded = loop.decode(prompt_ids, logits, cached, streamer, stopping_criteria)
    shared = loop.shared
    below = torch.arange(verify.shape[1], device=verify.device) < shared
    work, shape = _Work.of_rounds(verify.shape[0], loop.log), model.shape
    draft_flops = work_flops(shape, draft, True, work.drafted, work.draft_contexts)
    draft_flops = draft_flops + work_flops(
        shape, draft & below, False, work.shared_tokens, work.shared_contexts
    )
    verify_flops = work_flops(shape, verify & ~below, True, work.verify_tokens, work.verify_contexts)
    report = SpeculativeReport(
        draft_plan=ExecutionPlan(draft.to(run.plan.layers.device)),
        num_draft_tokens=config.num_draft_tokens,
        shared_layers=shared,
        drafted=work.drafted,
        accepted=work.accepted,
        rounds=work.rounds,
        draft_flops=draft_flops,
        verify_flops=verify_flops,
    )
    return decoded, report


class _Rounds:
    """One request's speculative decode loop over the running batch `state` (its program runs the
    verify plan; `draft`, `verify`: bool [B, N] plans of the original rows)."""

    def __init__(self, model, state: _Batch, draft, verify, sampling: Sampling, cos_table, sin_table, k: int):
        self.model, self.state, self.sampling, self.k = model, state, sampling, k
        self.draft = draft
        self.cos_table, self.sin_table = cos_table, sin_table
        self.shared = shared_depth(draft, verify)
        self.embed = model.get_input_embeddings().weight
        self.text_model = model.text_model  # a property that looks modules up: read once
        device = verify.device
        self.suppress = _ids(sampling.suppress_tokens, device)
        self.eos = _ids(sampling.eos_token_ids, device)
        self.log: list[tuple] = []  # per round: rows, past keys, k, taken, accepted (`_Work.of_rounds`)
        self.draft_program: list[list[tuple[Unit, torch.Tensor | None]]] = []

    # -- per round ---------------------------------------------------------------------------------
    def decode(self, prompt_ids, logits, cached, streamer, stopping_criteria) -> _Decoded:
        """Tokens from the prefill's logits [B, V]; cached: long [B] real positions in the cache."""
        state, sampling = self.state, self.sampling
        batch, device, limit = logits.shape[0], logits.device, sampling.max_new_tokens
        new_tokens = torch.full((batch, limit), sampling.pad_token_id, dtype=torch.long, device=device)
        out = _Steps(new_tokens, prompt_ids, sampling.pad_token_id, streamer, stopping_criteria, sampling)
        zero = torch.zeros(batch, dtype=torch.long, device=device)
        raw = logits.float()
        scores = greedy_scores(raw, zero, sampling, self.suppress, self.eos)
        last = scores.argmax(-1)  # [B]
        produced = torch.ones_like(zero)  # [B'] new tokens of each running row
        out.write(state.original_rows, zero, last[:, None], produced)
        out.record(state.original_rows, zero, scores[:, None], raw[:, None], produced)
        prefill_end = time.perf_counter()
        ended = self._is_eos(last) | (produced >= limit)
        out.finish(state.original_rows, ended, produced)
        out.emit(_complete(produced, ended, out))
        self._build_draft_program()
        cached = cached.to(device)
        while True:
            running = ~out.finished.index_select(0, state.original_rows)
            if not bool(running.any()):
                break
            if not bool(running.all()):
                state.drop(running)
                last, produced = last[running], produced[running]
                self._build_draft_program()
            last, produced, ended = self._round(last, produced, cached, out)
            out.finish(state.original_rows, ended, produced)
            out.emit(_complete(produced, ended, out))
        out.emit(int(out.ends.max()))
        end = time.perf_counter()
        if streamer is not None:
            streamer.end()
        steps = int(out.ends.max())
        return _Decoded(
            new_tokens[:, :steps], out.logits_tuple(steps), out.scores_tuple(steps), prefill_end, end
        )

    def _round(self, last, produced, cached, out: _Steps):
        """Draft, verify and accept once for every running row. last: long [B'] the newest token (not
        in the cache yet); produced: long [B'] new tokens so far. Returns them updated and which rows
        ended (end of sequence or token limit)."""
        state, limit = self.state, self.sampling.max_new_tokens
        remaining = limit - produced
        k = min(self.k, int(remaining.max()) - 1)
        steps = k + 1
        if state.length + steps > state.valid.shape[1]:
            compact_cache(state)
        start = state.length
        state.valid[:, start : start + steps] = True
        masked = state.has_pads
        tokens, stash = last, []
        drafts, drafted_eos = [], None
        for j in range(k):
            tokens = self._draft_step(tokens, start, j, masked, stash, produced)
            drafts.append(tokens)
            if self.eos is not None:  # a row whose draft ended its answer needs no more drafts
                eos = self._is_eos(tokens)
                drafted_eos = eos if drafted_eos is None else drafted_eos | eos
                if bool(drafted_eos.all()):
                    break
        # Every row drafted an end of sequence: verify what was drafted. (Positions past the round's
        # last are never read: each round's masks stop at the positions it wrote.)
        k, steps = len(drafts), len(drafts) + 1
        self._draft_step(tokens, start, k, masked, stash)  # the last draft through the shared layers
        logits = self._verify(torch.cat(stash, dim=1), start, steps)  # [B', T, V]
        offsets = torch.arange(steps, device=logits.device)
        scores = greedy_scores(
            logits.float(), produced[:, None] + offsets, self.sampling, self.suppress, self.eos
        )
        verified = scores.argmax(-1)  # [B', T]
        agreed = accepted_lengths(torch.stack(drafts, dim=1), verified) if k else torch.zeros_like(produced)
        taken = torch.minimum(agreed + 1, remaining)  # tokens this round, before an end of sequence
        is_eos = self._is_eos(verified)
        if is_eos.any():
            first_eos = torch.where(is_eos.any(-1), is_eos.float().argmax(-1), steps)  # [B']
            taken = torch.minimum(taken, first_eos + 1)
        rows = state.original_rows
        out.write(rows, produced, verified, taken)
        out.record(rows, produced, scores, logits.float(), taken)
        self.log.append(
            (rows, cached.index_select(0, rows) + produced - 1, k, taken, torch.minimum(agreed, taken))
        )
        # Cache: positions start .. start + taken - 1 hold last and the kept drafts; the rest are holes.
        state.valid[:, start : start + steps] = offsets < taken[:, None]
        most = int(taken.max())
        if bool((taken < most).any()):
            state.has_pads = True
        state.length = start + most
        state.next_positions = state.next_positions + taken
        last = verified.gather(1, (taken - 1)[:, None]).squeeze(1)
        produced = produced + taken
        ended = is_eos.gather(1, (taken - 1)[:, None]).squeeze(1) | (produced >= limit)
        return last, produced, ended

    def _draft_step(self, tokens, start: int, j: int, masked: bool, stash: list, produced=None):
        """Token j of the round (long [B']) at cache position start + j through the draft plan; its
        hidden state at the shared depth goes to `stash`. Returns the next draft token (long [B']), or
        None without `produced` (new tokens so far [B']): then only the shared layers run."""
        state = self.state
        position = state.next_positions + j
        cos = self.cos_table.index_select(0, position)[:, None, None]  # [B', 1, 1, Dh]
        sin = self.sin_table.index_select(0, position)[:, None, None]
        mask = state.valid[:, None, None, : start + j + 1] if masked else None
        set_step_inputs(state.program, cos, sin, mask)
        hidden = F.embedding(tokens, self.embed)[:, None]  # [B', 1, D]
        hidden = _run_draft(self.draft_program[: self.shared], hidden, start + j)
        stash.append(hidden)
        if produced is None:
            return None
        hidden = _run_draft(self.draft_program[self.shared :], hidden, start + j)
        return self._choose(_head(self.model, self.text_model, hidden[:, -1]), produced + j)

    def _verify(self, hidden, start: int, steps: int):
        """The verify plan's layers from the shared depth on hidden [B', T, D] (cache positions start ..
        start + T - 1), then the LM head: logits [B', T, V]."""
        state = self.state
        offsets = torch.arange(steps, device=hidden.device)
        positions = state.next_positions[:, None] + offsets  # [B', T]
        cos, sin = self.cos_table[positions][:, None], self.sin_table[positions][:, None]  # [B', 1, T, Dh]
        keys = torch.arange(start + steps, device=hidden.device)
        causal = keys <= (start + offsets)[:, None]  # [T, S]: token t sees the cache and tokens <= t
        mask = state.valid[:, None, None, : start + steps] & causal  # [B', 1, T, S]
        set_step_inputs(state.program, cos, sin, mask)
        hidden = run_layers(state.program, hidden, start, range(self.shared, self.model.num_layers))
        return _head(self.model, self.text_model, hidden)

    def _choose(self, logits, produced):
        return greedy_scores(logits.float(), produced, self.sampling, self.suppress, self.eos).argmax(-1)

    def _is_eos(self, tokens):
        if self.eos is None:
            return torch.zeros_like(tokens, dtype=torch.bool)
        return torch.isin(tokens, self.eos)

    def _build_draft_program(self) -> None:
        """Per layer, the verify program's units the draft runs, each with the rows whose output it
        keeps (bool [R]; None: all): below the shared depth every unit as it is."""
        state = self.state
        program: Program = state.program
        layers = []
        for index, units in enumerate(program.layers):
            chosen = []
            for unit in units:
                if index < self.shared:
                    chosen.append((unit, None))
                    continue
                rows = unit.group.rows
                original = state.original_rows if rows is None else state.original_rows.index_select(0, rows)
                keep = self.draft.index_select(0, original)[:, index]  # [R]
                if bool(keep.all()):
                    chosen.append((unit, None))
                elif bool(keep.any()):
                    chosen.append((unit, keep[:, None, None]))
            layers.append(chosen)
        self.draft_program = layers


def _complete(produced, ended, out: _Steps) -> int:
    """Steps every row still running has made (all steps when none is)."""
    alive = produced[~ended]
    return int(alive.min()) if alive.numel() else int(out.ends.max())


def _run_draft(layers: list, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """`runner.run_layers` for the draft: a unit's rows outside the draft plan keep their input (the
    unit still computes them; the keys it writes for them are overwritten by verification)."""
    for units in layers:
        for unit, keep in units:
            group = unit.group
            if group.rows is not None and group.rows.numel() == 0:
                continue
            rows_hidden = group.take(hidden)
            out = decoder_layer(
                unit.weights, rows_hidden, group.cos, group.sin, unit.keys, unit.values, start, group.mask,
                causal=True,
            )  # fmt: skip
            if keep is not None:
                out = torch.where(keep, out, rows_hidden)
            hidden = out if group.rows is None else hidden.index_copy(0, group.rows, out)
    return hidden


def compact_cache(state: _Batch) -> None:
    """Move each row's valid cache entries (in order) to the front of every KV slot and make the
    validity mask match; the shared length becomes the longest row's count. Keys hold their rotary
    position already, so moving them changes nothing a query computes."""
    length = state.length
    valid = state.valid[:, :length]
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)  # [B, L]: valid first
    counts = valid.sum(-1)  # [B]
    for units in state.program.layers:
        for unit in units:
            if unit.keys is None:
                continue
            index = unit.group.take(order)[:, None, :, None]  # [R, 1, L, 1]
            for cache in (unit.keys, unit.values):
                part = cache.narrow(2, 0, length)
                part.copy_(part.gather(2, index.expand(-1, cache.shape[1], -1, cache.shape[3])))
    new_length = int(counts.max())
    state.valid.zero_()
    state.valid[:, :new_length] = torch.arange(new_length, device=valid.device) < counts[:, None]
    state.length = new_length


class _Steps:
    """The new tokens as plain decoding would have produced them step by step: tokens written per
    row, and each step handed to the streamer and the stopping criteria once every running row has
    made it (rows run ahead of each other by up to a round). A stopping criterion that fires at step
    s for a row ends it there (its later tokens become padding), as it would have in plain decoding.
    Per-step scores / logits [B, V] are kept while needed (output_scores, output_logits, criteria)."""

    def __init__(self, new_tokens, prompt_ids, pad: int, streamer, criteria, sampling: Sampling):
        self.tokens, self.prompt_ids, self.pad = new_tokens, prompt_ids, pad
        self.streamer, self.criteria = streamer, criteria
        batch, limit = new_tokens.shape
        self.finished = torch.zeros(batch, dtype=torch.bool, device=new_tokens.device)  # original rows
        self.ends = torch.full((batch,), limit, dtype=torch.long)  # new tokens each finished row made
        self.emitted = 0
        self.output_scores = sampling.output_scores
        keep_scores = sampling.output_scores or criteria is not None
        self.scores: dict[int, torch.Tensor] | None = {} if keep_scores else None
        self.logits: dict[int, torch.Tensor] | None = {} if sampling.output_logits else None

    def write(self, rows, produced, tokens, taken) -> None:
        """tokens [B', T] of the running rows (original `rows`): the first taken[b] are new tokens
        number produced[b], produced[b] + 1, ... (a slice copy per row: cheaper than a masked scatter
        for the few rows of a batch)."""
        for b, (row, first, count) in enumerate(
            zip(rows.tolist(), produced.tolist(), taken.tolist(), strict=True)
        ):
            self.tokens[row, first : first + count] = tokens[b, :count]

    def record(self, rows, produced, scores, logits, taken) -> None:
        """Keep the scores / logits [B', T, V] of new tokens produced[b] ... while needed."""
        batch = self.tokens.shape[0]
        for store, values in ((self.scores, scores), (self.logits, logits)):
            if store is None:
                continue
            for b, (row, first, count) in enumerate(
                zip(rows.tolist(), produced.tolist(), taken.tolist(), strict=True)
            ):
                for t in range(count):
                    step = store.get(first + t)
                    if step is None:
                        step = store[first + t] = values.new_zeros(batch, values.shape[-1])
                    step[row] = values[b, t]

    def finish(self, rows, ended, produced) -> None:
        """Running rows (original indices `rows`) that `ended` after `produced` new tokens."""
        if bool(ended.any()):
            done = rows[ended]
            self.finished[done] = True
            self.ends[done.cpu()] = produced[ended].cpu()

    def emit(self, complete: int) -> None:
        """Hand steps up to `complete` (exclusive; every running row has made them) to the stopping
        criteria and the streamer."""
        while self.emitted < complete:
            step = self.emitted
            if self.criteria is not None:
                self._stop_at(step)
            if self.streamer is not None:
                self.streamer.put(self.tokens[:, step].cpu())
            if self.scores is not None and not self.output_scores:
                self.scores.pop(step, None)
            self.emitted += 1

    def _stop_at(self, step: int) -> None:
        """The stopping criteria after new token `step`: rows that would make more tokens and that they
        stop end there."""
        sequences = torch.cat([self.prompt_ids, self.tokens[:, : step + 1].to(self.prompt_ids.device)], dim=1)
        stop = self.criteria(sequences, self.scores.get(step)).cpu()  # [B]
        cut = stop & (self.ends > step + 1)
        if bool(cut.any()):
            cut_here = cut.to(self.tokens.device)
            self.tokens[cut_here, step + 1 :] = self.pad
            self.finished |= cut_here
            self.ends[cut] = step + 1

    def scores_tuple(self, steps: int):
        return _tuple(self.scores, steps) if self.output_scores else None

    def logits_tuple(self, steps: int):
        return None if self.logits is None else _tuple(self.logits, steps)


def _tuple(store: dict, steps: int) -> tuple:
    return tuple(store[step] for step in range(steps))


def _ids(ids: tuple[int, ...], device) -> torch.Tensor | None:
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None
