"""VQAv2: EvalAI processing + official vqaEval.py (llava) vs lmms-eval, hand-computed."""

import json
from pathlib import Path

import pytest

from adallava.eval.metrics import leave_one_out_accuracy, score_vqav2, vqav2_accuracy
from adallava.eval.readers import read_vqa_results, read_vqav2


def test_leave_one_out_accuracy() -> None:
    # 1 of 10 humans: the 9 subsets without them have 1 match -> 1/3 each; the subset without them 0.
    assert leave_one_out_accuracy("red", ["red"] + ["maroon"] * 9) == pytest.approx(0.3)
    # 3 humans: subsets dropping a matcher have 2 -> 2/3 (3 of them), the other 7 have 3 -> 1.
    assert leave_one_out_accuracy("red", ["red"] * 3 + ["x"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert leave_one_out_accuracy("red", ["red"] * 4 + ["x"] * 6) == 1.0


def test_number_words_in_ground_truth_are_not_normalised_by_vqaeval() -> None:
    truths = ["two"] * 3 + ["2"] * 2 + ["3"] * 5
    # llava: vqaEval only punctuation-processes non-unanimous ground truths, so "two" stays "two";
    # 2 matches -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert vqav2_accuracy("2", truths) == pytest.approx(0.6)
    assert vqav2_accuracy("Two", truths) == pytest.approx(0.6)
    # lmms-eval runs the digit step on the ground truths too: 5 matches -> 1.
    assert vqav2_accuracy("2", truths, "lmms-eval") == 1.0


def test_unanimous_ground_truths_are_compared_raw() -> None:
    assert vqav2_accuracy("Yes.", ["yes"] * 10) == 1.0
    assert vqav2_accuracy("yes, there is", ["yes"] * 10) == 0.0
    # All ten say "a dog": compared raw, while the prediction loses its article -> no match at all.
    assert vqav2_accuracy("a dog", ["a dog"] * 10) == 0.0
    assert vqav2_accuracy("a dog", ["a dog"] * 10, "lmms-eval") == 0.0
    # One dissenter switches processing on: "a dog" is punctuation-processed only (article kept).
    assert vqav2_accuracy("dog", ["dog"] * 9 + ["cat"]) == 1.0


def test_apostrophe_s_never_matches() -> None:
    # EvalAI splits "it's" into "it 's"; vqaEval leaves the ground truth's "it's" alone.
    assert vqav2_accuracy("it's", ["it's"] * 5 + ["its"] * 5) == 0.0


def test_score_rounds_to_two_decimals_per_answer_type(fixtures: Path) -> None:
    folder = fixtures / "vqav2"
    samples = read_vqav2(folder / "questions.json", folder / "annotations.json")
    results = read_vqa_results(folder / "results.json")
    score = score_vqav2(samples, results)
    # 0.6 ("2" vs three "two"s), 1.0 ("Yes."), 0.3 ("RED" vs one "red") -> 63.333 -> 63.33.
    assert score.score == 63.33
    assert score.per_answer_type == {"number": 60.0, "other": 30.0, "yes/no": 100.0}
    assert score.per_question_type["how many"] == 60.0
    lmms = score_vqav2(samples, results, "lmms-eval")
    assert lmms.score == pytest.approx(230 / 3)


def test_reader_builds_coco_image_names(fixtures: Path) -> None:
    samples = read_vqav2(fixtures / "vqav2/questions.json", image_dir="/data/val2014")
    assert [s.question_id for s in samples] == [420, 421, 70]
    assert str(samples[0].image) == "/data/val2014/COCO_val2014_000000000042.jpg"
    assert samples[0].answers == ()
    assert samples[0].prompt.endswith("\nAnswer the question using a single word or phrase.")


def test_missing_prediction_is_an_error(fixtures: Path) -> None:
    samples = read_vqav2(fixtures / "vqav2/questions.json", fixtures / "vqav2/annotations.json")
    with pytest.raises(ValueError, match="VQAv2: 1 question.*70"):
        score_vqav2(samples, {420: "2", 421: "yes"})


def test_annotation_errors_name_element_and_field(tmp_path: Path, fixtures: Path) -> None:
    annotations = json.loads((fixtures / "vqav2/annotations.json").read_text())
    del annotations["annotations"][1]["answer_type"]
    bad = tmp_path / "annotations.json"
    bad.write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match=r"annotations\.json: annotations\[1\]: field 'answer_type'"):
        read_vqav2(fixtures / "vqav2/questions.json", bad)


def test_results_must_be_a_list_of_objects(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps([{"question_id": "1", "answer": "yes"}]))
    with pytest.raises(ValueError, match=r"results\.json: item\[0\]: field 'question_id' must be int"):
        read_vqa_results(bad)
