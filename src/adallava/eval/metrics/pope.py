"""POPE yes/no metrics.

llava protocol (llava/eval/eval_pope.py): the prediction is cut at its first "." , commas are
removed, it is split on spaces, and it means "no" when one of the words is exactly "No", "no" or
"not"; anything else (including "NO", "Nope" and "") means "yes". Per category (random, popular,
adversarial): accuracy, precision, recall, F1 and yes-ratio (the share of "yes" predictions). The
number LLaVA-1.5 reports is the mean F1 over the categories.

lmms-eval protocol (lmms_eval/tasks/pope/utils.py): the prediction is lowercased and stripped and
must equal "yes" or "no"; other text is neither a positive nor a negative and is simply wrong. The
metrics are pooled over all questions, and its "yes ratio" is the share of "yes" *ground truths*
(as that code computes it). The primary score is the pooled F1.

All sub-metrics are on a 0-100 scale; a zero denominator gives 0 where the official script would fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adallava.eval.metrics._common import ratio, require_predictions
from adallava.eval.protocols import Protocol, check_protocol
from adallava.eval.records import POPESample


@dataclass(frozen=True)
class POPECategoryScore:
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int
    n: int


@dataclass(frozen=True)
class POPEScore:
    score: float
    """Mean F1 over categories (llava) or pooled F1 (lmms-eval), 0-100."""
    per_category: dict[str, POPECategoryScore]
    overall: POPECategoryScore
    """All questions pooled."""
    n: int
    protocol: str


def pope_answer(prediction: str, protocol: Protocol = "llava") -> str:
    """The yes/no a prediction counts as: "yes" or "no" (llava); "yes", "no" or "other" (lmms-eval)."""
    if check_protocol(protocol) == "lmms-eval":
        text = prediction.lower().strip()
        return text if text in ("yes", "no") else "other"
    text = prediction.split(".")[0].replace(",", "")
    words = text.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(
    answers: Sequence[str], labels: Sequence[str], protocol: Protocol = "llava"
) -> POPECategoryScore:
    """Metrics of parsed answers ("yes" / "no" / "other") against labels ("yes" / "no")."""
    tp = sum(a == "yes" and y == "yes" for a, y in zip(answers, labels, strict=True))
    fp = sum(a == "yes" and y == "no" for a, y in zip(answers, labels, strict=True))
    tn = sum(a == "no" and y == "no" for a, y in zip(answers, labels, strict=True))
    fn = sum(a == "no" and y == "yes" for a, y in zip(answers, labels, strict=True))
    n = len(labels)
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    if check_protocol(protocol) == "llava":
        yes_ratio = ratio(sum(a == "yes" for a in answers), n)
    else:
        yes_ratio = ratio(sum(y == "yes" for y in labels), n)
    return POPECategoryScore(
        accuracy=100 * ratio(tp + tn, n),
        precision=100 * precision,
        recall=100 * recall,
        f1=100 * ratio(2 * precision * recall, precision + recall),
        yes_ratio=100 * yes_ratio,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        n=n,
    )


def score_pope(
    samples: Sequence[POPESample], predictions: Mapping[int, str], protocol: Protocol = "llava"
) -> POPEScore:
    """POPE metrics of `predictions` (question_id -> raw model output), per category and pooled."""
    protocol = check_protocol(protocol)
    require_predictions((sample.question_id for sample in samples), predictions, "POPE")
    if not samples:
        raise ValueError("POPE: no samples to score")
    answers = [pope_answer(predictions[sample.question_id], protocol) for sample in samples]
    labels = [sample.answers[0] for sample in samples]
    categories: dict[str, list[int]] = {}
    for position, sample in enumerate(samples):
        categories.setdefault(sample.category, []).append(position)
    per_category = {
        name: pope_metrics([answers[i] for i in rows], [labels[i] for i in rows], protocol)
        for name, rows in sorted(categories.items())
    }
    overall = pope_metrics(answers, labels, protocol)
    if protocol == "llava":
        score = sum(category.f1 for category in per_category.values()) / len(per_category)
    else:
        score = overall.f1
    return POPEScore(
        score=score, per_category=per_category, overall=overall, n=len(samples), protocol=protocol
    )
