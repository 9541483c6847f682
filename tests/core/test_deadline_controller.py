"""The online deadline controller on a fake clock and a simulated machine whose speed changes."""

from __future__ import annotations

import pytest

from adallava.core.deadline_controller import (
    DeadlineController,
    SlowdownEstimator,
    ThreadChoice,
    ThreadChooser,
    live_slowdown,
    nearest_rank_quantile,
    units_after_falling_behind,
)
from adallava.core.latency_model import LatencyProfile, LinearCost, ProfileKey, predict_ms

pytestmark = pytest.mark.core

KEY = ProfileKey("m", "lean", "cpu", "float32", 2, "2.13.0", "5.25.0", "0.1.0")
# 6 layers, 2 prefix, 10 ms per layer, nothing else: one new token takes 20 + 10 u ms (u = 0..4).
PROFILE = LatencyProfile(
    key=KEY,
    num_layers=6,
    prefix_layers=2,
    prefill_prefix_layer=LinearCost(10.0, 0.0),
    prefill_upper_unit=LinearCost(10.0, 0.0),
)
REQUEST = dict(prompt_tokens=8, max_new_tokens=1)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nearest_rank_quantile_by_hand():
    values = [float(v) for v in range(10, 0, -1)]  # 10 .. 1, unsorted on purpose
    assert nearest_rank_quantile(values, 0.9) == 9.0  # ceil(9.0) = 9th smallest
    assert nearest_rank_quantile(values, 0.95) == 10.0  # ceil(9.5) = 10th: never interpolated
    assert nearest_rank_quantile(values, 0.5) == 5.0
    assert nearest_rank_quantile([3.0], 0.9) == 3.0
    with pytest.raises(ValueError, match="quantile"):
        nearest_rank_quantile(values, 0.0)


def test_estimator_starts_at_the_prior_and_reacts_to_the_newest_ratio_at_once():
    estimator = SlowdownEstimator(window=10, quantile=0.9, clock=FakeClock())
    assert estimator.estimate() == 1.0
    for _ in range(9):
        estimator.observe(100.0, 100.0)
    # Bug caught: a pure p90 of 10 ignores the first slow request, so the next plan misses as well.
    assert estimator.observe(450.0, 100.0) == 4.5
    assert estimator.estimate() == 4.5


def test_estimator_covers_the_noise_with_a_high_quantile():
    estimator = SlowdownEstimator(window=10, quantile=0.9, clock=FakeClock())
    for ratio in (4.0, 4.2, 4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6, 3.0):
        estimator.observe(ratio * 100, 100.0)
    # sorted: 3.0 4.0 4.2 4.4 4.6 4.8 5.0 5.2 5.4 5.6; the 9th is 5.4, above the newest (3.0)
    assert estimator.estimate() == pytest.approx(5.4)


def test_estimator_memory_is_bounded():
    estimator = SlowdownEstimator(window=7, clock=FakeClock())
    for _ in range(1000):
        estimator.observe(1.0, 1.0)
    assert len(estimator) == 7


def test_an_old_spike_fades_with_time_so_it_does_not_pin_plans_down():
    clock = FakeClock()
    estimator = SlowdownEstimator(half_life_s=10.0, clock=clock)
    estimator.observe(500.0, 100.0)  # one 5x spike, then no requests
    assert estimator.estimate() == 5.0
    clock.now = 10.0
    assert estimator.estimate() == pytest.approx(3.0)  # 1 + 4 / 2
    clock.now = 30.0
    assert estimator.estimate() == pytest.approx(1.5)  # 1 + 4 / 8
    assert estimator.latest_ratio() == 5.0  # what was measured is kept as measured


def test_estimator_rejects_bad_times():
    estimator = SlowdownEstimator(clock=FakeClock())
    with pytest.raises(ValueError, match="measured_ms"):
        estimator.observe(0.0, 100.0)
    with pytest.raises(ValueError, match="predicted_ms"):
        estimator.observe(10.0, float("nan"))
    with pytest.raises(ValueError, match="window"):
        SlowdownEstimator(window=0)


def run(controller: DeadlineController, deadline_ms: float, speed_factors: list[float]):
    """Simulated machine: each request takes factor x the model's prediction of what it ran."""
    units, measured = [], []
    for factor in speed_factors:
        plan = controller.plan(deadline_ms, **REQUEST)
        predicted = predict_ms(PROFILE, plan.units, **REQUEST).total_ms
        controller.record(plan, factor * predicted, predicted)
        units.append(plan.units)
        measured.append(factor * predicted)
    return units, measured


def test_plans_shrink_when_times_grow_and_grow_back_when_they_fall():
    # Deadline 50 ms: idle, 3 upper units fit (20 + 30 = 50); at 2x only 0 (2 x 20 = 40; 2 x 30 = 60).
    # Window 10 at quantile 0.8 (the 8th smallest of 10): after the contention (6 requests at 2x) the
    # estimate stays 2 until at most two 2x ratios are left in the window, i.e. 8 idle requests later.
    controller = DeadlineController(PROFILE, clock=FakeClock(), window=10, quantile=0.8)
    units, measured = run(controller, 50.0, [1.0] * 3 + [2.0] * 6 + [1.0] * 9)
    assert units == [3] * 4 + [0] * 13 + [3]
    misses = [i for i, ms in enumerate(measured) if ms > 50.0]
    assert misses == [3]  # only the first request under contention, planned before it was seen


def test_recovery_after_an_idle_pause_follows_the_half_life():
    clock = FakeClock()
    controller = DeadlineController(PROFILE, clock=clock, half_life_s=10.0)
    run(controller, 50.0, [2.0] * 5)
    assert controller.plan(50.0, **REQUEST).units == 0
    clock.now += 60.0  # six half-lives: slowdown 1 + 1 / 64
    plan = controller.plan(50.0, **REQUEST)
    assert plan.slowdown == pytest.approx(1 + 1 / 64)
    assert plan.units == 2  # 40 x 1.016 fits; 50 x 1.016 does not


def test_queue_wait_counts_against_the_deadline():
    controller = DeadlineController(PROFILE, clock=FakeClock())
    plan = controller.plan(50.0, waited_ms=10.0, **REQUEST)
    assert plan.units == 2 and plan.budget_ms == 40.0 and plan.predicted_ms == 40.0


def test_an_infeasible_deadline_has_no_units_and_the_predicted_minimum():
    controller = DeadlineController(PROFILE, clock=FakeClock())
    run(controller, 50.0, [1.5])
    plan = controller.plan(25.0, **REQUEST)
    assert not plan.feasible and plan.units is None
    assert plan.minimum_ms == pytest.approx(30.0) and plan.slowdown == pytest.approx(1.5)


def test_thread_chooser_picks_the_faster_count_and_explores_the_other_safely():
    chooser = ThreadChooser((2, 1), explore_every=3, clock=FakeClock())
    assert chooser.choose() == ThreadChoice(2, 1.0, exploring=False)  # a tie: the profile's own count
    chooser.record(chooser.choose(), 450.0, 100.0)  # 2 threads under contention: 4.5x
    assert chooser.choose() == ThreadChoice(1, 1.0, exploring=False)  # 1 thread: not yet measured
    for _ in range(3):
        chooser.record(chooser.choose(), 200.0, 100.0)  # 1 thread: 2x
    # Three requests since 2 threads were tried: try them again, planned for the worse of 4.5 and 2
    # so that the try cannot miss if contention goes on.
    choice = chooser.choose()
    assert choice == ThreadChoice(2, 4.5, exploring=True)
    chooser.record(choice, 100.0, 100.0)  # contention is over: 1x; the stale 4.5 is dropped
    assert chooser.choose() == ThreadChoice(2, 1.0, exploring=False)


def test_a_single_thread_count_never_explores():
    chooser = ThreadChooser((None,), explore_every=1, clock=FakeClock())
    for _ in range(5):
        choice = chooser.choose()
        assert choice.threads is None and not choice.exploring
        chooser.record(choice, 100.0, 100.0)


def test_controller_passes_the_thread_choice_on():
    controller = DeadlineController(PROFILE, thread_counts=(2, 1), clock=FakeClock(), explore_every=100)
    first = controller.plan(50.0, **REQUEST)
    assert first.threads == 2
    controller.record(first, 150.0, 50.0)  # 3x on 2 threads
    second = controller.plan(50.0, **REQUEST)
    assert second.threads == 1 and second.slowdown == 1.0 and second.units == 3
    with pytest.raises(ValueError, match="thread counts must be >= 1"):
        ThreadChooser((2, 0))


def test_falling_behind_drops_units_but_never_adds_any():
    remaining = [10.0, 20.0, 30.0]  # ms left with 0, 1, 2 units
    assert units_after_falling_behind(70.0, 100.0, 2, remaining, 1.0) == 2  # 70 + 30 = 100: on time
    assert units_after_falling_behind(70.0, 100.0, 2, remaining, 1.2) == 1  # 70 + 36 > 100; 70 + 24 fits
    assert units_after_falling_behind(70.0, 100.0, 2, remaining, 3.0) == 0  # late anyway: the fewest
    assert units_after_falling_behind(0.0, 100.0, 1, remaining, 1.0) == 1  # time to spare: not 2
    with pytest.raises(ValueError, match=r"current_units must be in \[0, 2\]"):
        units_after_falling_behind(0.0, 100.0, 3, remaining, 1.0)


def test_live_slowdown():
    assert live_slowdown(300.0, 100.0) == 3.0
    with pytest.raises(ValueError, match="predicted_elapsed_ms"):
        live_slowdown(300.0, 0.0)


def test_quantile_bounds():
    """Catches: q = 1 (the maximum, a valid choice) refused, or q > 1 accepted."""
    from adallava.core.deadline_controller import nearest_rank_quantile

    assert nearest_rank_quantile([3.0, 1.0, 2.0], 1.0) == 3.0
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="q"):
            nearest_rank_quantile([1.0], bad)
    with pytest.raises(ValueError, match="at least one value"):
        nearest_rank_quantile([], 0.5)
