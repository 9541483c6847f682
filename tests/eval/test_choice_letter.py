"""lmms-eval's fallback reading of a choice letter (its `extract_mcq_answer`), and MMBench's lmms-eval
protocol using it where MMBench's rules read nothing. Expected letters worked out from the rule in
`adallava.eval.metrics.choice_letter`'s docstring."""

import pytest

from adallava.eval.metrics import choice_letter, score_mmbench
from adallava.eval.records import MMBenchSample


@pytest.mark.parametrize(
    ("text", "letters", "letter"),
    [
        ("B", None, "B"),  # start (10)
        ("The correct answer is (B).", None, "B"),  # phrase (7) beats parentheses (6)
        ("I think C is wrong, so D", None, "D"),  # end (9) beats the space form of C (2)
        ("A: yes. B: no", None, "A"),  # start (10) beats B's later colon (4)
        ("between A and B", None, "B"),  # end
        ("between A and B really", None, "B"),  # two space forms (2): the later position wins
        ('"B."', None, "B"),  # quote stripped after the period: "B." stays, a start
        ("Apple", None, "A"),  # no form matches: the fallback finds the capital A
        ("none of them", None, ""),
        ("E", ("A", "B", "C", "D"), ""),  # not a valid letter here
        ("   ", None, ""),
    ],
)
def test_choice_letter(text, letters, letter):
    # Bugs caught: a form's priority or the tie rule changed, stripping in another order, the
    # fallback applied when another form matched.
    assert choice_letter(text, letters) == letter


def _sample(answer: str) -> MMBenchSample:
    return MMBenchSample(
        question_id=0, image=None, prompt="", answers=(answer,), question="What color?", hint="",
        options=("red", "green", "blue", "yellow"), category="c", l2_category="l2",
    )  # fmt: skip


def test_lmms_eval_protocol_reads_what_the_rules_cannot():
    # "Apple" names no option by MMBench's rules (no letter token, no option text), so the llava
    # protocol counts it unmatched and wrong; lmms-eval's static scoring falls back to
    # extract_mcq_answer, whose fallback form reads the capital A: right for answer A.
    # Bug caught: the lmms-eval protocol scoring MMBench without lmms-eval's offline fallback.
    llava = score_mmbench([_sample("A")], {0: "Apple"}, "llava")
    lmms = score_mmbench([_sample("A")], {0: "Apple"}, "lmms-eval")
    assert (llava.score, llava.unmatched) == (0.0, 1)
    assert (lmms.score, lmms.unmatched) == (100.0, 0)
    # a rule-read letter is never second-guessed by the fallback
    assert score_mmbench([_sample("A")], {0: "B"}, "lmms-eval").score == 0.0
