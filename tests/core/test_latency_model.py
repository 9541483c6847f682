"""The latency model's arithmetic against hand computations, its fits, and its profile files."""

from __future__ import annotations

import dataclasses
import json

import pytest

from adallava.core.budget import BudgetSpace
from adallava.core.latency_model import (
    LatencyProfile,
    LinearCost,
    ProfileKey,
    default_cache_folder,
    fit_constant,
    fit_linear,
    fraction_for_units,
    largest_fitting_units,
    load_profile,
    predict_ms,
    profile_path,
    remaining_ms_by_units,
    save_profile,
    upper_units_of,
)

pytestmark = pytest.mark.core

KEY = ProfileKey(
    model="tiny-llava",
    engine="lean",
    device="cpu",
    dtype="float32",
    threads=2,
    torch_version="2.13.0",
    transformers_version="5.25.0",
    adallava_version="0.1.0",
)


def profile(**changes) -> LatencyProfile:
    """4 layers, 2 of them prefix; round numbers so every prediction is computed by hand below."""
    fields = dict(
        key=KEY,
        num_layers=4,
        prefix_layers=2,
        vision_per_image_ms=10.0,
        request_overhead_ms=5.0,
        step_overhead_ms=1.0,
        prefill_prefix_layer=LinearCost(2.0, 0.1),
        prefill_upper_unit=LinearCost(3.0, 0.2),
        decode_prefix_layer=LinearCost(0.5, 0.01),
        decode_upper_unit=LinearCost(1.0, 0.02),
        lm_head=LinearCost(0.5, 0.25),
    )
    return LatencyProfile(**{**fields, **changes})


def test_prediction_matches_the_hand_computation():
    # prefill = 5 (request) + 10 (one image) + 2 * (2 + 0.1 * 10) + 1 * (3 + 0.2 * 10) + (0.5 + 0.25 * 1)
    #         = 5 + 10 + 6 + 5 + 0.75 = 26.75
    # decode: steps 1 and 2 attend to 11 and 12 keys; each is
    #   1 + 2 * (0.5 + 0.01 c) + (1 + 0.02 c) + 0.75 = 3.75 + 0.04 c -> 4.19 + 4.23 = 8.42
    # Bugs caught: n decode steps instead of n - 1, the context not growing, lm_head left out of a step.
    time = predict_ms(profile(), 1, prompt_tokens=10, max_new_tokens=3, images=1)
    assert time.prefill_ms == pytest.approx(26.75)
    assert time.decode_ms == pytest.approx(8.42)
    assert time.total_ms == pytest.approx(35.17)


def test_batch_multiplies_the_tokens_each_component_sees():
    # B = 2 rows of 10 tokens, 2 upper units, 2 images, 2 new tokens:
    # prefill = 5 + 20 + 2 * (2 + 0.1 * 20) + 2 * (3 + 0.2 * 20) + (0.5 + 0.25 * 2) = 5 + 20 + 8 + 14 + 1 = 48
    # decode: one step, 2 rows x 11 keys = 22: 1 + 2 * (0.5 + 0.22) + 2 * (1 + 0.44) + 1 = 6.32
    time = predict_ms(profile(), 2, prompt_tokens=10, max_new_tokens=2, batch=2, images=2)
    assert time.prefill_ms == pytest.approx(48.0)
    assert time.decode_ms == pytest.approx(6.32)


def test_one_new_token_is_prefill_only():
    assert predict_ms(profile(), 2, prompt_tokens=10, max_new_tokens=1).decode_ms == 0.0


def test_long_answers_are_dominated_by_decoding():
    time = predict_ms(profile(), 2, prompt_tokens=10, max_new_tokens=200)
    assert time.decode_ms > 10 * time.prefill_ms


def test_a_per_layer_plan_counts_its_units():
    heads = profile(units_per_layer=4)  # head switches: 2 upper layers x 4 units
    assert heads.max_upper_units == 8
    assert upper_units_of([4, 2], heads) == 6
    assert predict_ms(heads, [4, 2], 10, 3) == predict_ms(heads, 6, 10, 3)
    with pytest.raises(ValueError, match=r"2 upper layers' unit counts, each in \[0, 4\]"):
        upper_units_of([5, 0], heads)
    with pytest.raises(ValueError, match="2 upper layers"):
        upper_units_of([1, 1, 1], heads)
    with pytest.raises(ValueError, match="allowed: 0 to 8"):
        upper_units_of(9, heads)


def test_bad_request_shapes_are_errors():
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        predict_ms(profile(), 0, prompt_tokens=10, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch=0"):
        predict_ms(profile(), 0, prompt_tokens=10, max_new_tokens=1, batch=0)


def test_largest_fitting_units_picks_the_most_that_fit_times_slowdown():
    # Totals for T = 10, n = 3, one image: 27.71 + 7.46 u (u = 0, 1, 2: 27.71, 35.17, 42.63).
    plan = dict(prompt_tokens=10, max_new_tokens=3, images=1)
    assert largest_fitting_units(profile(), 40.0, 1.0, **plan).units == 1
    fit = largest_fitting_units(profile(), 40.0, 1.2, **plan)  # 1.2 x 35.17 = 42.2 > 40; 1.2 x 27.71 fits
    assert fit.units == 0 and fit.feasible
    assert fit.predicted_ms == pytest.approx(1.2 * 27.71) and fit.minimum_ms == pytest.approx(1.2 * 27.71)
    full = predict_ms(profile(), 2, **plan).total_ms
    assert largest_fitting_units(profile(), full, 1.0, **plan).units == 2  # exactly on the deadline fits
    assert largest_fitting_units(profile(), 1e6, 1.0, **plan).units == 2  # never more than the model has


def test_an_infeasible_deadline_reports_the_predicted_minimum():
    fit = largest_fitting_units(profile(), 30.0, 1.2, prompt_tokens=10, max_new_tokens=3, images=1)
    assert fit.units is None and not fit.feasible
    assert fit.minimum_ms == pytest.approx(1.2 * 27.71) and fit.slowdown == 1.2
    with pytest.raises(ValueError, match="slowdown"):
        largest_fitting_units(profile(), 30.0, 0.0, prompt_tokens=10, max_new_tokens=3)


def test_remaining_time_by_units_after_some_tokens():
    # After 2 of 3 tokens one step is left, attending to 12 keys: 2.75 + 0.24 + u * (1 + 0.24).
    remaining = remaining_ms_by_units(profile(), prompt_tokens=10, tokens_done=2, max_new_tokens=3)
    assert remaining == pytest.approx([2.99, 4.23, 5.47])
    assert remaining_ms_by_units(profile(), 10, tokens_done=3, max_new_tokens=3) == [0.0, 0.0, 0.0]
    # The rest after the first token is the whole decode part of the prediction.
    whole = remaining_ms_by_units(profile(), 10, tokens_done=1, max_new_tokens=3)
    assert whole[1] == pytest.approx(predict_ms(profile(), 1, 10, 3).decode_ms)
    with pytest.raises(ValueError, match="tokens_done"):
        remaining_ms_by_units(profile(), 10, tokens_done=0, max_new_tokens=3)


def test_fraction_for_units_buys_exactly_those_units_under_the_budget_rule():
    # Independent reference: BudgetSpace.units_for, the rule fraction budgets use.
    for units_per_layer, layers, prefix in ((1, 4, 2), (4, 4, 2), (1, 24, 16), (4, 32, 16)):
        model = profile(units_per_layer=units_per_layer, num_layers=layers, prefix_layers=prefix)
        space = BudgetSpace(layers * units_per_layer, prefix * units_per_layer)
        for units in range(model.max_upper_units + 1):
            assert space.units_for(fraction_for_units(model, units)) == units


def test_fit_linear_recovers_an_exact_line():
    fit = fit_linear([(1, 3), (2, 5), (3, 7)])
    assert fit.fixed_ms == pytest.approx(1.0) and fit.per_token_ms == pytest.approx(2.0)


def test_fit_linear_keeps_both_coefficients_non_negative():
    # Unconstrained: -1 + 2x. Constant 3: squared error 8. Through the origin: slope 22/14 = 11/7,
    # squared error (16 + 1 + 4) / 49 = 3/7: the best non-negative fit.
    fit = fit_linear([(1, 1), (2, 3), (3, 5)])
    assert fit.fixed_ms == 0.0 and fit.per_token_ms == pytest.approx(11 / 7)
    # Falling times: slope -2 unconstrained; constant 3 (error 8) beats the origin line (slope 1, error 21).
    fit = fit_linear([(1, 5), (2, 3), (3, 1)])
    assert fit.fixed_ms == pytest.approx(3.0) and fit.per_token_ms == 0.0


def test_fit_linear_needs_two_token_counts_and_sane_samples():
    with pytest.raises(ValueError, match="two or more distinct token counts"):
        fit_linear([(8, 1.0), (8, 1.2)])
    with pytest.raises(ValueError, match=">= 0"):
        fit_linear([(1, 1.0), (2, float("nan"))])


def test_fit_constant_is_the_median():
    assert fit_constant([5.0, 1.0, 100.0]) == 5.0  # the slow outlier does not drag it
    assert fit_constant([1.0, 2.0, 4.0, 100.0]) == 3.0
    with pytest.raises(ValueError):
        fit_constant([])


def test_linear_cost_and_profile_check_their_fields():
    with pytest.raises(ValueError, match="per_token_ms"):
        LinearCost(1.0, -0.1)
    with pytest.raises(ValueError, match="prefix_layers=5"):
        profile(prefix_layers=5)
    with pytest.raises(ValueError, match="step_overhead_ms"):
        profile(step_overhead_ms=-1.0)


def test_profile_json_round_trip():
    original = profile(units_per_layer=4)
    restored = LatencyProfile.from_json(original.to_json())
    assert restored == original
    assert isinstance(restored.decode_upper_unit, LinearCost) and isinstance(restored.key, ProfileKey)
    assert json.loads(original.to_json())["format"] == 1


def test_profiles_are_saved_and_found_only_under_their_own_key(tmp_path):
    path = save_profile(profile(), tmp_path)
    assert path == profile_path(KEY, tmp_path) and path.is_file()
    assert load_profile(KEY, tmp_path) == profile()
    # Bug caught: a profile measured under another torch or thread count reused as if it were this one.
    for change in ({"torch_version": "2.14.0"}, {"threads": 1}, {"engine": "hf"}):
        other = dataclasses.replace(KEY, **change)
        assert profile_path(other, tmp_path) != path
        assert load_profile(other, tmp_path) is None
    # A file of an older format (or broken) is ignored: a fresh calibration is due.
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 0}))
    assert load_profile(KEY, tmp_path) is None


def test_profile_file_names_are_file_safe():
    key = dataclasses.replace(KEY, model="org/model name:v1", device="cuda:NVIDIA H100")
    name = key.file_name()
    assert "/" not in name and " " not in name and ":" not in name and name.endswith(".json")


def test_default_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADALLAVA_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_folder() == tmp_path / "a" / "latency"
    monkeypatch.delenv("ADALLAVA_CACHE")
    assert default_cache_folder() == tmp_path / "x" / "adallava" / "latency"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_folder() == tmp_path / "home" / ".cache" / "adallava" / "latency"
    assert profile_path(KEY) == default_cache_folder() / KEY.file_name()


def test_decode_step_costs_scale_with_the_units_run():
    """Catches: an upper unit's fixed decode cost divided by the unit count instead of multiplied
    (invisible with the 1.0 ms used above). Hand computation: 4 new tokens = 3 steps, each
    step_overhead 1 + 2 prefix * 0.5 + u * 2.5 + lm_head 0.75, context terms zero."""
    flat = profile(
        decode_prefix_layer=LinearCost(0.5, 0.0),
        decode_upper_unit=LinearCost(2.5, 0.0),
        lm_head=LinearCost(0.5, 0.25),
    )
    for units in (0, 1, 2):
        expected = 3 * (1.0 + 2 * 0.5 + units * 2.5 + 0.75)
        assert predict_ms(flat, units, prompt_tokens=10, max_new_tokens=4).decode_ms == pytest.approx(
            expected
        )


def test_defaults_are_one_row_and_no_image():
    """Catches: a default of one image (a text-only request would pay the vision tower) or of two
    rows (every token count doubled)."""
    p = profile()
    assert predict_ms(p, 1, 10, 3) == predict_ms(p, 1, 10, 3, batch=1, images=0)
    fit = largest_fitting_units(p, 1000.0, 1.0, 10, 3)
    assert fit == largest_fitting_units(p, 1000.0, 1.0, 10, 3, batch=1, images=0)


def test_a_fit_reports_its_slowdown_and_times():
    """Catches: a fit that loses the slowdown it was planned with, or an infeasible one without its
    predicted time (the server quotes both)."""
    p = profile()
    fit = largest_fitting_units(p, 1000.0, 1.5, 10, 3)
    assert fit.slowdown == 1.5 and fit.units == p.max_upper_units
    assert fit.predicted_ms == pytest.approx(1.5 * predict_ms(p, fit.units, 10, 3).total_ms)
    none = largest_fitting_units(p, 1.0, 2.0, 10, 3)
    assert none.units is None and none.slowdown == 2.0
    assert none.predicted_ms == none.minimum_ms == pytest.approx(2.0 * predict_ms(p, 0, 10, 3).total_ms)
