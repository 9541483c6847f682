"""VQA-style answer normalisation as pure functions.

Two pipelines are reproduced, because the numbers behind LLaVA-1.5 use both in a row, plus the
variant lmms-eval uses:

* `evalai_normalize`: the EvalAI answer processor that LLaVA applies to every VQAv2 / TextVQA
  prediction (`llava/eval/m4c_evaluator.py` EvalAIAnswerProcessor, used by
  `scripts/convert_vqav2_for_submission.py` and `llava/eval/eval_textvqa.py`).
* `vqa_punctuation` + `vqa_digit_article` (together `vqa_normalize`): what the official VQA evaluation
  does to the result answer and to every ground truth of a question whose ten ground truths are not
  all identical (GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`, processPunctuation
  and processDigitArticle).
* `evalai_steps`: the EvalAI processor's punctuation and digit/article steps alone, which lmms-eval's
  vqav2 task (`lmms_eval/tasks/vqav2/utils.py`) applies to predictions and ground truths.

EvalAI's and vqaEval's punctuation steps differ only in the pattern that detects a digit-comma-digit
run; the tables are shared (`answer_tables.py`).
"""

from __future__ import annotations

import re

from adallava.eval.answer_tables import ARTICLES, CONTRACTIONS, NUMBER_WORDS, PUNCTUATION

# A period not followed by a digit ("3.5" keeps its point). The sources write a leading "(?!<=\d)",
# a look-ahead that can never fail in front of a ".", so it is dropped here.
_PERIOD = re.compile(r"\.(?!\d)")
# The sources pass re.UNICODE (== 32) in the *count* position of `sub`, so at most 32 periods are
# removed from one answer. Kept for identical results on pathological outputs.
_PERIOD_COUNT = int(re.UNICODE)
# "1,000": when present anywhere, punctuation is deleted instead of turned into spaces.
_EVALAI_DIGIT_COMMA = re.compile(r"(?<=\d)(\,)+(?=\d)")
_VQA_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")


def _punctuation(text: str, digit_comma: re.Pattern[str]) -> str:
    # Each mark is deleted when it touches a space (or the text has a digit-comma-digit run), else it
    # becomes a space. The test looks at the *input* text for every mark, as in the sources.
    delete_all = digit_comma.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def evalai_punctuation(text: str) -> str:
    """EvalAIAnswerProcessor.process_punctuation."""
    return _punctuation(text, _EVALAI_DIGIT_COMMA)


def vqa_punctuation(text: str) -> str:
    """vqaEval.py processPunctuation."""
    return _punctuation(text, _VQA_DIGIT_COMMA)


def vqa_digit_article(text: str) -> str:
    """Lowercase, number words to digits, drop a/an/the, restore contractions; words joined by one space.

    Identical in vqaEval.py (processDigitArticle) and the EvalAI processor (process_digit_article).
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


evalai_digit_article = vqa_digit_article


def vqa_normalize(text: str) -> str:
    """What vqaEval.py does to every answer of a question whose ground truths are not unanimous:
    processPunctuation, then processDigitArticle ("Two." -> "2", "the dog" -> "dog", "yes," -> "yes")."""
    return vqa_digit_article(vqa_punctuation(text))


def evalai_steps(text: str) -> str:
    """The EvalAI processor's punctuation and digit/article steps without its first step (no deletion of
    "," and "?", no "'s" split): what lmms-eval's vqav2 task applies to answers and ground truths."""
    return evalai_digit_article(evalai_punctuation(text))


def evalai_normalize(text: str) -> str:
    """The full EvalAI answer processor: "Two dogs." -> "2 dogs", "It's red" -> "it 's red".

    Steps: lowercase; delete "," and "?"; split "'s" off its word; whitespace to spaces and strip;
    punctuation; digits, articles and contractions.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_digit_article(evalai_punctuation(text))


def clean_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip: the first step the VQA evaluation applies to results."""
    return text.replace("\n", " ").replace("\t", " ").strip()
