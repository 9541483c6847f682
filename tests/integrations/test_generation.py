"""lmms-eval's generation requests as adallava rows: settings, budgets, stop strings, batches."""

import pytest

from adallava.core.deadline import Deadline
from adallava.integrations.lmms.generation import (
    RowSettings,
    batches,
    cut_at_stop,
    resolve_budget,
    row_settings,
)


def test_pope_and_textvqa_generation_kwargs():
    # lmms-eval's pope.yaml and textvqa (until only; no max_new_tokens: the default applies)
    pope = {"max_new_tokens": 128, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
    assert row_settings(pope, 16) == RowSettings(max_new_tokens=128)
    assert row_settings({"until": "ASSISTANT:"}, 16) == RowSettings(16, ("ASSISTANT:",))
    assert row_settings({"until": ["A", ""], "budget": "30ms"}, 16) == RowSettings(16, ("A",), Deadline(30.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"do_sample": True}, "greedily: generation_kwargs do_sample"),
        ({"temperature": 0.7}, "temperature=0.7 must be 0"),
        ({"num_beams": 4}, "num_beams=4 must be 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1; got 0"),
        ({"until": [3]}, "until must be a string or a list of strings"),
        ({"stop_sequences": ["x"]}, "cannot honour generation_kwargs stop_sequences"),
        ({"budget": 2.0}, "adallava budget 2.0"),
    ],
)
def test_requests_adallava_cannot_answer_are_refused(kwargs, message):
    # Bug caught: a sampling or beam-search task silently answered greedily.
    with pytest.raises(ValueError, match=message):
        row_settings(kwargs, 16)


def test_resolve_budget_order():
    # the row's own budget, then the model's, then 1.0 (trained) or the full model (untrained / none)
    assert resolve_budget(0.5, 0.7, False, True) == 0.5
    assert resolve_budget(None, 0.7, False, True) == 0.7
    assert resolve_budget(None, None, False, True) == 1.0
    assert resolve_budget(None, None, False, False) is None
    assert resolve_budget(None, None, True, True) is None
    assert resolve_budget(0.5, None, True, True) == 0.5  # a task's own budget still applies


@pytest.mark.parametrize(
    ("text", "until", "cut"),
    [("yes ASSISTANT: no", ("ASSISTANT:",), "yes "), ("a.b|c", ("|", "."), "a"), ("yes", ("no",), "yes"),
     ("yes", (), "yes")],
)  # fmt: skip
def test_cut_at_the_first_stop_string(text, until, cut):
    assert cut_at_stop(text, until) == cut


def test_batches_keep_budgeted_rows_apart_and_sort_by_length():
    # rows 0, 2, 3 budgeted; 1, 4 not. Longest first within each group, ties by index.
    lengths, budgeted = [5, 9, 7, 5, 3], [True, False, True, True, False]
    assert batches(lengths, budgeted, 2) == [[2, 0], [3], [1, 4]]
    assert sorted(i for batch in batches(lengths, budgeted, 1) for i in batch) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        batches(lengths, budgeted, 0)
