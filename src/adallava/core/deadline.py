"""Deadlines: a budget in wall-clock time ("300ms", "0.3s", `Deadline(ms=300)`) instead of FLOPs.

A deadline means the whole answer (prefill, then decoding up to `max_new_tokens` or the
end-of-sequence token) is complete within that many milliseconds, counted from the call (library)
or from arrival (server, so queue wait counts). Turning it into a plan is the latency model's job
(`adallava.core.latency_model`); this module only reads and checks what the user wrote.

Accepted forms, case-insensitive, spaces allowed around the number and the unit:
``"300ms"``, ``"300 ms"``, ``"0.3s"``, ``" 1.5 S"``, ``"2.5e2ms"``. The amount is a positive, finite
number; a deadline is at most `MAX_DEADLINE_MS` (10 minutes: anything longer is not a latency
budget). A bare number (``"300"``) is not a deadline: budgets without a unit are fractions or FLOPs.

`is_deadline_text` tells a budget parser which strings are meant as times, including mistyped ones
(``"-5ms"``, ``"5 min"``), so that they reach `parse_deadline` and get its error naming the accepted
forms rather than a FLOPs-parsing error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_DEADLINE_MS = 600_000.0  # 10 minutes
ACCEPTED_FORMS = "a positive number of milliseconds or seconds, such as '300ms', '300 ms' or '0.3s'"

_UNIT_MS = {"ms": 1.0, "s": 1000.0}
# Words that mean a time unit, accepted or not: text ending in one of them is meant as a deadline.
_TIME_UNITS = frozenset(
    {
        *_UNIT_MS,
        "msec", "msecs", "millisecond", "milliseconds",
        "sec", "secs", "second", "seconds",
        "us", "µs", "usec", "microsecond", "microseconds", "ns", "nanosecond", "nanoseconds",
        "min", "mins", "minute", "minutes", "h", "hr", "hrs", "hour", "hours",
    }
)  # fmt: skip
# An amount (anything, checked later) then a trailing run of letters: the unit.
_AMOUNT_AND_UNIT = re.compile(r"^\s*(?P<amount>.*?)\s*(?P<unit>[a-zµ]+)\s*$", re.IGNORECASE)
# A plain decimal number, optionally signed, with an optional exponent: no '_', no 'inf'.
_NUMBER = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Deadline:
    """A wall-clock deadline for a whole answer, in milliseconds: `Deadline(ms=300)`."""

    ms: float
    """Milliseconds from the call (library) or the request's arrival (server) to the last token;
    in (0, MAX_DEADLINE_MS]."""

    def __post_init__(self):
        if isinstance(self.ms, bool) or not isinstance(self.ms, (int, float)):
            raise ValueError(f"Deadline.ms must be a number of milliseconds, got {self.ms!r}")
        if not math.isfinite(self.ms) or self.ms <= 0:
            raise ValueError(
                f"Deadline.ms must be a positive, finite number of milliseconds, got {self.ms!r}"
            )
        if self.ms > MAX_DEADLINE_MS:
            raise ValueError(f"Deadline.ms must be at most {MAX_DEADLINE_MS:g} (10 minutes), got {self.ms!r}")
        object.__setattr__(self, "ms", float(self.ms))

    @property
    def seconds(self) -> float:
        return self.ms / 1000.0

    def __str__(self) -> str:
        return f"{self.ms:g}ms"


def is_deadline_text(text: str) -> bool:
    """True when `text` is written as a time (a number, well-formed or not, then a time unit):
    '300ms', '0.3 s', '-5ms', 'nan ms', '5 min'. False for fractions ('0.6') and FLOPs ('3.5T', '800G',
    '2M'), so a budget parser can send the former to `parse_deadline` and the rest to its own rules."""
    if not isinstance(text, str):
        return False
    match = _AMOUNT_AND_UNIT.match(text)
    return bool(match and match.group("amount") and match.group("unit").lower() in _TIME_UNITS)


def parse_deadline(text: str) -> Deadline:
    """'300ms' -> Deadline(ms=300.0); '0.3s' -> Deadline(ms=300.0). Case-insensitive, spaces allowed.

    Raises ValueError naming `text` and the accepted forms for anything else: no unit ('300'), another
    unit ('5 min', '300us'), not a plain number ('nan ms', 'infs'), not positive ('0ms', '-5ms'), or
    longer than MAX_DEADLINE_MS ('1e9ms')."""
    match = _AMOUNT_AND_UNIT.match(text) if isinstance(text, str) else None
    if not match or not match.group("amount"):
        raise ValueError(f"deadline {text!r} has no time unit; write {ACCEPTED_FORMS}")
    amount, unit = match.group("amount"), match.group("unit").lower()
    if unit not in _UNIT_MS:
        raise ValueError(f"deadline {text!r} uses unit {unit!r}; write {ACCEPTED_FORMS}")
    if not _NUMBER.match(amount):
        raise ValueError(f"deadline {text!r}: {amount!r} is not a number; write {ACCEPTED_FORMS}")
    ms = float(amount) * _UNIT_MS[unit]
    if not math.isfinite(ms) or ms <= 0:
        raise ValueError(f"deadline {text!r} is not positive; write {ACCEPTED_FORMS}")
    if ms > MAX_DEADLINE_MS:
        raise ValueError(
            f"deadline {text!r} is longer than the maximum of {MAX_DEADLINE_MS / 1000:g}s (10 minutes); "
            f"write {ACCEPTED_FORMS}"
        )
    return Deadline(ms=ms)


def as_deadline(value: Deadline | str) -> Deadline:
    """A `Deadline` as given, or parsed from text ('300ms'); ValueError for anything else."""
    if isinstance(value, Deadline):
        return value
    if isinstance(value, str):
        return parse_deadline(value)
    raise ValueError(f"deadline must be a Deadline or a string such as '300ms', got {value!r}")
