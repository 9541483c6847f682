"""VQAv2 accuracy.

llava protocol = the pipeline behind LLaVA-1.5's VQAv2 numbers: LLaVA's EvalAI answer processor on
each prediction (haotian-liu/LLaVA scripts/convert_vqav2_for_submission.py with
llava/eval/m4c_evaluator.py EvalAIAnswerProcessor), then the official evaluation, GT-Vision-Lab/VQA
PythonEvaluationTools/vqaEvaluation/vqaEval.py at master a013f00 ("Fixed processing answers bug",
2021), `evaluate`:
  1. newlines and tabs become spaces and both ends are stripped, on the ten ground truths and on the
     answer;
  2. only if the cleaned ground truths are not all identical, processPunctuation then
     processDigitArticle go over every ground truth and over the answer; unanimous ground truths are
     compared raw with the (cleaned) answer;
  3. per question, the mean over the ten humans of min(#{other humans whose answer equals it} / 3, 1);
  4. overall, per answer type and per question type: round(100 * sum / n, 2) (setAccuracy).
(The pre-2021 script, and GT-Vision-Lab/VQA's feature/update_style branch, always process the answer
and only punctuation-process the ground truths; that is not what runs now.)

lmms-eval protocol = lmms_eval/tasks/vqav2/utils.py vqav2_process_results since lmms-eval v0.4.1
(commits b439d82 and 28ea9a1, 2025): no EvalAI word_tokenize step; the prediction and the ground
truths are cleaned as in step 1, then EvalAI's process_punctuation and process_digit_article go over
all of them, unanimous or not; the per-question accuracy is statistics.mean of the same ten
leave-one-out terms; the score is 100 * the plain mean over questions, unrounded. lmms-eval reports
only that overall mean; the per-type breakdowns here use the same per-question values.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adallava.eval.answer_processing import clean_whitespace, evalai_normalize, evalai_steps, vqa_normalize
from adallava.eval.metrics._common import require_predictions
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


def leave_one_out_terms(answer: str, ground_truths: Sequence[str]) -> list[float]:
    """For each human i, min(#{j != i : ground_truths[j] == answer} / 3, 1), in the humans' order."""
    matches = sum(truth == answer for truth in ground_truths)
    # Leaving out human i removes one match exactly when i itself matched.
    return [min((matches - (truth == answer)) / 3, 1.0) for truth in ground_truths]


def leave_one_out_accuracy(answer: str, ground_truths: Sequence[str]) -> float:
    """The mean of `leave_one_out_terms` as vqaEval.py and m4c_evaluator.py take it (sum / len); in [0, 1]."""
    terms = leave_one_out_terms(answer, ground_truths)
    return sum(terms) / len(terms)


def official_vqa_accuracy(answer: str, ground_truths: Sequence[str]) -> float:
    """vqaEval.py's accuracy of one result answer (as uploaded) against the raw human answers."""
    answer = clean_whitespace(answer)
    truths = [clean_whitespace(truth) for truth in ground_truths]
    if len(set(truths)) > 1:
        truths = [vqa_normalize(truth) for truth in truths]
        answer = vqa_normalize(answer)
    return leave_one_out_accuracy(answer, truths)


def vqav2_accuracy(prediction: str, ground_truths: Sequence[str], protocol: Protocol = "llava") -> float:
    """One question's VQA accuracy in [0, 1] for a raw model output and the raw human answers."""
    if not ground_truths:
        raise ValueError("VQAv2 accuracy needs ground-truth answers (test splits have none)")
    if check_protocol(protocol) == "llava":
        return official_vqa_accuracy(evalai_normalize(prediction), ground_truths)
    answer = evalai_steps(clean_whitespace(prediction))
    truths = [evalai_steps(clean_whitespace(truth)) for truth in ground_truths]
    return statistics.mean(leave_one_out_terms(answer, truths))


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
        if protocol == "llava":
            return round(100 * sum(values) / len(values), 2)  # vqaEval.py setAccuracy, same order
        return 100 * (sum(values) / len(values))  # lmms_eval/api/metrics.py mean, as a percentage

    return VQAv2Score(
        score=percent(overall),
        per_answer_type={name: percent(values) for name, values in sorted(by_answer_type.items())},
        per_question_type={name: percent(values) for name, values in sorted(by_question_type.items())},
        n=len(samples),
        protocol=protocol,
    )
