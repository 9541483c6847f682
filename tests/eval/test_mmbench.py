"""MMBench: rule-based option matching and circular evaluation (every rotation must be right)."""

from pathlib import Path

import pytest

from adallava.eval import scoring
from adallava.eval.metrics import mmbench_option, score_mmbench
from adallava.eval.readers import answers_by_round, mmbench_rotations, read_llava_answers, read_mmbench

OPTIONS = ("cat", "dog", "bird", "fish")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("B. dog", "B"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("I choose C:", "C"),
        ("dog", "B"),  # the only option text contained
        ("a dog or a cat", None),  # two option texts
        ("A", "A"),
        ("A dog is shown here", "B"),  # "A" may be an article in a long answer: fall back to text
        ("E", "E"),  # named, but not an option: wrong, not unmatched
        ("B or C", None),
        ("Failed to obtain answer via API", None),
    ],
)
def test_mmbench_option(text: str, letter: str | None) -> None:
    assert mmbench_option(text, OPTIONS) == letter


def test_rotations_move_the_answer(fixtures: Path) -> None:
    first = read_mmbench(fixtures / "mmbench/mmbench_dev.tsv")[0]
    rounds = mmbench_rotations(first)
    assert [r.options[0] for r in rounds] == ["cat", "dog", "bird", "fish"]
    assert [r.answers[0] for r in rounds] == ["B", "A", "D", "C"]  # "dog" wherever it is shown
    assert rounds[1].prompt.splitlines()[1] == "A. dog"


def test_reader(fixtures: Path) -> None:
    samples = read_mmbench(fixtures / "mmbench/mmbench_dev.tsv")
    assert [len(s.options) for s in samples] == [4, 2, 3]
    assert samples[2].options == ("yes", "no", "maybe")
    assert samples[1].prompt.splitlines()[0] == "Look at the sign."  # hint first
    assert samples[0].hint == ""  # "nan" is empty, as pandas reads it
    assert samples[0].image.startswith(b"\x89PNG")
    assert samples[2].image == samples[0].image  # its image cell "0" refers to row 0


def test_circular_fixture(fixtures: Path) -> None:
    samples = read_mmbench(fixtures / "mmbench/mmbench_dev.tsv")
    predictions = answers_by_round(read_llava_answers(fixtures / "mmbench/answers.jsonl"))
    score = score_mmbench(samples, predictions)
    # Row 0: all four rotations right. Row 1: round 1 says "A" (now "green") -> wrong. Row 2: round 2
    # "A cat is not an option, so A" -> "A" is a quantifier there, and "no" is inside "not" -> C, wrong.
    assert score.score == pytest.approx(100 / 3)
    assert score.single_pass == 100.0
    assert score.per_category == {"attribute": 100.0, "color": 0.0, "logic": 0.0}
    assert score.per_l2_category == {"perception": 50.0, "reasoning": 0.0}
    assert (score.n, score.passes, score.unmatched) == (3, 9, 0)
    lmms = score_mmbench(samples, predictions, "lmms-eval")  # one pass per row
    assert (lmms.score, lmms.passes) == (100.0, 3)


def test_missing_rotation_is_an_error(fixtures: Path) -> None:
    samples = read_mmbench(fixtures / "mmbench/mmbench_dev.tsv")
    predictions = answers_by_round(read_llava_answers(fixtures / "mmbench/answers.jsonl"))
    del predictions[(0, 3)]
    with pytest.raises(ValueError, match="index 0 round 3"):
        score_mmbench(samples, predictions)


def test_circular_copies_in_the_tsv(tmp_path: Path, fixtures: Path) -> None:
    lines = (fixtures / "mmbench/mmbench_dev.tsv").read_text().splitlines()
    # A VLMEvalKit-style copy of row 1 with its options swapped (answer B) and an image reference.
    copy = lines[2].split("\t")
    copy[0], copy[3], copy[4], copy[7], copy[-1] = "1000001", "green", "red", "B", "1"
    tsv = tmp_path / "circular.tsv"
    tsv.write_text("\n".join([*lines, "\t".join(copy)]) + "\n")
    samples = read_mmbench(tsv)
    predictions = {0: "B", 1: "A", 2: "C", 1000001: "A"}  # the copy is answered wrongly
    for protocol in ("llava", "lmms-eval"):
        score = score_mmbench(samples, predictions, protocol)
        assert score.score == pytest.approx(200 / 3) and score.n == 3


def test_bad_answer_names_line_and_field(tmp_path: Path, fixtures: Path) -> None:
    lines = (fixtures / "mmbench/mmbench_dev.tsv").read_text().splitlines()
    row = lines[2].split("\t")
    row[7] = "C"  # only A and B exist
    lines[2] = "\t".join(row)
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.tsv, line 3: field 'answer' must be one of A, B, got 'C'"):
        read_mmbench(bad)


# Catches: the reader demanding the image column when images are asked for and the TSV lacks it.
def test_missing_image_column_when_images_are_required(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tquestion\tA\tB\n0\tq\ta\tb\n")
    with pytest.raises(ValueError, match=r"bad\.tsv, line 1: missing column\(s\) image"):
        read_mmbench(bad, images=True)
    assert read_mmbench(bad)[0].image is None  # by default the image column is read only when present


# Catches: scoring demanding the (large, base64) image column or the comment column, which MMBench's
# evaluator never reads (lmms_eval/tasks/mmbench/mmbench_evals.py eval_result uses index, question,
# A-D, answer, prediction, category, l2-category).
def test_scores_without_image_and_comment_columns(fixtures: Path) -> None:
    tsv = fixtures / "mmbench/mmbench_dev_noimage.tsv"
    assert "image" not in tsv.read_text() and "comment" not in tsv.read_text()
    answers = fixtures / "mmbench/answers.jsonl"
    for protocol, expected in (("llava", 100 / 3), ("lmms-eval", 100.0)):  # as test_circular_fixture
        score = scoring.score_mmbench_files(tsv, answers, protocol)
        assert score.score == pytest.approx(expected) and score.n == 3
    samples = read_mmbench(fixtures / "mmbench/mmbench_dev.tsv", images=False)
    assert all(sample.image is None for sample in samples)  # images=False never decodes


# Catches: a TSV lacking what scoring needs read without a clear error naming the missing columns.
def test_missing_scoring_columns_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tA\tanswer\n0\ta\tA\n")
    with pytest.raises(ValueError, match=r"bad\.tsv, line 1: missing column\(s\) question, B \(header"):
        read_mmbench(bad)
    no_answer = tmp_path / "no_answer.tsv"
    no_answer.write_text("index\tquestion\tA\tB\n0\tq\ta\tb\n")
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text('{"question_id": 0, "text": "A"}\n')
    with pytest.raises(ValueError, match=r"row 0 has no answer: .*no 'answer' column"):
        scoring.score_mmbench_files(no_answer, predictions)
