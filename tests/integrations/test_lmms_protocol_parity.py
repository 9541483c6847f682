"""`--protocol lmms-eval` against lmms-eval's own task code (the installed lmms-eval 0.7), answer by
answer: seeded random answers built from fragments that sit on the rules' edges (yes/no variants,
letters in every form lmms-eval reads, punctuation, numbers and articles) are scored by lmms-eval's
process_results / aggregation and by adallava's metrics, which must agree on every one."""

import random

import pytest

from tests.integrations.lmms_required import require_lmms_eval

require_lmms_eval()

from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer  # noqa: E402
from lmms_eval.tasks.mmbench.en_utils import mmbench_evaluator  # noqa: E402
from lmms_eval.tasks.mme.utils import parse_pred_ans  # noqa: E402
from lmms_eval.tasks.pope.utils import pope_aggregate_f1_score, pope_process_results  # noqa: E402
from lmms_eval.tasks.scienceqa.utils import sqa_process_results  # noqa: E402
from lmms_eval.tasks.textvqa.utils import textvqa_process_results  # noqa: E402
from lmms_eval.tasks.vqav2.utils import vqav2_process_results  # noqa: E402

from adallava.eval.metrics import (  # noqa: E402
    choice_letter,
    mme_answer,
    score_mmbench,
    score_pope,
    textvqa_accuracy,
    vqav2_accuracy,
)
from adallava.eval.metrics.scienceqa import scienceqa_correct  # noqa: E402
from adallava.eval.records import MMBenchSample, POPESample, ScienceQASample  # noqa: E402

FRAGMENTS = [
    "yes", "no", "Yes.", "NO", "No,", "y", "n", "not", "nope", "A", "B", "C", "D", "E", "(B)", "C.", "D)",
    ":A", "B:", "the answer is", "I choose", "Answer:", "red", "Red.", "blue", "a dog", "dog's", "two", "2",
    "3,000", "the", ".", ",", "?", "!", '"', "\n", "  ", "Apple", "BC", "b",
]  # fmt: skip
OPTIONS = ("red", "blue", "a dog", "two")


def answers(seed: int, count: int = 400) -> list[str]:
    """`count` answers: every 7th a lone fragment, the others 0-4 fragments, with or without spaces."""
    rng = random.Random(seed)
    texts = []
    for k in range(count):
        if k % 7 == 0:
            texts.append(rng.choice(FRAGMENTS))
            continue
        pieces = (rng.choice([" ", ""]) + rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 4)))
        texts.append("".join(pieces).strip(" "))
    return texts


def test_choice_letter_is_extract_mcq_answer():
    for text in answers(0):
        for letters in (None, ["A", "B", "C", "D"], ["A", "B"]):
            assert choice_letter(text, letters) == extract_mcq_answer(text, choices=letters), text


def test_mme_answer_is_parse_pred_ans():
    for text in answers(1):
        assert mme_answer(text, "lmms-eval") == parse_pred_ans(text), text


def test_pope_pooled_f1():
    texts = answers(2, 60)
    truths = ["yes" if k % 2 else "no" for k in range(len(texts))]
    samples = [POPESample(k, None, "", (t,), "q", "random") for k, t in enumerate(truths)]
    theirs = [pope_process_results({"question_id": k, "answer": t}, [p])["pope_f1_score"]
              for k, (t, p) in enumerate(zip(truths, texts, strict=True))]  # fmt: skip
    ours = score_pope(samples, dict(enumerate(texts)), "lmms-eval")
    assert ours.overall.f1 / 100 == pytest.approx(pope_aggregate_f1_score(theirs), abs=1e-12)


def test_scienceqa_correct():
    sample = ScienceQASample("1", None, "", ("B",), "q", "", ("x", "y", "z"), 1, "s", "g")
    for text in answers(3):
        theirs = sqa_process_results({"choices": ["x", "y", "z"], "answer": 1}, [text])["exact_match"]
        assert scienceqa_correct(text, sample, "lmms-eval") == bool(theirs), text


@pytest.mark.parametrize(
    "truths",
    [
        ["red"] * 10,
        ["two"] * 6 + ["2"] * 4,
        ["a dog"] * 5 + ["dog's"] * 3 + ["Red."] * 2,
        ["yes"] * 9 + ["no"],
    ],
)
def test_vqav2_and_textvqa_accuracy(truths):
    for text in answers(4, 150):
        doc = {
            "question_id": 1,
            "answers": [
                {"answer": t, "answer_confidence": "yes", "answer_id": k + 1} for k, t in enumerate(truths)
            ],
        }
        assert vqav2_accuracy(text, truths, "lmms-eval") == pytest.approx(
            vqav2_process_results(doc, [text])["exact_match"], abs=1e-12
        ), text
        theirs = textvqa_process_results({"question_id": 1, "answers": list(truths)}, [text])["exact_match"]
        assert textvqa_accuracy(text, truths, "lmms-eval") == pytest.approx(theirs, abs=1e-12), text


def test_mmbench_static_scoring():
    texts = answers(5, 120)
    samples, docs = [], []
    for k, text in enumerate(texts):
        answer = "ABCD"[k % 4]
        samples.append(MMBenchSample(k, None, "", (answer,), "q", "", OPTIONS, "cat", "l2"))
        docs.append({"index": k, "question": "q", "answer": answer, "prediction": text.strip(), "hint": None,
                     "source": "s", "split": "dev", "category": "cat", "L2-category": "l2",
                     **dict(zip("ABCD", OPTIONS, strict=True))})  # fmt: skip
    overall, _, _ = mmbench_evaluator.eval_result(docs, eval_method="static")
    ours = score_mmbench(samples, {k: text for k, text in enumerate(texts)}, "lmms-eval")
    assert ours.score / 100 == pytest.approx(overall, abs=1e-12)
    for k, text in enumerate(texts):  # and question by question
        one, _, _ = mmbench_evaluator.eval_result([docs[k]], eval_method="static")
        assert score_mmbench([samples[k]], {k: text}, "lmms-eval").score / 100 == one, text
