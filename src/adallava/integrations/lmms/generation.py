"""lmms-eval's generation requests as adallava rows: each request's settings (a task's
`generation_kwargs`, merged with `--gen_kwargs`), and the batches they run in.

Decoding is greedy (lmms-eval's tasks here ask for temperature 0); a request for sampling or beam
search is refused rather than silently answered greedily. Every row of a batch keeps its own budget,
token limit and stop strings (`answer_batch` takes them per row), so batches group rows only by
whether they run under a budget at all (a batch runs either every row under a budget or none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adallava.integrations.lmms.model_args import Budget, parse_budget_value

# Keys of generation_kwargs that greedy decoding honours by construction or that do not apply.
_IGNORED = frozenset(
    {"top_p", "top_k", "use_cache", "image_sizes", "image_aspect_ratio", "repetition_penalty"}
)


@dataclass(frozen=True)
class RowSettings:
    """How one request is answered. `budget`: None runs the model's default (see `resolve_budget`)."""

    max_new_tokens: int
    until: tuple[str, ...] = ()
    budget: Budget | None = None


def row_settings(gen_kwargs: dict, default_max_new_tokens: int) -> RowSettings:
    """One request's settings from its generation kwargs: max_new_tokens (else the default), `until`
    (a string or list of stop strings), and an optional per-request `budget`. ValueError for sampling
    (do_sample true or temperature > 0), beams > 1, or any other key adallava cannot honour."""
    kwargs = dict(gen_kwargs or {})
    if kwargs.pop("do_sample", False):
        raise ValueError("adallava answers greedily: generation_kwargs do_sample=True is not supported")
    temperature = kwargs.pop("temperature", 0) or 0
    if float(temperature) > 0:
        raise ValueError(f"adallava answers greedily: generation_kwargs temperature={temperature} must be 0")
    beams = kwargs.pop("num_beams", 1) or 1
    if int(beams) != 1:
        raise ValueError(f"adallava answers greedily: generation_kwargs num_beams={beams} must be 1")
    until = kwargs.pop("until", ())
    if isinstance(until, str):
        until = (until,)
    if not all(isinstance(stop, str) for stop in until):
        raise ValueError(f"generation_kwargs until must be a string or a list of strings; got {until!r}")
    limit = kwargs.pop("max_new_tokens", None)
    if limit is None:
        limit = default_max_new_tokens
    if isinstance(limit, bool) or int(limit) != limit or int(limit) < 1:
        raise ValueError(f"generation_kwargs max_new_tokens must be an integer >= 1; got {limit!r}")
    budget = kwargs.pop("budget", None)
    unknown = sorted(set(kwargs) - _IGNORED)
    if unknown:
        raise ValueError(
            f"adallava cannot honour generation_kwargs {', '.join(unknown)} (it decodes greedily with "
            "max_new_tokens, until and an optional budget)"
        )
    return RowSettings(
        max_new_tokens=int(limit),
        until=tuple(stop for stop in until if stop),
        budget=None if budget is None else parse_budget_value(budget),
    )


def resolve_budget(row: Budget | None, default: Budget | None, full_model: bool, trained: bool):
    """The budget a row runs under: its own, else the model_args budget, else 1.0 for a model with a
    trained scheduler; None (the full model, no scheduler) for budget=none or an untrained scheduler."""
    if row is not None:
        return row
    if full_model:
        return None
    if default is not None:
        return default
    return 1.0 if trained else None


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """The text before the first occurrence of any stop string (lmms-eval's `until`), unchanged if none
    occurs."""
    cut = len(text)
    for stop in until:
        found = text.find(stop)
        if found != -1:
            cut = min(cut, found)
    return text[:cut]


def batches(lengths: Sequence[int], budgeted: Sequence[bool], size: int) -> list[list[int]]:
    """Request indices in batches of at most `size`: rows with and without a budget apart, each group
    sorted by prompt length (longest first, ties by index) so that a batch pads little."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1; got {size}")
    out = []
    for flag in (True, False):
        rows = sorted((i for i in range(len(lengths)) if budgeted[i] == flag), key=lambda i: (-lengths[i], i))
        out += [rows[start : start + size] for start in range(0, len(rows), size)]
    return out
