"""ScienceQA-IMG: eval_science_qa.py's letter parsing (llava) vs lmms-eval's sqa_process_results."""

import json
from pathlib import Path

import pytest

from adallava.eval.metrics import scienceqa_letter, score_scienceqa
from adallava.eval.metrics.scienceqa import scienceqa_correct
from adallava.eval.readers import answers_by_id, read_llava_answers, read_scienceqa
from adallava.eval.records import ScienceQASample


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("B. dog", "B"),
        ("The answer is B.", "B"),
        ("The answer is B, since", "B"),  # any character after the letter
        ("The answer is B", None),  # ... but there must be one
        ("B.", None),  # too short for "X. "
        (" B", None),
        ("b", None),
        ("The answer is A. The answer is B.", None),  # two matches fail
        ("", None),
        ("AB", None),
    ],
)
def test_scienceqa_letter(text: str, letter: str | None) -> None:
    assert scienceqa_letter(text) == letter


def _sample(n_choices: int, answer: int) -> ScienceQASample:
    return ScienceQASample("1", None, "", ("ABCDE"[answer],), "", "", ("x",) * n_choices, answer, "", "")


def test_letter_beyond_choices_is_wrong() -> None:
    assert not scienceqa_correct("E", _sample(4, 3))
    assert scienceqa_correct("D", _sample(4, 3))


def test_lmms_eval_protocol() -> None:
    sample = _sample(3, 1)
    assert scienceqa_correct("B", sample, "lmms-eval")
    assert scienceqa_correct("B.", sample, "lmms-eval")
    assert scienceqa_correct("B. dog", sample, "lmms-eval")
    assert not scienceqa_correct("The answer is B.", sample, "lmms-eval")
    assert not scienceqa_correct("b.", sample, "lmms-eval")
    # lmms-eval strips the prediction and compares a lone letter ignoring case (its sqa_process_results);
    # bug caught: an unstripped or case-sensitive comparison.
    assert scienceqa_correct(" b", sample, "lmms-eval") and scienceqa_correct("B\n", sample, "lmms-eval")


def test_fixture_image_questions_only(fixtures: Path) -> None:
    folder = fixtures / "scienceqa"
    samples = read_scienceqa(folder / "problems.json", folder / "pid_splits.json")
    assert [s.question_id for s in samples] == ["1", "2", "3", "5", "7"]  # "4" has no image
    assert str(samples[0].image) == "1/image.png"
    assert samples[0].prompt.splitlines()[1:] == [
        "A. frog",
        "B. dog",
        "C. trout",
        "Answer with the option's letter from the given choices directly.",
    ]
    predictions = answers_by_id(read_llava_answers(folder / "answers.jsonl"))
    score = score_scienceqa(samples, predictions)
    # right: "The answer is B.", "A", "D. dog", "The answer is C, ..."; wrong: "B." (unparsed).
    assert (score.score, score.correct, score.failed) == (80.0, 4, 1)
    assert score_scienceqa(samples, predictions, "lmms-eval").score == 60.0


def test_answer_out_of_range_names_problem_and_field(tmp_path: Path, fixtures: Path) -> None:
    problems = json.loads((fixtures / "scienceqa/problems.json").read_text())
    problems["2"]["answer"] = 2
    bad = tmp_path / "problems.json"
    bad.write_text(json.dumps(problems))
    with pytest.raises(ValueError, match=r"problems\.json: problem '2': field 'answer' must index 'choices'"):
        read_scienceqa(bad, fixtures / "scienceqa/pid_splits.json")


def test_unknown_split(fixtures: Path) -> None:
    with pytest.raises(ValueError, match="no split 'minitest'"):
        folder = fixtures / "scienceqa"
        read_scienceqa(folder / "problems.json", folder / "pid_splits.json", "minitest")


def test_per_subject_accuracy_and_the_empty_set() -> None:
    # Bug caught: per-subject percentages scaled or averaged wrongly (only the overall score was
    # checked), and an empty sample list scored instead of refused with a message naming the benchmark.
    def sample(pid: str, answer: int, subject: str) -> ScienceQASample:
        return ScienceQASample(pid, None, "", ("AB"[answer],), "", "", ("x", "y"), answer, subject, "")

    samples = [sample("1", 0, "natural"), sample("2", 1, "natural"), sample("3", 0, "social"),
               sample("4", 1, "natural")]  # fmt: skip
    score = score_scienceqa(samples, {"1": "A", "2": "A", "3": "A", "4": "B"})
    assert score.per_subject == {"natural": 100 * 2 / 3, "social": 100.0}  # hand: 2 of 3, 1 of 1
    assert score.score == 75.0 and score.correct == 3
    with pytest.raises(ValueError, match="ScienceQA: no samples"):
        score_scienceqa([], {})
