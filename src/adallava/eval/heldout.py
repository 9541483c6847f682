"""Exact-match accuracy on a synthetic world's held-out questions, per task family.

The world's answers are single words or letters, so a prediction is right when it equals the answer
after lower-casing and stripping surrounding punctuation. This is the quick, per-family view used to
build and check the bundled models; `adallava eval` gives the official benchmark metrics.
"""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from tqdm.auto import tqdm

from adallava.core.budget import over_budget
from adallava.core.plan import ExecutionPlan
from adallava.inference.answering import answer_batch, encode
from adallava.inference.prompts import chat_prompt


@dataclass(frozen=True)
class HeldoutResult:
    """accuracy: overall percent (mean over questions); per_family: percent per family; llm_flops and
    budget_violations: mean prefill LLM FLOPs per question and rows over their budget; plans: executed
    layers per question (for plan statistics)."""

    accuracy: float
    per_family: dict[str, float]
    n: int
    llm_flops: float
    full_llm_flops: float
    violations: int
    plans: list[list[int]]
    families: list[str]
    predictions: list[str]


def normalize(text: str) -> str:
    return text.strip().lower().strip(string.punctuation + " ")


def evaluate_heldout(
    model,
    processor,
    questions: Sequence,
    *,
    budget: float | None = None,
    layers_run: int | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 4,
    progress: bool = False,
) -> HeldoutResult:
    """Answer every question (greedy, left-padded batches through `inference.answering`) under a budget
    (the scheduler decides), or with the first `layers_run` layers only (naive early exit), or as the
    full model (both None)."""
    if budget is not None and layers_run is not None:
        raise ValueError("give a budget or layers_run (early exit), not both")
    answers = []
    batches = range(0, len(questions), batch_size)
    for start in tqdm(batches, disable=not progress, desc="held-out", unit="batch"):
        batch = questions[start : start + batch_size]
        prompts = [encode(processor, chat_prompt(processor, q.prompt), [_image(q.image)]) for q in batch]
        plan = None
        if layers_run is not None:
            plan = ExecutionPlan.early_exit(len(batch), model.num_layers, layers_run)
        budgets, limits = [budget] * len(batch), [max_new_tokens] * len(batch)
        answers += answer_batch(model, processor, prompts, budgets, limits, plan)
    predictions = [answer.text for answer in answers]
    right = [normalize(p) == normalize(q.answer) for p, q in zip(predictions, questions, strict=True)]
    by_family: dict[str, list[bool]] = defaultdict(list)
    for question, ok in zip(questions, right, strict=True):
        by_family[question.family].append(ok)
    llm = [answer.prefill_flops["llm"] for answer in answers]
    full_llm = [answer.full_prefill_flops["llm"] for answer in answers]
    return HeldoutResult(
        accuracy=100 * sum(right) / len(right),
        per_family={family: 100 * sum(oks) / len(oks) for family, oks in sorted(by_family.items())},
        n=len(right),
        llm_flops=sum(llm) / len(llm),
        full_llm_flops=sum(full_llm) / len(full_llm),
        violations=0 if budget is None else int(over_budget(llm, full_llm, budget).sum()),
        plans=[answer.plan["layers"] for answer in answers],
        families=[question.family for question in questions],
        predictions=predictions,
    )


def _image(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
