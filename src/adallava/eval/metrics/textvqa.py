"""TextVQA accuracy as LLaVA reports it (llava/eval/eval_textvqa.py with llava/eval/m4c_evaluator.py
TextVQAAccuracyEvaluator): the EvalAI answer processor on the prediction and on each of the 10 human
answers, then the leave-one-out VQA accuracy; 100 * mean, unrounded.

lmms-eval (lmms_eval/tasks/textvqa/utils.py) scores the same way; it only drops m4c's check that
there are exactly 10 answers and averages the ten leave-one-out terms with statistics.mean (equal to
m4c's sum / len up to the last bit), so both protocols give the same numbers on TextVQA data.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adallava.eval.answer_processing import evalai_normalize
from adallava.eval.metrics._common import require_predictions
from adallava.eval.metrics.vqav2 import leave_one_out_accuracy, leave_one_out_terms
from adallava.eval.protocols import Protocol, check_protocol
from adallava.eval.records import TextVQASample

HUMAN_ANSWERS = 10


@dataclass(frozen=True)
class TextVQAScore:
    score: float
    """Accuracy, 0-100."""
    n: int
    protocol: str


def textvqa_accuracy(prediction: str, ground_truths: Sequence[str], protocol: Protocol = "llava") -> float:
    """One question's accuracy in [0, 1]: raw model output against the raw human answers."""
    if not ground_truths:
        raise ValueError("TextVQA accuracy needs ground-truth answers (the test split has none)")
    answer, truths = evalai_normalize(prediction), [evalai_normalize(truth) for truth in ground_truths]
    if check_protocol(protocol) == "lmms-eval":
        return statistics.mean(leave_one_out_terms(answer, truths))  # textvqa_process_results
    return leave_one_out_accuracy(answer, truths)  # m4c _compute_answer_scores: sum(accs) / len(accs)


def score_textvqa(
    samples: Sequence[TextVQASample], predictions: Mapping[int, str], protocol: Protocol = "llava"
) -> TextVQAScore:
    """TextVQA accuracy of `predictions` (question_id -> raw model output)."""
    protocol = check_protocol(protocol)
    require_predictions((sample.question_id for sample in samples), predictions, "TextVQA")
    if not samples:
        raise ValueError("TextVQA: no samples to score")
    scores = []
    for sample in samples:
        if protocol == "llava" and len(sample.answers) != HUMAN_ANSWERS:
            raise ValueError(
                f"TextVQA question {sample.question_id} has {len(sample.answers)} answers; the m4c evaluator "
                f"LLaVA uses requires {HUMAN_ANSWERS} (use --protocol lmms-eval to score other counts)"
            )
        scores.append(textvqa_accuracy(predictions[sample.question_id], sample.answers, protocol))
    # eval_textvqa.py prints 100. * eval_pred_list(...), which returns sum(pred_scores) / len(pred_scores).
    return TextVQAScore(score=100.0 * (sum(scores) / len(scores)), n=len(scores), protocol=protocol)
