"""Deadline budgets through `generate`: planning with a latency profile (hand-made here, so plans are
hand-computable), the controller's slowdown, infeasible deadlines, and what the output reports."""

import pytest
import torch

from adallava import AdaLlava, AdaptiveConfig
from adallava.core.budget import parse_budget
from adallava.core.deadline import Deadline
from adallava.core.latency_model import LatencyProfile, LinearCost, ProfileKey
from adallava.engine.deadlines import DeadlineInfeasible, deadline_rows
from adallava.testing import tiny_inputs, tiny_llava

N, P = 6, 3
KEY = ProfileKey("tiny", "lean", "cpu", "float32", 1, "t", "tf", "a")
# Prefill: 1 ms per request + 2 ms per layer; decode: 1 ms per layer per step; nothing else.
PROFILE = LatencyProfile(
    key=KEY,
    num_layers=N,
    prefix_layers=P,
    request_overhead_ms=1.0,
    prefill_prefix_layer=LinearCost(2.0, 0.0),
    prefill_upper_unit=LinearCost(2.0, 0.0),
    decode_prefix_layer=LinearCost(1.0, 0.0),
    decode_upper_unit=LinearCost(1.0, 0.0),
)


@pytest.fixture()
def model():
    base = tiny_llava(seed=3, num_layers=N)
    torch.manual_seed(4)
    model = AdaLlava.from_base(base, AdaptiveConfig()).eval()
    model.scheduler_trained = True
    model.deadlines.configure(profile=PROFILE, clock=lambda: 0.0)  # a fake clock: ratios never fade
    return model


def predicted(units, new_tokens):
    """Hand computation of PROFILE's time: 1 + 2 (P + u) + (new_tokens - 1)(P + u)."""
    return 1 + 2 * (P + units) + (new_tokens - 1) * (P + units)


def generate(model, inputs, budget, **kwargs):
    with torch.no_grad():
        return model.generate(
            **inputs,
            budget=budget,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            return_dict_in_generate=True,
            **kwargs,
        )


def test_parse_budget_reads_deadlines():
    assert parse_budget("300ms") == Deadline(ms=300) and parse_budget("0.3s") == Deadline(ms=300)
    assert parse_budget("0.6") == 0.6 and parse_budget("3.5T") == "3.5T"
    assert deadline_rows(["300ms", 0.7], 2) == [Deadline(300), None] and deadline_rows(0.7, 2) is None


@pytest.mark.parametrize(
    "deadline_ms, units",
    [(1000, 3), (predicted(3, 4), 3), (predicted(2, 4), 2), (predicted(1, 4) + 0.5, 1), (predicted(0, 4), 0)],
)
def test_the_largest_plan_that_fits(model, deadline_ms, units):
    """Catches: a plan that overshoots the predicted time, or one that leaves fitting layers unused."""
    inputs = tiny_inputs(model.config, [5], padding_side="left")
    out = generate(model, inputs, Deadline(ms=deadline_ms))
    report = out.deadline
    assert report.upper_units == units
    assert int(out.plan.layers[0, P:].sum()) == units
    assert report.predicted_ms == pytest.approx(predicted(units, 4), abs=1e-6)
    assert report.deadline_ms == deadline_ms and report.slowdown == 1.0
    assert report.measured_ms > 0 and report.met == (report.measured_ms <= deadline_ms)


def test_deadline_rows_mix_with_fractions(model):
    """Catches: a deadline plan applied to rows that asked for a fraction."""
    inputs = tiny_inputs(model.config, [5, 7], padding_side="left")
    out = generate(model, inputs, [Deadline(ms=predicted(1, 4)), 1.0])
    assert int(out.plan.layers[0, P:].sum()) == 1 and int(out.plan.layers[1, P:].sum()) == N - P


def test_a_slowdown_shrinks_the_plan_and_recovers(model):
    """Catches: a controller whose measured slowdown never reaches the plan."""
    inputs = tiny_inputs(model.config, [5], padding_side="left")
    deadline = Deadline(ms=predicted(3, 4))
    assert generate(model, inputs, deadline).deadline.upper_units == 3
    plan = model.deadlines.controller.plan(deadline.ms, 7, 4)
    model.deadlines.controller.record(plan, 1.5 * predicted(3, 4), predicted(3, 4))  # 1.5x slower
    slow = generate(model, inputs, deadline).deadline
    # 1.5 x predicted(1, 4) = 31.5 > 31 = predicted(3, 4) >= 1.5 x predicted(0, 4) = 24
    assert slow.slowdown >= 1.5 and slow.upper_units == 0
    model.deadlines.controller.threads.estimators[None].clear()  # the contention is gone
    assert generate(model, inputs, deadline).deadline.upper_units == 3


def test_infeasible_deadlines_say_the_minimum(model):
    inputs = tiny_inputs(model.config, [5], padding_side="left")
    with pytest.raises(DeadlineInfeasible, match=rf"at least {predicted(0, 4):.0f} ms"):
        generate(model, inputs, "5ms")
    out = generate(model, inputs, "5ms", deadline_best_effort=True)
    assert out.deadline.upper_units == 0 and out.deadline.best_effort


def test_queue_wait_counts(model):
    """Catches: a server's queue wait left out of the deadline (a request that waited plans as if fresh)."""
    import time

    inputs = tiny_inputs(model.config, [5], padding_side="left")
    arrived = time.perf_counter() - (predicted(3, 4) - predicted(1, 4)) / 1e3  # waited 2 layers' worth
    out = generate(model, inputs, Deadline(ms=predicted(3, 4)), deadline_start=arrived)
    assert out.deadline.upper_units <= 1 and out.deadline.waited_ms >= predicted(3, 4) - predicted(1, 4)


def test_deadlines_refuse_engine_hf(model):
    inputs = tiny_inputs(model.config, [5], padding_side="left")
    with pytest.raises(ValueError, match="lean engine"):
        generate(model, inputs, "300ms", engine="hf")


def test_contention_alone_never_refuses(model):
    """Catches: a controller that, once contention made every plan look too slow, refuses every
    request, and so never measures that the contention is over (a lock-out). A deadline the idle
    machine can meet runs the smallest plan instead; only one below the idle minimum is refused."""
    inputs = tiny_inputs(model.config, [5], padding_side="left")
    plan = model.deadlines.controller.plan(100.0, 7, 4)
    model.deadlines.controller.record(plan, 3.0 * predicted(3, 4), predicted(3, 4))  # 3x slower
    out = generate(model, inputs, Deadline(ms=predicted(0, 4) + 1))  # 17 ms: idle yes, 3x no
    assert out.deadline.upper_units == 0 and out.deadline.slowdown >= 3.0
    with pytest.raises(DeadlineInfeasible, match="even when idle"):
        generate(model, inputs, Deadline(ms=predicted(0, 4) - 1))
