"""MME scores, as the official eval tool computes them (eval_tool/calculation.py).

llava protocol (the official tool, which LLaVA-1.5 runs): the prediction is lowercased; exactly
"yes" / "no" counts as such, otherwise its first 4 characters decide: containing "yes" -> yes, else
containing "no" -> no, else "other" (always wrong). Per subtask, acc is the share of correct
questions and acc+ the share of images (two consecutive lines each) with both questions right; the
subtask score is 100 * acc + 100 * acc+ (at most 200). Perception sums the 10 perception subtasks
(at most 2000), cognition the 4 cognition subtasks (at most 800).

lmms-eval protocol (lmms_eval/tasks/mme/utils.py): the prediction and ground truth are lowercased,
stripped and have every "." removed; a lone "y" / "n" counts as yes / no; then the same 4-character
prefix rule. Questions are paired by image instead of by line. The sums are the same.

`score` puts perception on 0-100: perception / (2 * number of perception subtasks present), i.e.
perception / 20 with all 10 (cognition alone is used when no perception subtask is present).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adallava.eval.protocols import Protocol, check_protocol
from adallava.eval.readers.mme import COGNITION, PERCEPTION, MMEResult

SUBTASK_MAX = 200.0


@dataclass(frozen=True)
class MMESubtaskScore:
    score: float
    """100 * acc + 100 * acc+, 0-200."""
    acc: float
    acc_plus: float
    n: int
    other: int
    """Predictions that are neither yes nor no."""


@dataclass(frozen=True)
class MMEScore:
    score: float
    """Perception rescaled to 0-100 (see module docstring)."""
    perception: float
    cognition: float
    subtasks: dict[str, MMESubtaskScore]
    missing_subtasks: tuple[str, ...]
    n: int
    protocol: str


def mme_answer(prediction: str, protocol: Protocol = "llava") -> str:
    """ "yes", "no" or "other"."""
    text = prediction.lower()
    if check_protocol(protocol) == "lmms-eval":
        text = text.strip().replace(".", "")
        if len(text) == 1:
            return {"y": "yes", "n": "no"}.get(text, "other")
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    return "no" if "no" in prefix else "other"


def mme_subtask_score(rows: Sequence[MMEResult], protocol: Protocol = "llava") -> MMESubtaskScore:
    """Score of one subtask's result rows (two per image)."""
    protocol = check_protocol(protocol)
    if not rows or len(rows) % 2:
        raise ValueError(f"MME subtask needs two questions per image, got {len(rows)} rows")
    truth = (lambda text: text.lower().strip().replace(".", "")) if protocol == "lmms-eval" else str.lower
    correct = [mme_answer(row.prediction, protocol) == truth(row.answer) for row in rows]
    if protocol == "llava":
        pairs = [correct[i : i + 2] for i in range(0, len(rows), 2)]
    else:
        by_image: dict[str, list[bool]] = {}
        for row, right in zip(rows, correct, strict=True):
            by_image.setdefault(row.image, []).append(right)
        pairs = list(by_image.values())
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("MME (lmms-eval protocol) needs exactly two questions per image")
    acc = sum(correct) / len(correct)
    acc_plus = sum(all(pair) for pair in pairs) / len(pairs)
    return MMESubtaskScore(
        score=acc * 100 + acc_plus * 100,
        acc=100 * acc,
        acc_plus=100 * acc_plus,
        n=len(rows),
        other=sum(mme_answer(row.prediction, protocol) == "other" for row in rows),
    )


def score_mme(rows: Sequence[MMEResult], protocol: Protocol = "llava") -> MMEScore:
    """MME scores of result rows (`read_mme_results`, or `mme_results(samples, predictions)`)."""
    protocol = check_protocol(protocol)
    by_subtask: dict[str, list[MMEResult]] = {}
    for row in rows:
        if row.subtask not in PERCEPTION + COGNITION:
            raise ValueError(f"{row.where}: {row.subtask!r} is not an MME subtask")
        by_subtask.setdefault(row.subtask, []).append(row)
    if not by_subtask:
        raise ValueError("MME: no result rows to score")
    subtasks = {
        name: mme_subtask_score(by_subtask[name], protocol)
        for name in PERCEPTION + COGNITION
        if name in by_subtask
    }
    perception = sum(subtasks[name].score for name in PERCEPTION if name in subtasks)
    cognition = sum(subtasks[name].score for name in COGNITION if name in subtasks)
    n_perception = sum(name in subtasks for name in PERCEPTION)
    if n_perception:
        score = 100 * perception / (SUBTASK_MAX * n_perception)
    else:
        score = 100 * cognition / (SUBTASK_MAX * len(subtasks))
    return MMEScore(
        score=score,
        perception=perception,
        cognition=cognition,
        subtasks=subtasks,
        missing_subtasks=tuple(name for name in PERCEPTION + COGNITION if name not in subtasks),
        n=len(rows),
        protocol=protocol,
    )
