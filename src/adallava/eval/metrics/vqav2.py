"""VQAv2 accuracy.

llava protocol (LLaVA-1.5's reported numbers): LLaVA's EvalAI answer processor is applied to each
prediction (scripts/convert_vqav2_for_submission.py), then the official evaluation
(GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py, current version) scores it:
the result answer is cleaned (newlines, tabs, strip), punctuation-processed and digit/article-
processed; the ground truths are punctuation-processed only, and only when they are not all
identical (unanimous ground truths are compared raw). Per question, the accuracy is the mean over
the 10 leave-one-out subsets of min(#matching other humans / 3, 1). Overall, per answer type and per
question type are 100 * mean, rounded to 2 decimals.

lmms-eval protocol (lmms_eval/tasks/vqav2/utils.py): EvalAI processor on the prediction; the ground
truths are cleaned; when they are not unanimous, both the ground truths and the prediction get the
EvalAI punctuation and digit/article steps. Means are not rounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adallava.eval.answer_processing import (
    clean_whitespace,
    evalai_digit_article,
    evalai_normalize,
    evalai_punctuation,
    vqa_digit_article,
    vqa_punctuation,
)
from adallava.eval.metrics._common import mean, require_predictions
from adallava.eval.protocols import Protocol, check_protocol
from adallava.eval.records import VQAv2Sample


@dataclass(frozen=True)
class VQAv2Score:
    score: float
    """Overall accuracy, 0-100 (rounded to 2 decimals under the llava protocol)."""
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    n: int
    protocol: str


def leave_one_out_accuracy(answer: str, ground_truths: Sequence[str]) -> float:
    """Mean over each human i of min(#{j != i : ground_truths[j] == answer} / 3, 1); in [0, 1]."""
    matches = sum(truth == answer for truth in ground_truths)
    # Leaving out human i removes one match exactly when i itself matched.
    return mean(min((matches - (truth == answer)) / 3, 1.0) for truth in ground_truths)


def vqav2_accuracy(prediction: str, ground_truths: Sequence[str], protocol: Protocol = "llava") -> float:
    """One question's VQA accuracy in [0, 1] for a raw model output and the raw human answers."""
    if not ground_truths:
        raise ValueError("VQAv2 accuracy needs ground-truth answers (test splits have none)")
    answer = evalai_normalize(prediction)
    if check_protocol(protocol) == "llava":
        answer = vqa_digit_article(vqa_punctuation(clean_whitespace(answer)))
        truths = list(ground_truths)
        if len(set(truths)) > 1:
            truths = [vqa_punctuation(truth) for truth in truths]
    else:
        truths = [clean_whitespace(truth) for truth in ground_truths]
        if len(set(truths)) > 1:
            truths = [evalai_digit_article(evalai_punctuation(truth)) for truth in truths]
            answer = evalai_digit_article(evalai_punctuation(answer))
    return leave_one_out_accuracy(answer, truths)


def score_vqav2(
    samples: Sequence[VQAv2Sample], predictions: Mapping[int, str], protocol: Protocol = "llava"
) -> VQAv2Score:
    """VQAv2 accuracy of `predictions` (question_id -> raw model output) on annotated samples."""
    protocol = check_protocol(protocol)
    require_predictions((sample.question_id for sample in samples), predictions, "VQAv2")
    if not samples:
        raise ValueError("VQAv2: no samples to score")
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    overall = []
    for sample in samples:
        accuracy = vqav2_accuracy(predictions[sample.question_id], sample.answers, protocol)
        overall.append(accuracy)
        by_answer_type.setdefault(sample.answer_type, []).append(accuracy)
        by_question_type.setdefault(sample.question_type, []).append(accuracy)

    def percent(values: list[float]) -> float:
        value = 100 * sum(values) / len(values)  # vqaEval.py setAccuracy's order of operations
        return round(value, 2) if protocol == "llava" else value

    return VQAv2Score(
        score=percent(overall),
        per_answer_type={name: percent(values) for name, values in sorted(by_answer_type.items())},
        per_question_type={name: percent(values) for name, values in sorted(by_question_type.items())},
        n=len(samples),
        protocol=protocol,
    )
