"""ScienceQA-IMG accuracy.

llava protocol (llava/eval/eval_science_qa.py): the letter is the whole prediction when it is one of
A-E; else its first character when followed by ". " ("B. dog"); else the single match of the regex
"The answer is ([A-Z])." (any character after the letter; zero or several matches fail). A letter
beyond the question's choices, or no letter, is wrong. LLaVA-1.5 reports the accuracy on the test
questions with an image (its "IMG-Accuracy", counted there by '<image>' in the prompt).

lmms-eval protocol (lmms_eval/tasks/scienceqa/utils.py, sqa_process_results): the prediction is
stripped; right when it equals the answer letter ignoring case ("b", " B\n"), or when it is at least 2
characters, starts with an uppercase letter followed by "." and that letter is the answer ("B."
counts; "b." and "The answer is B." do not).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adallava.eval.metrics._common import require_predictions
from adallava.eval.protocols import Protocol, check_protocol
from adallava.eval.records import ScienceQASample
from adallava.inference.prompts import OPTION_LETTERS

_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


@dataclass(frozen=True)
class ScienceQAScore:
    score: float
    """Accuracy, 0-100."""
    correct: int
    failed: int
    """Predictions no letter could be read from (llava protocol; always 0 under lmms-eval)."""
    per_subject: dict[str, float]
    n: int
    protocol: str


def scienceqa_letter(prediction: str) -> str | None:
    """The option letter LLaVA's eval_science_qa.py reads from a prediction, or None ("FAILED")."""
    if prediction in OPTION_LETTERS:
        return prediction
    if len(prediction) >= 3 and prediction[0] in OPTION_LETTERS and prediction[1:3] == ". ":
        return prediction[0]
    matches = _ANSWER_IS.findall(prediction)
    return matches[0] if len(matches) == 1 else None


def scienceqa_correct(prediction: str, sample: ScienceQASample, protocol: Protocol = "llava") -> bool:
    target = OPTION_LETTERS[sample.answer_index]
    if check_protocol(protocol) == "lmms-eval":
        # sqa_process_results (lmms-eval 8ada805, 2025): pred = output.strip(); right when
        # pred.lower() == target.lower(), else when pred matches "^[A-Z]\." with that letter.
        text = prediction.strip()
        if text.lower() == target.lower():
            return True
        return len(text) >= 2 and text[0].isupper() and text[1] == "." and text[0] == target
    letter = scienceqa_letter(prediction)
    # get_pred_idx: only letters among this question's choices count.
    return letter is not None and letter in OPTION_LETTERS[: len(sample.choices)] and letter == target


def score_scienceqa(
    samples: Sequence[ScienceQASample], predictions: Mapping[str, str], protocol: Protocol = "llava"
) -> ScienceQAScore:
    """Accuracy of `predictions` (pid -> raw model output) on the samples (ScienceQA-IMG: pass the
    image questions of the test split, as `read_scienceqa` returns them)."""
    protocol = check_protocol(protocol)
    require_predictions((sample.question_id for sample in samples), predictions, "ScienceQA")
    if not samples:
        raise ValueError("ScienceQA: no samples to score")
    right = [scienceqa_correct(predictions[sample.question_id], sample, protocol) for sample in samples]
    failed = 0
    if protocol == "llava":
        failed = sum(scienceqa_letter(predictions[sample.question_id]) is None for sample in samples)
    by_subject: dict[str, list[bool]] = {}
    for sample, ok in zip(samples, right, strict=True):
        by_subject.setdefault(sample.subject, []).append(ok)
    return ScienceQAScore(
        score=sum(right) / len(right) * 100,
        correct=sum(right),
        failed=failed,
        per_subject={name: 100 * sum(oks) / len(oks) for name, oks in sorted(by_subject.items())},
        n=len(samples),
        protocol=protocol,
    )
