"""Deadline budgets through `generate`: planning with a latency profile (hand-made here, so plans are
hand-computable), the controller's slowdown, infeasible deadlines, and what the output reports."""

import pytest
import torch

from adallava import AdaLlava, AdaptiveConfig
from adallava.core.budget import parse_budget
from adallava.core.deadline import Deadline
from adallava.core.latency_model import LatencyProfile, LinearCost, ProfileKey
from adallava.engine import hf_compat
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


class SteppingClock:
    """A clock that moves `step_s` seconds each time it is read (deterministic 'slow' tokens)."""

    def __init__(self, step_s: float):
        self.step_s, self.now = step_s, 0.0

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_falling_behind_drops_upper_layers_for_the_rest(model):
    """Catches: a request that falls behind mid-answer keeping its plan (and missing), or being priced
    as if it had. Hand computation with PROFILE: the deadline predicted(3, 8) = 55 ms plans 3 upper
    layers; the clock moves 20 ms per read, so after token 1 (predicted 13 ms) the pace is 20/13, and
    the remaining 7 steps fit only with 0 upper layers (20 + 20/13 * 7 * 3 = 52.3 <= 55)."""
    inputs = tiny_inputs(model.config, [5], padding_side="left")
    model.deadlines.configure(clock=SteppingClock(0.020))
    with torch.no_grad():
        out = model.generate(
            **inputs,
            budget=Deadline(ms=predicted(3, 8)),
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            return_dict_in_generate=True,
        )
        half = model.generate(
            **inputs,
            budget=0.5,
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            return_dict_in_generate=True,
        )
    assert out.deadline.upper_units == 3 and out.deadline.dropped == ((1, 0),)
    [(at, later)] = out.plan_changes
    assert at == 1 and int(later.layers[0, P:].sum()) == 0 and int(out.plan.layers[0, P:].sum()) == 3
    # every decoding step ran the prefix only: priced exactly as a prefix-only answer's steps
    assert torch.equal(out.decode_cost.total, half.decode_cost.total)
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + 8


def test_tokens_after_a_drop_equal_the_hf_path_with_the_same_switch(model):
    """The lean engine's answer after dropping layers mid-answer against a step-by-step reference
    through the HF-layer forward (its own per-layer caches) switching plans at the same token.
    Catches: rows leaving a layer's unit with the wrong cache rows, or a stale row group."""
    inputs = tiny_inputs(model.config, [5, 8], padding_side="left", seed=3)
    model.deadlines.configure(clock=SteppingClock(0.020))
    with torch.no_grad():
        out = model.generate(
            **inputs,
            budget=Deadline(ms=predicted(3, 8)),
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            return_dict_in_generate=True,
        )
        [(at, later)] = out.plan_changes
        step = model(**inputs, budget=[out.budget[0].item()] * 2, use_cache=True, logits_to_keep=1)
        assert torch.equal(step.plan.layers, out.plan.layers)
        mask, positions = step.attention_mask, step.position_ids
        cache = hf_compat.output_cache(step)
        suppress = model.generation_config.suppress_tokens
        tokens = []
        for produced in range(1, 9):
            logits = step.logits[:, -1].clone()
            logits[:, suppress] = float("-inf")
            logits[:, model.eos_token_ids] = float("-inf")  # min_new_tokens=8
            token = logits.argmax(-1)
            tokens.append(token)
            if produced == 8:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            plan = later if produced >= at else out.plan
            step = model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                plan=plan,
                use_cache=True,
            )
    expected = torch.stack(tokens, dim=1)
    assert out.sequences[:, inputs["input_ids"].shape[1] :].tolist() == expected.tolist()


def test_the_thread_lever_is_on_for_multithreaded_cpu(model, monkeypatch):
    """Catches: the controller left without its second lever on a CPU (where one competing process
    slows a 2-thread decode step ~10x and one thread on the free core much less)."""
    from adallava.engine.deadlines import default_thread_counts

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_thread_counts(model) == (2, 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert default_thread_counts(model) == (None,)
