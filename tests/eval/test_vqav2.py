"""VQAv2: EvalAI processing + official vqaEval.py (llava) vs lmms-eval, hand-computed."""

import json
from pathlib import Path

import pytest

from adallava.eval.metrics import leave_one_out_accuracy, official_vqa_accuracy, score_vqav2, vqav2_accuracy
from adallava.eval.readers import read_vqa_results, read_vqav2


def test_leave_one_out_accuracy() -> None:
    # 1 of 10 humans: the 9 subsets without them have 1 match -> 1/3 each; the subset without them 0.
    assert leave_one_out_accuracy("red", ["red"] + ["maroon"] * 9) == pytest.approx(0.3)
    # 3 humans: subsets dropping a matcher have 2 -> 2/3 (3 of them), the other 7 have 3 -> 1.
    assert leave_one_out_accuracy("red", ["red"] * 3 + ["x"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert leave_one_out_accuracy("red", ["red"] * 4 + ["x"] * 6) == 1.0


# Golden cases, derived by hand from vqaEval.py at GT-Vision-Lab/VQA master a013f00 (`evaluate`): after
# newline/tab cleaning, if the ten ground truths are not all identical, processPunctuation and then
# processDigitArticle go over every ground truth and over the answer; accuracy = mean over the ten
# humans of min(#other humans equal to the answer / 3, 1). The llava answer is first EvalAI-processed
# (LLaVA's convert_vqav2_for_submission.py); lmms-eval (>= v0.4.1) runs only EvalAI's punctuation and
# digit/article steps, on answer and ground truths alike, unanimous or not.
NUMBERS = ["two", "two", "2", "2.", "two.", "3", "3", "3", "3", "3"]
DOGS = ["the dog", "a dog", "dog", "dog's", "dogs", "dogs", "dogs", "dogs", "cat", "cat"]
YES_COMMA = ["yes,", "yes", "yes"] + ["no"] * 7


# Catches: number words and periods in ground truths left unprocessed (the pre-2021 rule we used).
def test_non_unanimous_number_words_and_periods() -> None:
    # "Two." -> EvalAI: lowercase "two.", the final period goes (not before a digit), "two" -> "2".
    # Ground truths: "two" -> "2", "2." -> "2", "two." -> "2": five humans say "2", so every leave-one-out
    # subset keeps >= 4 matches -> 10 x 1 / 10 = 1.0. (Punctuation only on ground truths: "2", "2." match,
    # 2 matches -> (2 x 1/3 + 8 x 2/3) / 10 = 0.6; no processing: only "2", (9 x 1/3 + 0) / 10 = 0.3.)
    assert vqav2_accuracy("Two.", NUMBERS) == 1.0
    # lmms-eval: "Two." -> punctuation "Two" -> digit/article "2"; same ground truths -> 1.0.
    assert vqav2_accuracy("Two.", NUMBERS, "lmms-eval") == 1.0
    # "3": five humans -> 1.0 under both.
    assert vqav2_accuracy("3", NUMBERS) == vqav2_accuracy("3", NUMBERS, "lmms-eval") == 1.0


# Catches: articles / possessives in ground truths left as written, and the two protocols confused.
def test_non_unanimous_articles_and_possessives() -> None:
    # Ground truths after processing: "the dog", "a dog", "dog" -> "dog" (3), "dog's" stays (the
    # apostrophe is no punctuation mark), "dogs" x4, "cat" x2.
    # "The dog" -> "dog" (both protocols): 3 matches; the 3 subsets without a matcher keep 2 -> 2/3,
    # the 7 others keep 3 -> 1: (3 x 2/3 + 7) / 10 = 0.9.
    assert vqav2_accuracy("The dog", DOGS) == pytest.approx(0.9)
    assert vqav2_accuracy("The dog", DOGS, "lmms-eval") == pytest.approx(0.9)
    # "dog's": EvalAI's first step splits it to "dog 's", which no ground truth equals -> 0 (llava).
    # lmms-eval skips that step: "dog's" matches one human -> (9 x 1/3 + 0) / 10 = 0.3.
    assert vqav2_accuracy("dog's", DOGS) == 0.0
    assert vqav2_accuracy("dog's", DOGS, "lmms-eval") == pytest.approx(0.3)


# Catches: dropping the ground-truth processing step (the mutation issue 14 found surviving).
def test_ground_truth_punctuation_is_processed() -> None:
    # "yes," -> processPunctuation: "," touches no space and there is no digit-comma-digit run, so it
    # becomes a space: "yes " -> processDigitArticle -> "yes". Three humans say "yes": 0.9 (not the
    # 0.6 of two matches, which comparing "yes," raw would give).
    assert vqav2_accuracy("Yes", YES_COMMA) == pytest.approx(0.9)
    assert vqav2_accuracy("Yes", YES_COMMA, "lmms-eval") == pytest.approx(0.9)
    # The official step alone, on an answer as uploaded: "2" against NUMBERS -> 1.0 (see above).
    assert official_vqa_accuracy("2", NUMBERS) == 1.0


# Catches: processing unanimous ground truths (vqaEval compares them raw) or testing unanimity before
# the newline/tab cleaning.
def test_unanimous_ground_truths_are_compared_raw() -> None:
    assert vqav2_accuracy("Yes.", ["yes"] * 10) == 1.0  # EvalAI makes the answer "yes"
    assert vqav2_accuracy("yes, there is", ["yes"] * 10) == 0.0
    # Ten "2.": raw, while EvalAI already dropped the answer's period -> "2" != "2." -> 0.
    # lmms-eval processes them anyway: "2." -> "2" -> 1.0.
    assert vqav2_accuracy("2.", ["2."] * 10) == 0.0
    assert vqav2_accuracy("2.", ["2."] * 10, "lmms-eval") == 1.0
    # Ten "Yes": raw "Yes" != "yes" (llava); lmms-eval lowercases both -> 1.0.
    assert vqav2_accuracy("yes", ["Yes"] * 10) == 0.0
    assert vqav2_accuracy("yes", ["Yes"] * 10, "lmms-eval") == 1.0
    # "a dog" x9 + "a dog\n": unanimous once cleaned, so compared raw with EvalAI's "dog" -> 0.
    assert vqav2_accuracy("a dog", ["a dog"] * 9 + ["a dog\n"]) == 0.0
    # One dissenter switches processing on: "a dog" x9 -> "dog" -> 9 matches -> 1.0.
    assert vqav2_accuracy("a dog", ["a dog"] * 9 + ["cat"]) == 1.0


# Catches: EvalAI's "'s" split missing from the llava pipeline, or added to lmms-eval's.
def test_apostrophe_s() -> None:
    # llava: "it's" -> "it 's"; vqaEval leaves the ground truths' "it's" whole -> 0.
    assert vqav2_accuracy("it's", ["it's"] * 5 + ["its"] * 5) == 0.0
    # lmms-eval: "it's" stays "it's": five matches -> 1.0.
    assert vqav2_accuracy("it's", ["it's"] * 5 + ["its"] * 5, "lmms-eval") == 1.0


# Catches: unrounded llava scores or rounding of per-question values (vqaEval rounds only the means).
def test_score_rounds_to_two_decimals_per_answer_type(fixtures: Path) -> None:
    folder = fixtures / "vqav2"
    samples = read_vqav2(folder / "questions.json", folder / "annotations.json")
    results = read_vqa_results(folder / "results.json")
    score = score_vqav2(samples, results)
    # "2" vs "two" x3, "2" x2, "3" x5 -> "2" x5 -> 1.0; "Yes." vs ten "yes" -> 1.0; "RED" vs one "red"
    # (nine "maroon") -> 0.3. 100 x 2.3 / 3 = 76.666... -> 76.67.
    assert score.score == 76.67
    assert score.per_answer_type == {"number": 100.0, "other": 30.0, "yes/no": 100.0}
    assert score.per_question_type["how many"] == 100.0
    lmms = score_vqav2(samples, results, "lmms-eval")
    assert lmms.score == pytest.approx(230 / 3)  # same three values, not rounded


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
