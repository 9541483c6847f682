"""The online deadline controller: keeps deadlines while the machine's speed changes under it.

The latency model (`adallava.core.latency_model`) predicts times on an idle machine. Another process
on the CPU makes everything slower, and not by its share of the CPU (a competing process made a
2-thread forward 4-5x slower here, and noisy: ../shared/notes/contention.md). So the controller keeps
a *slowdown*, measured / predicted ms of recent requests, and plans each request as if every
predicted time were that many times longer:

- `SlowdownEstimator`: the slowdown from the last `window` ratios. Its estimate is the larger of a
  high quantile of the window (covers the noise of a contended machine) and the newest ratio (reacts
  at once when contention starts). Each ratio's distance from `prior` halves every `half_life_s`
  seconds of its age, so an old spike fades even when no request comes to push it out of the window;
  when contention stops, plans grow back as slow ratios leave the window or fade.
- `ThreadChooser`: the second lever. One estimator per torch thread count, all measured against
  the same profile, so the count with the smallest slowdown is the fastest; now and then the other
  count is tried again (its old estimate is stale), with a plan sized pessimistically so the try
  does not miss. It only decides; the caller calls `torch.set_num_threads`.
- `DeadlineController`: both together with the latency profile: `plan` a request, then `record` it.
- `units_after_falling_behind`: the mid-generation rule, a pure function. A request behind schedule
  drops upper units for its remaining tokens; it never adds any (turning a layer on mid-answer would
  need the keys and values it never computed).

Every time comes from an injectable `clock` (seconds, monotonic), so tests run on a fake clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adallava.core.latency_model import DeadlineFit, LatencyProfile, largest_fitting_units


def nearest_rank_quantile(values: Sequence[float], q: float) -> float:
    """The smallest value with at least a share q of `values` at or below it (nearest rank; never
    interpolates, so it is always a value that was measured)."""
    if not values:
        raise ValueError("nearest_rank_quantile needs at least one value")
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q!r}")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _check_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")


class SlowdownEstimator:
    """measured / predicted of recent requests -> the factor to plan the next one with.

    window: ratios kept (bounded memory); quantile: the share of them the estimate covers;
    half_life_s: seconds after which a ratio's distance from `prior` has halved; prior: the estimate
    with no ratios (1.0: the profile is right)."""

    def __init__(
        self,
        window: int = 20,
        quantile: float = 0.9,
        half_life_s: float = 30.0,
        prior: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
        _check_positive("half_life_s", half_life_s)
        _check_positive("prior", prior)
        self.quantile, self.half_life_s, self.prior, self.clock = quantile, half_life_s, prior, clock
        self._ratios: deque[tuple[float, float]] = deque(maxlen=window)  # (clock seconds, ratio)

    def observe(self, measured_ms: float, predicted_ms: float) -> float:
        """Add one request's ratio (measured / predicted, both for the same plan and tokens actually
        generated, queue wait excluded) and return it."""
        _check_positive("measured_ms", measured_ms)
        _check_positive("predicted_ms", predicted_ms)
        ratio = measured_ms / predicted_ms
        self._ratios.append((self.clock(), ratio))
        return ratio

    def _faded(self, at: float, ratio: float, now: float) -> float:
        age = max(0.0, now - at)
        return self.prior + (ratio - self.prior) * 0.5 ** (age / self.half_life_s)

    def estimate(self) -> float:
        """The slowdown to plan with now: max(quantile of faded ratios, newest faded ratio)."""
        if not self._ratios:
            return self.prior
        now = self.clock()
        faded = [self._faded(at, ratio, now) for at, ratio in self._ratios]
        return max(nearest_rank_quantile(faded, self.quantile), faded[-1])

    def latest_ratio(self) -> float | None:
        """The newest ratio as measured (not faded), or None before any."""
        return self._ratios[-1][1] if self._ratios else None

    def clear(self) -> None:
        self._ratios.clear()

    def __len__(self) -> int:
        return len(self._ratios)


@dataclass(frozen=True)
class ThreadChoice:
    """Which thread count to run the next request with, and the slowdown to plan it with."""

    threads: int | None
    """torch intra-op threads (None: leave them as they are)."""
    slowdown: float
    exploring: bool
    """True when this count is tried again to see whether it has become the faster one."""


class ThreadChooser:
    """Per thread count slowdowns (all against one profile) -> the count to use next.

    thread_counts: the candidates, the profile's own first (it wins ties); explore_every: after this
    many requests without trying a count, try it once, planned with the larger of its last estimate
    and the current count's, and with its stale ratios dropped first."""

    def __init__(
        self,
        thread_counts: Sequence[int | None] = (None,),
        explore_every: int = 25,
        clock: Callable[[], float] = time.monotonic,
        **estimator_options,
    ):
        if not thread_counts or len(set(thread_counts)) != len(thread_counts):
            raise ValueError(f"thread_counts must be distinct and non-empty, got {tuple(thread_counts)}")
        if any(count is not None and count < 1 for count in thread_counts):
            raise ValueError(f"thread counts must be >= 1, got {tuple(thread_counts)}")
        if explore_every < 1:
            raise ValueError(f"explore_every must be >= 1, got {explore_every}")
        self.thread_counts = tuple(thread_counts)
        self.explore_every = explore_every
        self.estimators = {
            count: SlowdownEstimator(clock=clock, **estimator_options) for count in self.thread_counts
        }
        self._requests = 0
        self._last_tried = dict.fromkeys(self.thread_counts, 0)  # request number of the last record

    def best(self) -> int | None:
        """The count with the smallest slowdown estimate (the first of thread_counts on ties)."""
        return min(self.thread_counts, key=lambda count: self.estimators[count].estimate())

    def choose(self) -> ThreadChoice:
        best = self.best()
        best_slowdown = self.estimators[best].estimate()
        for count in self.thread_counts:
            if count != best and self._requests - self._last_tried[count] >= self.explore_every:
                stale = self.estimators[count]
                last_known = max(stale.estimate(), stale.latest_ratio() or 0.0)
                return ThreadChoice(count, max(best_slowdown, last_known), exploring=True)
        return ThreadChoice(best, best_slowdown, exploring=False)

    def record(self, choice: ThreadChoice, measured_ms: float, predicted_ms: float) -> float:
        """Add one request's times under the thread count it ran with; returns its ratio."""
        estimator = self.estimators[choice.threads]
        if choice.exploring:
            estimator.clear()  # the old ratios describe a machine that may be gone
        self._requests += 1
        self._last_tried[choice.threads] = self._requests
        return estimator.observe(measured_ms, predicted_ms)


@dataclass(frozen=True)
class DeadlinePlan:
    """What to run for one deadline request, and what to report with its answer."""

    units: int | None
    """Upper units to run; None: infeasible even with the prefix alone (see minimum_ms)."""
    threads: int | None
    """torch threads to run with (None: leave as is)."""
    slowdown: float
    """The factor the prediction was multiplied by."""
    predicted_ms: float
    """Slowdown x the model's prediction for `units`: the time expected, queue wait excluded."""
    minimum_ms: float
    """Slowdown x the prediction of the smallest plan."""
    budget_ms: float
    """What was left of the deadline for running it (deadline - waited)."""
    exploring: bool = False

    @property
    def feasible(self) -> bool:
        return self.units is not None


class DeadlineController:
    """Plans deadline requests with a latency profile and a slowdown learned from recent requests.

    controller = DeadlineController(profile, thread_counts=(2, 1))
    plan = controller.plan(300.0, prompt_tokens=64, max_new_tokens=16)
    ... run plan.units upper units with plan.threads threads; time it (queue wait excluded) ...
    controller.record(plan, measured_ms, predict_ms(profile, plan.units, 64, tokens_made).total_ms)
    """

    def __init__(
        self,
        profile: LatencyProfile,
        thread_counts: Sequence[int | None] = (None,),
        clock: Callable[[], float] = time.monotonic,
        explore_every: int = 25,
        **estimator_options,
    ):
        self.profile = profile
        self.clock = clock
        self.threads = ThreadChooser(thread_counts, explore_every, clock=clock, **estimator_options)

    def slowdown(self) -> float:
        """The slowdown of the thread count that would be chosen now."""
        return self.threads.choose().slowdown

    def plan(
        self,
        deadline_ms: float,
        prompt_tokens: int,
        max_new_tokens: int,
        batch: int = 1,
        images: int = 0,
        waited_ms: float = 0.0,
    ) -> DeadlinePlan:
        """The largest plan whose predicted time x slowdown fits in deadline_ms - waited_ms.

        waited_ms: time already spent since arrival (the server's queue wait). An infeasible plan has
        units None and the predicted minimum; the caller errors (or runs the smallest plan when the
        user asked for best effort)."""
        if waited_ms < 0:
            raise ValueError(f"waited_ms must be >= 0, got {waited_ms!r}")
        choice = self.threads.choose()
        budget = deadline_ms - waited_ms
        fit: DeadlineFit = largest_fitting_units(
            self.profile, budget, choice.slowdown, prompt_tokens, max_new_tokens, batch, images
        )
        return DeadlinePlan(
            units=fit.units,
            threads=choice.threads,
            slowdown=choice.slowdown,
            predicted_ms=fit.predicted_ms,
            minimum_ms=fit.minimum_ms,
            budget_ms=budget,
            exploring=choice.exploring,
        )

    def record(self, plan: DeadlinePlan, measured_ms: float, predicted_ms: float) -> float:
        """Learn from one finished request: measured_ms its run time (queue wait excluded),
        predicted_ms the model's unscaled prediction for what actually ran (its plan and the tokens
        it generated, which may be fewer than max_new_tokens). Returns measured / predicted."""
        choice = ThreadChoice(plan.threads, plan.slowdown, plan.exploring)
        return self.threads.record(choice, measured_ms, predicted_ms)


def live_slowdown(elapsed_ms: float, predicted_elapsed_ms: float) -> float:
    """This request's own slowdown so far: measured / predicted ms of what it has done."""
    _check_positive("elapsed_ms", elapsed_ms)
    _check_positive("predicted_elapsed_ms", predicted_elapsed_ms)
    return elapsed_ms / predicted_elapsed_ms


def units_after_falling_behind(
    elapsed_ms: float,
    deadline_ms: float,
    current_units: int,
    remaining_ms_by_units: Sequence[float],
    slowdown: float,
) -> int:
    """The upper units to run for the rest of an answer: the most, up to `current_units`, whose
    remaining time x slowdown still ends within the deadline; 0 (the fewest) when none does.

    elapsed_ms: since the deadline's start; remaining_ms_by_units[u]: predicted ms of the remaining
    tokens with u units (`latency_model.remaining_ms_by_units`); slowdown: e.g. the larger of the
    controller's and the request's `live_slowdown`. Never more than current_units: a unit turned off
    earlier has no keys and values for the tokens it skipped. Units to drop = current - result."""
    if not 0 <= current_units < len(remaining_ms_by_units):
        raise ValueError(
            f"current_units must be in [0, {len(remaining_ms_by_units) - 1}] (the units the remaining "
            f"times cover), got {current_units}"
        )
    _check_positive("slowdown", slowdown)
    for units in range(current_units, 0, -1):
        if elapsed_ms + slowdown * remaining_ms_by_units[units] <= deadline_ms:
            return units
    return 0
