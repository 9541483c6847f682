"""The EvalAI processor (LLaVA's m4c_evaluator.py) and vqaEval.py's steps, on hand-checked cases."""

import pytest

from adallava.eval.answer_processing import (
    evalai_normalize,
    evalai_punctuation,
    evalai_steps,
    vqa_digit_article,
    vqa_normalize,
    vqa_punctuation,
)


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


# Catches: vqaEval's ground-truth processing reduced to one of its two steps. Hand-derived from
# processPunctuation then processDigitArticle (vqaEval.py, GT-Vision-Lab/VQA master a013f00).
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two.", "2"),  # period dropped (not before a digit), then the number word
        ("2.", "2"),
        ("yes,", "yes"),  # "," touches no space: becomes a space, which the join drops
        ("the dog", "dog"),
        ("dog's", "dog's"),  # no "'s" split in vqaEval
        ("1,000 dogs", "1000 dogs"),
    ],
)
def test_vqa_normalize(raw: str, expected: str) -> None:
    assert vqa_normalize(raw) == expected


# Catches: lmms-eval's steps given EvalAI's first step (deleting "," and splitting "'s"), which
# lmms-eval's vqav2 task no longer applies.
def test_evalai_steps_skip_the_tokenize_step() -> None:
    assert evalai_steps("dog's") == "dog's" and evalai_normalize("dog's") == "dog 's"
    assert evalai_steps("red,blue") == "red blue" and evalai_normalize("red,blue") == "redblue"
    assert evalai_steps("Two.") == "2"


# Catches: the two digit-comma patterns swapped: EvalAI's (?<=\d)(\,)+(?=\d) sees "1,,2", vqaEval's
# (\d)(\,)(\d) does not, so vqaEval turns both commas into spaces.
def test_digit_comma_patterns_differ() -> None:
    assert evalai_punctuation("1,,2") == "12"
    assert vqa_punctuation("1,,2") == "1  2"
