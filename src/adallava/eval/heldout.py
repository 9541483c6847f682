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

import torch
from PIL import Image
from tqdm.auto import tqdm

from adallava.core.plan import ExecutionPlan
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
    """Answer every question (greedy, left-padded batches) under a budget (the scheduler decides), or
    with the first `layers_run` layers only (naive early exit), or as the full model (both None)."""
    if budget is not None and layers_run is not None:
        raise ValueError("give a budget or layers_run (early exit), not both")
    processor.tokenizer.padding_side = "left"
    predictions, plans, llm, full_llm, violations = [], [], [], [], 0
    batches = range(0, len(questions), batch_size)
    for start in tqdm(batches, disable=not progress, desc="held-out", unit="batch"):
        batch = questions[start : start + batch_size]
        images = []
        for question in batch:
            with Image.open(question.image) as image:
                images.append(image.convert("RGB"))
        texts = [chat_prompt(processor, question.prompt) for question in batch]
        inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
        inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values")}
        kwargs = {}
        if budget is not None:
            kwargs["budget"] = budget
        elif layers_run is not None:
            kwargs["plan"] = ExecutionPlan.early_exit(len(batch), model.num_layers, layers_run)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                **kwargs,
            )
        new = out.sequences[:, inputs["input_ids"].shape[1] :]
        predictions += [processor.tokenizer.decode(row, skip_special_tokens=True) for row in new]
        executed = (
            out.plan.executed_layers()
            if out.plan is not None
            else [list(range(model.num_layers))] * len(batch)
        )
        plans += executed
        llm += out.prefill_cost.llm.tolist()
        full_llm += out.full_prefill_cost.llm.tolist()
        if budget is not None:
            limit = budget * out.full_prefill_cost.llm * (1 + 1e-9)
            violations += int((out.prefill_cost.llm > limit).sum())
    right = [normalize(p) == normalize(q.answer) for p, q in zip(predictions, questions, strict=True)]
    by_family: dict[str, list[bool]] = defaultdict(list)
    for question, ok in zip(questions, right, strict=True):
        by_family[question.family].append(ok)
    return HeldoutResult(
        accuracy=100 * sum(right) / len(right),
        per_family={family: 100 * sum(oks) / len(oks) for family, oks in sorted(by_family.items())},
        n=len(right),
        llm_flops=sum(llm) / len(llm),
        full_llm_flops=sum(full_llm) / len(full_llm),
        violations=violations,
        plans=plans,
        families=[question.family for question in questions],
        predictions=predictions,
    )
