"""POPE: eval_pope.py's yes/no parsing and per-category metrics (llava) vs lmms-eval's exact match."""

from pathlib import Path

import pytest

from adallava.eval.metrics import pope_answer, score_pope
from adallava.eval.metrics.pope import pope_metrics
from adallava.eval.readers import answers_by_id, read_llava_answers, read_pope, read_pope_annotations


@pytest.mark.parametrize(
    ("text", "llava", "lmms"),
    [
        ("Yes, there is a dog.", "yes", "other"),
        ("No.", "no", "other"),
        ("No, there is not.", "no", "other"),
        ("no", "no", "no"),
        (" Yes ", "yes", "yes"),
        ("There is no cat.", "no", "other"),
        ("I do not think so.", "no", "other"),
        ("NO", "yes", "no"),  # only "No", "no" and "not" are read as no
        ("Nope", "yes", "other"),
        ("Not at all", "yes", "other"),  # "Not" is not "not"
        ("yes. No wait", "yes", "other"),  # only the first sentence counts
        ("No,it is", "yes", "other"),  # commas are deleted, not spaced: "Noit is" has no "No"
        ("", "yes", "other"),
    ],
)
def test_pope_answer(text: str, llava: str, lmms: str) -> None:
    assert pope_answer(text) == llava
    assert pope_answer(text, "lmms-eval") == lmms


def test_metrics_by_hand() -> None:
    # answers yes, no, no, no vs labels yes, yes, no, no: TP 1, FN 1, TN 2, FP 0.
    m = pope_metrics(["yes", "no", "no", "no"], ["yes", "yes", "no", "no"])
    assert (m.tp, m.fp, m.tn, m.fn) == (1, 0, 2, 1)
    assert m.accuracy == 75.0 and m.precision == 100.0 and m.recall == 50.0
    assert m.f1 == pytest.approx(200 / 3) and m.yes_ratio == 25.0
    # lmms-eval's "yes ratio" counts ground-truth yeses.
    assert pope_metrics(["yes", "no", "no", "no"], ["yes", "yes", "no", "no"], "lmms-eval").yes_ratio == 50.0


def test_fixture_mean_f1_over_categories(fixtures: Path) -> None:
    samples = read_pope(fixtures / "pope/llava_pope_test.jsonl", fixtures / "pope/coco")
    predictions = answers_by_id(read_llava_answers(fixtures / "pope/answers.jsonl"))
    score = score_pope(samples, predictions)
    assert {k: round(v.f1, 4) for k, v in score.per_category.items()} == {
        "adversarial": 100.0,
        "popular": 80.0,
        "random": 66.6667,
    }
    assert score.score == pytest.approx((200 / 3 + 80 + 100) / 3)
    lmms = score_pope(samples, predictions, "lmms-eval")
    # Pooled exact matches: TP 2, FN 1, TN 1, nine "other" -> P 1, R 2/3, F1 0.8; accuracy 3/12.
    assert lmms.score == pytest.approx(80.0)
    assert lmms.overall.accuracy == 25.0


def test_category_from_file_name(fixtures: Path) -> None:
    samples = read_pope_annotations(fixtures / "pope/coco/coco_pope_popular.json")
    assert {s.category for s in samples} == {"popular"} and samples[0].answers == ("yes",)


def test_label_error_names_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "coco_pope_random.json"
    bad.write_text(
        '{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}\n'
        '{"question_id": 2, "image": "b.jpg", "text": "Is there a cat?", "label": "Yes"}\n'
    )
    with pytest.raises(ValueError, match=r"coco_pope_random\.json, line 2: field 'label' must be 'yes'"):
        read_pope_annotations(bad)


def test_out_of_order_question_file_is_caught(tmp_path: Path, fixtures: Path) -> None:
    lines = (fixtures / "pope/llava_pope_test.jsonl").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    swapped = tmp_path / "questions.jsonl"
    swapped.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"questions\.jsonl, line 1: field 'image'.*out of order"):
        read_pope(swapped, fixtures / "pope/coco")
