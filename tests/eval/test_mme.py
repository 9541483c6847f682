"""MME: the official calculation.py (4-character prefix parsing, acc + acc+ per subtask, sums)."""

from pathlib import Path

import pytest

from adallava.eval.metrics import mme_answer, score_mme
from adallava.eval.readers import mme_results, read_mme, read_mme_results, write_mme_results


@pytest.mark.parametrize(
    ("text", "llava", "lmms"),
    [
        ("Yes", "yes", "yes"),
        ("No, there is not.", "no", "no"),
        ("nope", "no", "no"),  # "no" inside the first 4 characters
        ("There is a dog.", "other", "other"),
        ("Yes.", "yes", "yes"),
        (" yes", "yes", "yes"),
        ("y", "other", "yes"),  # lmms-eval reads a lone y / n
        ("N.", "other", "no"),
        ("I think yes", "other", "other"),
        ("know", "no", "no"),  # prefix "know" contains "no"
    ],
)
def test_mme_answer(text: str, llava: str, lmms: str) -> None:
    assert mme_answer(text) == llava
    assert mme_answer(text, "lmms-eval") == lmms


def test_fixture_scores(fixtures: Path) -> None:
    rows = read_mme_results(fixtures / "mme/results")
    score = score_mme(rows)
    # existence: 3/4 right, 1 of 2 images fully right -> 75 + 50; count: 50 + 0; code: "y" is other -> 50 + 0.
    by_subtask = {k: v.score for k, v in score.subtasks.items()}
    assert by_subtask == {"existence": 125.0, "count": 50.0, "code_reasoning": 50.0}
    assert score.perception == 175.0 and score.cognition == 50.0
    assert score.score == pytest.approx(175 / 4)  # 175 of 400 possible
    assert "OCR" in score.missing_subtasks and len(score.missing_subtasks) == 11
    assert score_mme(rows, "lmms-eval").cognition == 200.0


def test_benchmark_layout_roundtrip(tmp_path: Path) -> None:
    # Two layouts: images/ + questions_answers_YN/ (artwork) and side by side (count).
    (tmp_path / "artwork/images").mkdir(parents=True)
    (tmp_path / "artwork/questions_answers_YN").mkdir()
    (tmp_path / "artwork/images/10.jpg").write_bytes(b"jpg")
    (tmp_path / "artwork/questions_answers_YN/10.txt").write_text(
        "Is this by Monet? Please answer yes or no.\tYes\nIs this by Dali? Please answer yes or no.\tNo\n"
    )
    (tmp_path / "count").mkdir()
    (tmp_path / "count/1.png").write_bytes(b"png")
    (tmp_path / "count/1.txt").write_text("Two cats? Please answer yes or no.\tNo\nOne cat?\tYes\n")
    samples = read_mme(tmp_path)
    ids = [s.question_id for s in samples]
    assert ids == ["artwork/10.jpg#1", "artwork/10.jpg#2", "count/1.png#1", "count/1.png#2"]
    predictions = dict(zip([s.question_id for s in samples], ["Yes", "Yes\tsure", "No", "yes"], strict=True))
    write_mme_results(mme_results(samples, predictions), tmp_path / "out")
    rows = read_mme_results(tmp_path / "out")
    assert rows[1].prediction == "Yes sure"
    score = score_mme(rows)
    assert score.subtasks["artwork"].score == 50.0 and score.subtasks["count"].score == 200.0


def test_results_line_errors(tmp_path: Path) -> None:
    (tmp_path / "count.txt").write_text("a.jpg\tQ? Please answer yes or no.\tYes\tyes\na.jpg\tQ2?\tNo\n")
    with pytest.raises(ValueError, match=r"count\.txt, line 2: expected 'image<TAB>question<TAB>"):
        read_mme_results(tmp_path)


def test_results_must_pair_by_image(tmp_path: Path) -> None:
    (tmp_path / "count.txt").write_text("a.jpg\tQ\tYes\tyes\nb.jpg\tQ\tNo\tno\n")
    with pytest.raises(ValueError, match=r"count\.txt, line 2: lines pair up per image"):
        read_mme_results(tmp_path)


def test_unknown_subtask_file(tmp_path: Path) -> None:
    (tmp_path / "counting.txt").write_text("a.jpg\tQ\tYes\tyes\na.jpg\tQ\tNo\tno\n")
    with pytest.raises(ValueError, match="'counting' is not an MME subtask"):
        read_mme_results(tmp_path)


def test_pairs_are_consecutive_lines_under_llava_and_images_under_lmms_eval():
    # Bug caught: the protocols' pairing swapped. LLaVA's calculation.py pairs consecutive lines of a
    # results file; lmms-eval groups by image. Lines img1, img2, img1, img2 with correct answers on
    # the first two: acc+ = 50 (pair 1 right, pair 2 wrong) by lines, 0 by image (each image one wrong).
    from adallava.eval.metrics.mme import mme_subtask_score
    from adallava.eval.readers.mme import MMEResult

    def row(image: str, prediction: str) -> MMEResult:
        return MMEResult("color", image, "q", "Yes", prediction, "")

    rows = [row("1.png", "Yes"), row("2.png", "Yes"), row("1.png", "No"), row("2.png", "No")]
    assert mme_subtask_score(rows, "llava").acc_plus == 50.0
    assert mme_subtask_score(rows, "lmms-eval").acc_plus == 0.0
    assert mme_subtask_score(rows, "llava").acc == mme_subtask_score(rows, "lmms-eval").acc == 50.0
