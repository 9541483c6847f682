"""The EvalAI processor (LLaVA's m4c_evaluator.py) and vqaEval.py's steps, on hand-checked cases."""

import pytest

from adallava.eval.answer_processing import evalai_normalize, vqa_digit_article, vqa_punctuation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("a dog", "dog"),  # articles dropped
        ("The  Cat?", "cat"),  # "?" deleted, whitespace collapsed
        ("It's red", "it 's red"),  # "'s" split off before anything else
        ("yes, there is", "yes there is"),  # commas deleted
        ("No.", "no"),  # period not followed by a digit removed
        ("3.5", "3.5"),  # decimal point kept
        ("1,000", "1000"),
        ("hello-world", "hello world"),  # punctuation not touching a space becomes a space
        ("hello - world", "hello world"),  # touching a space it is deleted
        ("twenty-two", "twenty 2"),
        ("dont", "don't"),  # contractions restored
        ("somebody'd", "somebodyd"),  # the sources' reversed entry
        ("Yes!\n", "yes"),
        ("", ""),
    ],
)
def test_evalai_normalize(raw: str, expected: str) -> None:
    assert evalai_normalize(raw) == expected


def test_period_removal_stops_after_32() -> None:
    # vqaEval.py / m4c pass re.UNICODE (32) as sub's count: only the first 32 periods go.
    assert vqa_punctuation("." * 40) == "." * 8
    assert evalai_normalize("a." * 40).count(".") == 8


def test_vqa_punctuation_keeps_apostrophes_and_uses_digit_comma_rule() -> None:
    assert vqa_punctuation("it's") == "it's"
    assert vqa_punctuation("1,000 (approx)") == "1000 approx"  # a digit-comma-digit run deletes all marks
    assert vqa_punctuation("red/blue") == "red blue"


def test_digit_article_lowercases_and_joins() -> None:
    assert vqa_digit_article("The  Three   Dogs") == "3 dogs"
    assert vqa_digit_article("an apple") == "apple"
