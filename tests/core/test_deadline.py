"""Deadline parsing: the accepted forms, the routing test a budget parser uses, and the errors."""

from __future__ import annotations

import pytest

from adallava.core.deadline import (
    MAX_DEADLINE_MS,
    Deadline,
    as_deadline,
    is_deadline_text,
    parse_deadline,
)

pytestmark = pytest.mark.core


@pytest.mark.parametrize(
    "text, ms",
    [
        ("300ms", 300.0),
        ("300 ms", 300.0),
        ("0.3s", 300.0),  # bug caught: seconds read as milliseconds
        (" 1.5s", 1500.0),
        ("1.5 S ", 1500.0),  # case-insensitive, spaces around
        ("300MS", 300.0),
        (".5s", 500.0),
        ("2.5e2ms", 250.0),  # bug caught: the exponent's 'e' taken as the start of the unit
        ("600s", MAX_DEADLINE_MS),  # the maximum itself is allowed
    ],
)
def test_accepted_forms_give_milliseconds(text, ms):
    assert parse_deadline(text) == Deadline(ms=ms)
    assert is_deadline_text(text)


@pytest.mark.parametrize(
    "text, says",
    [
        ("300", "no time unit"),  # a bare number is a fraction or FLOPs, never a deadline
        ("-5ms", "not positive"),
        ("0ms", "not positive"),
        ("0.0s", "not positive"),
        ("nan ms", "not a number"),
        ("inf ms", "not a number"),
        ("1_000ms", "not a number"),  # float() would accept the underscore
        ("1e9ms", "maximum of 600s"),
        ("600.001s", "maximum of 600s"),
        ("5 min", "unit 'min'"),
        ("300us", "unit 'us'"),
        ("ms", "no time unit"),
        ("", "no time unit"),
    ],
)
def test_bad_forms_name_the_value_and_the_accepted_forms(text, says):
    with pytest.raises(ValueError) as error:
        parse_deadline(text)
    message = str(error.value)
    assert says in message
    assert repr(text) in message
    assert "'300ms'" in message and "'0.3s'" in message


@pytest.mark.parametrize("text", ["-5ms", "nan ms", "5 min", "1e9ms", "3 seconds", "2 hours"])
def test_mistyped_times_are_routed_to_the_deadline_parser(text):
    # Bug caught: routing only well-formed deadlines, so '5 min' fell to the FLOPs parser and got an
    # error about FLOPs suffixes instead of one naming the deadline forms.
    assert is_deadline_text(text)


@pytest.mark.parametrize(
    "text", ["0.6", "1", "3.5T", "800G", "2M", "2 M", "1e12", "12 GFLOPs", "", "ms", "infs"]
)
def test_fractions_and_flops_are_not_deadlines(text):
    # '2M' is two mega-FLOPs: the one-letter 'm' must not be read as minutes or milliseconds.
    assert not is_deadline_text(text)


def test_is_deadline_text_is_false_for_non_strings():
    assert not is_deadline_text(0.5) and not is_deadline_text(None)


def test_deadline_dataclass_checks_its_milliseconds():
    assert Deadline(ms=300).ms == 300.0 and isinstance(Deadline(ms=300).ms, float)
    assert Deadline(ms=300).seconds == pytest.approx(0.3)
    assert str(Deadline(ms=300)) == "300ms" and str(Deadline(ms=12.5)) == "12.5ms"
    for bad in (0, -1, float("nan"), float("inf"), MAX_DEADLINE_MS * 1.01, True, "300"):
        with pytest.raises(ValueError, match="Deadline.ms"):
            Deadline(ms=bad)


def test_deadline_is_frozen_and_hashable():
    deadline = Deadline(ms=300)
    with pytest.raises(AttributeError):
        deadline.ms = 5  # type: ignore[misc]
    assert len({Deadline(ms=300), Deadline(ms=300.0)}) == 1


def test_as_deadline_accepts_a_deadline_or_text():
    assert as_deadline(Deadline(ms=50)) == Deadline(ms=50)
    assert as_deadline("0.05s") == Deadline(ms=50)
    with pytest.raises(ValueError, match="'300ms'"):
        as_deadline(300)
