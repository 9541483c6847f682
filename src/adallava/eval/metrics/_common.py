"""Helpers shared by the metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def require_predictions(question_ids: Iterable[Any], predictions: Mapping[Any, str], benchmark: str) -> None:
    """Every question needs a prediction: the official numbers assume a complete predictions file, and
    a silent gap would change the denominator. Raises ValueError naming how many and which."""
    missing = [question_id for question_id in question_ids if question_id not in predictions]
    if missing:
        shown = ", ".join(repr(question_id) for question_id in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{benchmark}: {len(missing)} question(s) have no prediction: {shown}{more}")


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, and 0.0 where the official scripts would divide by zero."""
    return numerator / denominator if denominator else 0.0

