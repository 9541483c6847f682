"""TextVQA: LLaVA's m4c TextVQAAccuracyEvaluator and its answer matching (eval_textvqa.py)."""

from pathlib import Path

import pytest

from adallava.eval.metrics import score_textvqa, textvqa_accuracy
from adallava.eval.readers import read_llava_answers, read_textvqa, textvqa_predictions
from adallava.eval.readers.textvqa import question_from_llava_prompt


def test_ground_truths_are_processed_too() -> None:
    # "Nike" x3 and "nike" x2 all become "nike": 5 matches -> 1.
    assert textvqa_accuracy("NIKE.", ["Nike"] * 3 + ["nike"] * 2 + ["adidas"] * 5) == 1.0
    # "twenty three" -> "twenty 3" on both sides; one match -> 0.3.
    assert textvqa_accuracy("Twenty-three", ["23"] * 2 + ["twenty three"] + ["32"] * 7) == pytest.approx(0.3)


def test_fixture_score(fixtures: Path) -> None:
    samples = read_textvqa(fixtures / "textvqa/TextVQA_val.json")
    answers = read_llava_answers(fixtures / "textvqa/answers.jsonl")
    predictions = textvqa_predictions(samples, answers)
    assert predictions == {100: "NIKE.", 101: "Twenty-three"}
    assert score_textvqa(samples, predictions).score == pytest.approx(65.0)
    assert score_textvqa(samples, predictions, "lmms-eval").score == pytest.approx(65.0)


def test_llava_protocol_requires_ten_answers(fixtures: Path) -> None:
    samples = read_textvqa(fixtures / "textvqa/TextVQA_val.json")
    short = [s.__class__(**{**s.__dict__, "answers": s.answers[:3]}) for s in samples]
    with pytest.raises(ValueError, match="requires 10"):
        score_textvqa(short, {100: "nike", 101: "23"})
    # Three answers: all-three agreement gives 2/3 (each leave-one-out keeps 2 matches); 2 of 3 gives
    # (1/3 + 1/3 + 2/3) / 3 = 4/9. Mean: (2/3 + 4/9) / 2 = 5/9.
    assert score_textvqa(short, {100: "nike", 101: "23"}, "lmms-eval").score == pytest.approx(500 / 9)


@pytest.mark.parametrize(
    ("prompt", "question"),
    [
        ("What is it?\nReference OCR token: A, B\nAnswer the question briefly.", "what is it?"),
        ("Reference OCR token: A\nWhat is it?\nAnswer briefly.", "what is it?"),
        ("What is it?\nAnswer the question using a single word or phrase.", "what is it?"),
        ("OCR tokens: a b Question: What is it? Short answer:", "what is it?"),
    ],
)
def test_question_from_llava_prompt(prompt: str, question: str) -> None:
    assert question_from_llava_prompt(prompt, "here") == question


def test_unmatched_answer_names_line(tmp_path: Path, fixtures: Path) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": "zzz", "prompt": "what?\\nAnswer.", "text": "x"}\n')
    samples = read_textvqa(fixtures / "textvqa/TextVQA_val.json")
    with pytest.raises(ValueError, match=r"answers\.jsonl, line 1: no annotation has image_id 'zzz'"):
        textvqa_predictions(samples, read_llava_answers(answers))
