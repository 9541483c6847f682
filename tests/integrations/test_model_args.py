"""`--model_args` of `lmms-eval --model adallava`, as lmms-eval hands them over (values already turned
into bool / int / float / str by its `handle_arg_string`)."""

import pytest

from adallava.core.deadline import Deadline
from adallava.integrations.lmms.model_args import model_args, parse_budget_value


def test_defaults_and_lmms_eval_flags():
    # Bug caught: lmms-eval's own flags (always passed, max_batch_size as None) rejected as unknown.
    args = model_args(batch_size=1, max_batch_size=None, device=None)
    assert (args.pretrained, args.budget, args.full_model, args.batch_size) == (
        "tiny-adallava-l",
        None,
        False,
        1,
    )
    assert args.dtype == "float32" and args.max_new_tokens == 128


@pytest.mark.parametrize(
    ("given", "budget"),
    [
        (0.6, 0.6),
        (1, 1.0),
        ("2M", "2M"),
        ("3.5T", "3.5T"),
        ("30ms", Deadline(ms=30.0)),
        ("0.03s", Deadline(ms=30.0)),
    ],
)
def test_the_three_budget_forms(given, budget):
    # Bug caught: a FLOPs cap or deadline read as a fraction (or refused) on its way through lmms-eval.
    assert model_args(budget=given).budget == budget


def test_budget_none_is_the_full_model():
    args = model_args(budget="none")
    assert args.budget is None and args.full_model


@pytest.mark.parametrize("bad", [0, 1.5, -0.2, "fast", "2X", True, "-5ms"])
def test_bad_budgets_name_the_value_and_forms(bad):
    # Bug caught: an out-of-range or unreadable budget reaching the model (or silently clamped).
    with pytest.raises(ValueError, match="adallava budget") as error:
        parse_budget_value(bad)
    assert repr(bad) in str(error.value)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"budgett": 0.5}, "unknown setting.*budgett.*allowed: .*budget"),
        ({"batch_size": "auto"}, "batch_size must be an integer >= 1.*'auto' batch size is not supported"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1; got 0"),
        ({"switches": "mlp"}, "switches must be one of layer, head; got 'mlp'"),
        ({"token_selection": "merge"}, "token_selection must be one of none, prumerge"),
        ({"dtype": "float64"}, "dtype must be one of float32, bfloat16, float16"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ],
)
def test_bad_settings(given, message):
    with pytest.raises(ValueError, match=message):
        model_args(**given)


def test_numbers_as_lmms_eval_parses_them():
    # lmms-eval turns "8" into 8 and "true" into True; a string of digits works too
    args = model_args(batch_size="8", best_effort=True, pretrained=123)
    assert (args.batch_size, args.best_effort, args.pretrained) == (8, True, "123")
