"""Answers for a batch of chat requests, each with its own budget and token limit.

The one path from prompts to answers that `adallava ask` (a batch of one) and `adallava serve` (the
requests that arrived together) share: encode each request once, left-pad them into one batch, call
`AdaLlava.generate` with a budget per row, and read back each row's answer, plan and FLOPs. Greedy
decoding, so a row's answer does not depend on its batch-mates (tests/engine/test_decoder.py checks that
batched generation equals one request at a time). `adallava eval` answers through the same call, with
explicit plans for its baselines and `prefill_batch` to time the first token.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from adallava.core.plan import ExecutionPlan
from adallava.engine.deadlines import deadline_rows
from adallava.engine.decoder import ADAPTIVE_CONFIG_FILE, SCHEDULER_TRAINED
from adallava.inference.prompts import chat_prompt

FINISH_STOP = "stop"  # the model wrote its end-of-sequence token
FINISH_LENGTH = "length"  # the request's max_new_tokens ran out first


@dataclass(frozen=True)
class Prompt:
    """One request, encoded. input_ids: long [T] (image placeholders expanded to the model's visual
    tokens); pixel_values: float [I, 3, H, W] for its I images, or None for a text-only request;
    unknown_words: the words of the prompt its tokenizer could only read as its unknown token."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    unknown_words: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass(frozen=True)
class Answer:
    """One row's answer and what it cost. FLOPs dicts hold {"llm", "total"} (decoder stack; everything
    including vision tower and lm_head). `plan` is {"layers": executed indices, "num_layers"} plus
    "head_units" (units run per layer) for head switches. `plan_key` identifies the whole plan (the
    executed layers, plus a hash of the head units and MLP groups on for head plans); `unit_fraction`
    is the share of head units and MLP groups on over all layers (None for layer plans). `budget` is
    the fraction the row ran under (None: the base model or an explicit plan). `completion_tokens`
    counts the end-of-sequence token when the model wrote one (it was computed); `token_ids` / `text`
    leave it out. `unknown_words`: the prompt's words the tokenizer read as its unknown token.
    `prefill_ms` / `decode_ms` / `total_ms`: wall-clock of the generate call that produced the answer
    (the whole batch's): its prefill up to the first new token, its decoding steps, and the call.
    `speculative`: with self-speculative decoding (`speculative=SpeculativeConfig(...)`), what this row
    drafted and how many drafts were accepted, {"drafted", "accepted"}; None when it decoded plainly."""

    text: str
    token_ids: list[int]
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int
    budget: float | None
    plan: dict
    plan_key: str
    unit_fraction: float | None
    prefill_flops: dict[str, float]
    full_prefill_flops: dict[str, float]
    decode_flops: dict[str, float]
    unknown_words: tuple[str, ...] = ()
    # wall-clock is not part of what an answer is: equal answers may take different times
    prefill_ms: float | None = field(default=None, compare=False)
    decode_ms: float | None = field(default=None, compare=False)
    total_ms: float | None = field(default=None, compare=False)
    deadline: dict | None = field(default=None, compare=False)  # a deadline budget's DeadlineReport
    speculative: dict | None = field(default=None, compare=False)  # {"drafted", "accepted"} of this row


def encode(
    processor, text: str, images: Sequence[Image.Image] = (), add_special_tokens: bool = True
) -> Prompt:
    """Tokenize one prompt (from `chat_prompt` / `conversation_prompt`) with its images.
    add_special_tokens=False when the text already starts with the BOS its chat template wrote."""
    special = {} if add_special_tokens else {"add_special_tokens": False}
    inputs = processor(images=list(images) or None, text=[text], return_tensors="pt", **special)
    input_ids = inputs["input_ids"][0]
    tokenizer = getattr(processor, "tokenizer", processor)
    unk = tokenizer.unk_token_id
    unknown = unknown_words(tokenizer, text) if unk is not None and bool((input_ids == unk).any()) else []
    return Prompt(input_ids, inputs.get("pixel_values"), tuple(unknown))


def unknown_words(tokenizer, text: str) -> list[str]:
    """The words of `text` that `tokenizer` can only map to its unknown token (each once, in order):
    what the model never sees. Empty for tokenizers without an unknown token (byte-level BPE)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    if not getattr(tokenizer, "is_fast", False):  # slow tokenizers give no offsets: the pieces themselves
        pieces = tokenizer.tokenize(text)
        found = [p for p, i in zip(pieces, tokenizer.convert_tokens_to_ids(pieces), strict=True) if i == unk]
    else:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
        found = [text[start:end] for token, (start, end) in spans if token == unk]
    return list(dict.fromkeys(found))


def check_scheduler_trained(model, name: str | None = None) -> None:
    """Refuse budgets on a model whose scheduler was never trained (a plain HF Llava wrapped by
    `from_base`, or the output of `adallava init`): its plans would be noise. Raises ValueError naming
    the model (`name`, else the folder it was loaded from) and what to do."""
    if getattr(model, "scheduler_trained", True):
        return
    folder = str(getattr(model, "name_or_path", "") or "")
    name = name or folder or type(model).__name__
    if folder and Path(folder).is_dir() and not (Path(folder) / ADAPTIVE_CONFIG_FILE).is_file():
        why = "it is a base model (a plain HF Llava folder), wrapped with a fresh scheduler"
    else:
        why = (f'its {ADAPTIVE_CONFIG_FILE} says "{SCHEDULER_TRAINED}": false (or has no such key), as '
               "`adallava init` and `AdaLlava.from_base` leave a freshly initialised scheduler")  # fmt: skip
    raise ValueError(
        f"model {name!r} has no trained scheduler ({why}), so it cannot choose layers under a budget: run it "
        "without a budget (the full model), or train the scheduler first (`adallava train`, stage adaptive). "
        f'If its scheduler was trained, set "{SCHEDULER_TRAINED}": true in its {ADAPTIVE_CONFIG_FILE}.'
    )


def collate(prompts: Sequence[Prompt], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids / attention_mask [B, T] and the batch's pixel_values [sum I, 3, H, W]."""
    width = max(p.num_tokens for p in prompts)
    lengths = torch.tensor([p.num_tokens for p in prompts])  # [B]
    attention_mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()  # [B, T]
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    input_ids[attention_mask.bool()] = torch.cat([p.input_ids for p in prompts])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    pixels = [p.pixel_values for p in prompts if p.pixel_values is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    return batch


@torch.no_grad()
def answer_batch(
    model,
    processor,
    prompts: Sequence[Prompt],
    budgets: Sequence[float | str | None],
    max_new_tokens: Sequence[int],
    plan: ExecutionPlan | None = None,
    deadline_start: float | None = None,
    **generate_kwargs,
) -> list[Answer]:
    """Greedy answers for a batch, row r under `budgets[r]` (a fraction, a FLOPs string such as "2M",
    or None for every row: the base model) with at most `max_new_tokens[r]` new tokens. `plan`: an
    explicit plan (rows [B]) instead of budgets (every budget None), e.g. an evaluation baseline's.
    Budgets may be deadlines ("300ms", `Deadline`), counted from `deadline_start` (a
    `time.perf_counter()` value, e.g. a server request's arrival; default: this call); each such
    answer carries a `deadline` report.
    Extra kwargs go to `generate` (e.g. a `streamer`, `stopping_criteria`). Raises ValueError for a
    bad budget, or for budgets on a model without a trained scheduler (`check_scheduler_trained`)."""
    _check_rows(model, prompts, budgets, max_new_tokens, plan)
    inputs, pad = _inputs(model, processor, prompts)
    started = time.perf_counter()
    out = model.generate(
        **inputs,
        budget=_budget(budgets),
        plan=plan,
        max_new_tokens=max(max_new_tokens),
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
        return_dict_in_generate=True,
        **({"deadline_start": deadline_start} if deadline_start is not None else {}),
        **generate_kwargs,
    )
    total_ms = (time.perf_counter() - started) * 1e3
    deadlines = deadline_rows(list(budgets), len(prompts)) or [None] * len(prompts)
    new = out.sequences[:, inputs["input_ids"].shape[1] :].cpu()  # [B, G]
    limits = torch.tensor(list(max_new_tokens))  # [B]
    produced = torch.minimum(model.produced_tokens(new), limits)  # [B] tokens each row computed
    decode = model.decode_cost(out.prefill_tokens, new, out.plan, limits, plan_changes=out.plan_changes)
    eos = set(model.eos_token_ids)
    plans = _plans(model.num_layers, out.plan, len(prompts))
    drafts = _drafts(getattr(out, "speculative", None), len(prompts))
    answers = []
    for row, prompt in enumerate(prompts):
        tokens = new[row, : int(produced[row])].tolist()
        stopped = bool(tokens) and tokens[-1] in eos
        if stopped:
            tokens = tokens[:-1]
        answers.append(
            Answer(
                text=processor.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                token_ids=tokens,
                finish_reason=FINISH_STOP if stopped else FINISH_LENGTH,
                completion_tokens=int(produced[row]),
                prompt_tokens=prompt.num_tokens,
                budget=None if out.budget is None else float(out.budget[row]),
                **plans[row],
                prefill_flops=_flops(out.prefill_cost, row),
                full_prefill_flops=_flops(out.full_prefill_cost, row),
                decode_flops=_flops(decode, row),
                unknown_words=prompt.unknown_words,
                prefill_ms=out.prefill_ms,
                decode_ms=out.decode_ms,
                total_ms=total_ms,
                deadline=None if out.deadline is None or deadlines[row] is None else out.deadline.to_dict(),
                speculative=drafts[row],
            )
        )
    return answers


def _drafts(report, rows: int) -> list[dict | None]:
    """Each row's {"drafted", "accepted"} from generate's SpeculativeReport (None for every row without
    one: plain decoding)."""
    if report is None:
        return [None] * rows
    return [
        {"drafted": int(drafted), "accepted": int(accepted)}
        for drafted, accepted in zip(report.drafted, report.accepted, strict=True)
    ]


@torch.no_grad()
def prefill_batch(
    model,
    processor,
    prompts: Sequence[Prompt],
    budgets: Sequence[float | str | None],
    plan: ExecutionPlan | None = None,
) -> None:
    """The prefill of `answer_batch` alone (one forward pass that yields the first token, same rows,
    budgets or plan), to time the first token."""
    _check_rows(model, prompts, budgets, [1] * len(prompts), plan)
    inputs, _ = _inputs(model, processor, prompts)
    model(**inputs, budget=_budget(budgets), plan=plan, use_cache=True, logits_to_keep=1)


def _check_rows(model, prompts, budgets, max_new_tokens, plan) -> None:
    if not len(prompts) == len(budgets) == len(max_new_tokens):
        raise ValueError(
            f"one budget and one max_new_tokens per prompt: got {len(prompts)} prompts, "
            f"{len(budgets)} budgets, {len(max_new_tokens)} max_new_tokens"
        )
    if any(n < 1 for n in max_new_tokens):
        raise ValueError(f"max_new_tokens must be >= 1 per row, got {list(max_new_tokens)}")
    unbudgeted = [b is None for b in budgets]
    if any(unbudgeted) and not all(unbudgeted):
        raise ValueError("a batch runs either every row under a budget or none (the base model)")
    if plan is not None and not all(unbudgeted):
        raise ValueError("a batch runs under budgets or an explicit plan, not both")
    if not all(unbudgeted):
        check_scheduler_trained(model)


def _inputs(model, processor, prompts: Sequence[Prompt]) -> tuple[dict[str, torch.Tensor], int]:
    """The collated batch on the model's device, and the pad token id."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {k: v.to(model.device) for k, v in collate(prompts, pad).items()}, pad


def _budget(budgets: Sequence[float | str | None]) -> list | None:
    return None if all(b is None for b in budgets) else list(budgets)


def _plans(num_layers: int, plan: ExecutionPlan | None, batch: int) -> list[dict]:
    """Per row: {plan: {"layers", "num_layers"[, "head_units"]}, plan_key, unit_fraction}; the base
    model (no plan) runs every layer."""
    executed = [list(range(num_layers)) for _ in range(batch)] if plan is None else plan.executed_layers()
    units = None
    if plan is not None and plan.heads is not None:
        heads = (plan.heads & plan.layers[..., None]).cpu()  # [B, N, H]
        mlp = (plan.mlp & plan.layers[..., None]).cpu()  # [B, N, G]
        units = torch.cat([heads.flatten(1), mlp.flatten(1)], dim=1)  # [B, N * (H + G)]
    rows = []
    for row, layers in enumerate(executed):
        entry = {"plan": {"layers": layers, "num_layers": num_layers}, "plan_key": ",".join(map(str, layers))}
        entry["unit_fraction"] = None
        if units is not None:
            digest = hashlib.blake2b(units[row].numpy().tobytes(), digest_size=8).hexdigest()
            entry["plan"]["head_units"] = plan.heads[row].sum(-1).tolist()
            entry["plan_key"] += f"/{digest}"
            entry["unit_fraction"] = float(units[row].float().mean())
        rows.append(entry)
    return rows


def _flops(cost, row: int) -> dict[str, float]:
    return {"llm": float(cost.llm[row]), "total": float(cost.total[row])}


def ask(model, processor, image: Image.Image, question: str, budget, max_new_tokens: int = 16,
        best_effort: bool = False) -> dict:  # fmt: skip
    """One answer and what it cost: {answer, budget, plan, flops, full_flops, decode_flops, ms (the
    whole call), prefill_ms, decode_ms, generate_ms (the model's generate call), completion_tokens,
    unknown_words (the
    words of the prompt the tokenizer read as its unknown token), deadline (for a deadline budget:
    deadline, predicted and measured ms, met, slowdown, the fraction it ran at)}. best_effort: run the
    smallest plan when a deadline is infeasible instead of raising."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens (--max-new-tokens) must be >= 1, got {max_new_tokens}")
    prompt = encode(processor, chat_prompt(processor, question), [image])
    if deadline_rows([budget], 1) is not None:
        model.deadlines.profile  # noqa: B018 -- a saved profile, or a quick calibration, before the clock starts
    start = time.perf_counter()
    extra = {"deadline_best_effort": True} if best_effort else {}
    [answer] = answer_batch(
        model, processor, [prompt], [budget], [max_new_tokens], deadline_start=start, **extra
    )
    ms = (time.perf_counter() - start) * 1e3
    return {
        "answer": answer.text,
        "budget": answer.budget,
        "plan": answer.plan,
        "flops": answer.prefill_flops,
        "full_flops": answer.full_prefill_flops,
        "decode_flops": answer.decode_flops,
        "ms": ms,
        "prefill_ms": answer.prefill_ms,
        "decode_ms": answer.decode_ms,
        "generate_ms": answer.total_ms,
        "completion_tokens": answer.completion_tokens,
        "deadline": answer.deadline,
        "unknown_words": list(answer.unknown_words),
    }
