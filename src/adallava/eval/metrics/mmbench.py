"""MMBench circular accuracy with rule-based option matching.

Matching (MMBench's evaluator as carried in lmms_eval/tasks/mmbench/mmbench_evals.py, can_infer):
split the prediction on whitespace; if exactly one of the tokens A-E appears bare, that letter wins,
unless "A" is a token of a prediction longer than 3 tokens ("A" may be an article); then the same
for the forms "X." "X," "X:" "X)" "X)." "(X)" "(X)." ":X" ":X," ":X." ":X)" ":X)." in that order;
else the option whose text (lowercased) is the only one contained in the lowercased prediction. The
official evaluator asks ChatGPT when all rules fail; that is not reproduced: an unmatched prediction
is wrong and counted in `unmatched`.

Under the lmms-eval protocol an answer these rules cannot read goes through lmms-eval's fallback
(`choice_letter`: its `extract_mcq_answer`, over the letters of the shown options), as lmms-eval's
offline MMBench scoring does (`MMBench_Evaluator.eval_result(..., eval_method="static")`, the
mmbench_en_dev_static task); `unmatched` then counts the answers the fallback could not read either.

Circular evaluation: a question counts only if every pass is right. Passes are the rows that share
index % 1,000,000 (circular copies in the TSV) and, under the llava protocol, the option rotations
of each row when the predictions carry round ids > 0 (LLaVA's model_vqa_mmbench.py --all-rounds
writes one answer per rotation, round r showing the options shifted left by r). Then every row needs
all its rotations. The lmms-eval protocol (lmms_eval/tasks/mmbench/en_utils.py) scores one answer
per TSV row (round 0) and groups circular copies the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adallava.eval.metrics.choice_letter import choice_letter
from adallava.eval.protocols import Protocol, check_protocol
from adallava.eval.readers.mmbench import rotate_mmbench
from adallava.eval.records import MMBenchSample
from adallava.inference.prompts import OPTION_LETTERS

_CANDIDATES = OPTION_LETTERS  # the evaluator looks for A-E whatever the number of options
_AFFIXES = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ").")) + (
    (":", ""),
    (":", ","),
    (":", "."),
    (":", ")"),
    (":", ")."),
)
_API_FAILURE = "Failed to obtain answer via API"
CIRCULAR_OFFSET = 1_000_000


@dataclass(frozen=True)
class MMBenchScore:
    score: float
    """Circular accuracy, 0-100: questions with every pass right."""
    single_pass: float
    """Accuracy of each question's own row at round 0 (no circular evaluation), 0-100."""
    per_category: dict[str, float]
    per_l2_category: dict[str, float]
    n: int
    """Questions (rows with index < 1,000,000)."""
    passes: int
    """Answers scored."""
    unmatched: int
    """Answers no option could be read from (lmms-eval protocol: by the rules nor by its fallback)."""
    protocol: str


def mmbench_option(prediction: str, options: Sequence[str]) -> str | None:
    """The option letter a prediction names, by MMBench's rules, or None. `options` are the texts
    shown as A, B, ... for this prediction."""
    if _API_FAILURE in prediction:
        return None
    tokens = prediction.split()

    def named(prefix: str, suffix: str) -> list[str]:
        return [letter for letter in _CANDIDATES if prefix + letter + suffix in tokens]

    bare = named("", "")
    if len(bare) == 1 and not ("A" in tokens and len(tokens) > 3):
        return bare[0]
    for prefix, suffix in _AFFIXES:
        letters = named(prefix, suffix)
        if len(letters) == 1:
            return letters[0]
    text = prediction.lower()
    contained = [
        letter for letter, option in zip(OPTION_LETTERS, options, strict=False) if str(option).lower() in text
    ]
    return contained[0] if len(contained) == 1 else None


def score_mmbench(
    samples: Sequence[MMBenchSample],
    predictions: Mapping[tuple[int, int], str] | Mapping[int, str],
    protocol: Protocol = "llava",
) -> MMBenchScore:
    """Circular accuracy of `predictions`, keyed (index, round_id) or by index alone (round 0)."""
    protocol = check_protocol(protocol)
    answers: dict[tuple[int, int], str] = {
        (key if isinstance(key, tuple) else (key, 0)): text for key, text in predictions.items()
    }
    groups, mains = _circular_groups(samples)
    all_rounds = protocol == "llava" and any(round_id > 0 for _, round_id in answers)
    passes = _passes(groups, mains, answers, all_rounds)
    right: dict[int, bool] = dict.fromkeys(mains, True)
    single: dict[int, bool] = {}
    unmatched = 0
    for main_index, row, round_id in passes:
        shown = rotate_mmbench(row, round_id)
        text = answers[(int(row.question_id), round_id)]
        letter = mmbench_option(text, shown.options)
        if letter is None and protocol == "lmms-eval":
            letter = choice_letter(text, OPTION_LETTERS[: len(shown.options)]) or None
        unmatched += letter is None
        ok = letter == shown.answers[0]
        right[main_index] = right[main_index] and ok
        if int(row.question_id) == main_index and round_id == 0:
            single[main_index] = ok
    return MMBenchScore(
        score=100 * sum(right.values()) / len(mains),
        single_pass=100 * sum(single.values()) / len(mains),
        per_category=_percent_by(mains, right, "category"),
        per_l2_category=_percent_by(mains, right, "l2_category"),
        n=len(mains),
        passes=len(passes),
        unmatched=unmatched,
        protocol=protocol,
    )


def _circular_groups(
    samples: Sequence[MMBenchSample],
) -> tuple[dict[int, list[MMBenchSample]], dict[int, MMBenchSample]]:
    """(main index -> the rows of its circular group, main index -> its main row); every row needs an
    answer and every circular copy its main row."""
    groups: dict[int, list[MMBenchSample]] = {}
    for sample in samples:
        if not sample.answers:
            raise ValueError(
                f"MMBench row {sample.question_id} has no answer: its 'answer' cell is empty or the TSV has "
                "no 'answer' column (a test split?); it cannot be scored"
            )
        groups.setdefault(sample.main_index, []).append(sample)
    mains = {sample.main_index: sample for sample in samples if int(sample.question_id) < CIRCULAR_OFFSET}
    orphans = sorted(set(groups) - set(mains))
    if orphans:
        raise ValueError(
            f"MMBench: circular copies of index {orphans[0]} (and {len(orphans) - 1} more) have no main row"
        )
    if not mains:
        raise ValueError("MMBench: no samples to score")
    return groups, mains


def _passes(
    groups: Mapping[int, list[MMBenchSample]],
    mains: Mapping[int, MMBenchSample],
    answers: Mapping[tuple[int, int], str],
    all_rounds: bool,
) -> list[tuple[int, MMBenchSample, int]]:
    """Every (main index, row, round id) to score; each must have a prediction."""
    passes, missing = [], []
    for main_index in mains:
        for row in groups[main_index]:
            for round_id in range(len(row.options)) if all_rounds else (0,):
                key = (int(row.question_id), round_id)
                if key not in answers:
                    missing.append(key)
                passes.append((main_index, row, round_id))
    if missing:
        shown = ", ".join(f"index {i} round {r}" for i, r in missing[:5])
        raise ValueError(f"MMBench: {len(missing)} pass(es) have no prediction: {shown}")
    return passes


def _percent_by(
    mains: Mapping[int, MMBenchSample], right: Mapping[int, bool], attribute: str
) -> dict[str, float]:
    """Circular accuracy per value of a sample attribute (category, l2_category), 0-100."""
    buckets: dict[str, list[bool]] = {}
    for main_index, sample in mains.items():
        name = getattr(sample, attribute)
        if name:
            buckets.setdefault(name, []).append(right[main_index])
    return {name: 100 * sum(oks) / len(oks) for name, oks in sorted(buckets.items())}
