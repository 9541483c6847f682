"""The checks every metric shares (adallava.eval.metrics._common)."""

from __future__ import annotations

import pytest

from adallava.eval.metrics._common import ratio, require_predictions


def test_missing_predictions_are_counted_and_named():
    # Bug caught: a gap in the predictions scored silently (the denominator would change), or an
    # error that hides how many are missing beyond the five it shows.
    require_predictions([1, 2], {1: "a", 2: "b"}, "X")  # complete: no error
    with pytest.raises(ValueError, match=r"X: 7 question\(s\) have no prediction: 1, 2, 3, 4, 5 and 2 more"):
        require_predictions(range(1, 9), {8: "a"}, "X")
    with pytest.raises(ValueError, match=r"X: 1 question\(s\) have no prediction: 'q'$"):
        require_predictions(["q"], {}, "X")


def test_ratio_is_zero_where_the_official_scripts_divide_by_zero():
    # Bug caught: a ZeroDivisionError (or NaN) for a category with no questions.
    assert ratio(3, 4) == 0.75 and ratio(3, 0) == 0.0
