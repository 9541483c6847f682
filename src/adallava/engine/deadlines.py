"""Deadlines in milliseconds: a latency profile of the model on this device, and the controller that
turns a deadline into a plan and keeps it while the machine's speed changes.

`calibrate` measures the lean engine's components (vision tower, one decoder layer's prefill against
prompt tokens and decoding step against context length, the LM head, the fixed per-request and
per-step overheads) and fits the latency model of `adallava.core.latency_model`. `DeadlineKeeper`
(one per model, `model.deadlines`) loads a saved profile for this model, engine, device, dtype,
threads and library versions, or calibrates quickly on first use; plans each deadline request with
the online controller (`adallava.core.deadline_controller`), which scales predictions by the slowdown
measured on recent requests; and records what each request really took.

A batch shares its time: every deadline row of a batch gets the plan that fits the batch's tightest
deadline (rows with fraction or FLOPs budgets keep theirs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adallava.core.deadline import Deadline, as_deadline, is_deadline_text
from adallava.core.deadline_controller import DeadlineController, DeadlinePlan, units_after_falling_behind
from adallava.core.latency_model import (
    LatencyProfile,
    ProfileKey,
    fit_constant,
    fit_linear,
    fraction_for_units,
    load_profile,
    predict_ms,
    remaining_ms_by_units,
)
from adallava.engine import hf_compat
from adallava.engine.lean.functional import decoder_layer, rms_norm


class DeadlineInfeasible(ValueError):
    """Even the smallest plan is predicted to miss the deadline."""

    def __init__(self, deadline_ms: float, minimum_ms: float, slowdown: float):
        self.deadline_ms, self.minimum_ms, self.slowdown = deadline_ms, minimum_ms, slowdown
        super().__init__(
            f"deadline {deadline_ms:g} ms cannot be met: the smallest plan (prefix layers only) is predicted "
            f"to take {minimum_ms:.1f} ms on this machine even when idle; give a deadline of at least "
            f"{minimum_ms:.0f} ms, or ask for best effort to run the smallest plan anyway (generate's "
            'deadline_best_effort=True, `adallava ask --best-effort`, the server\'s "best_effort": true)'
        )


@dataclass(frozen=True)
class DeadlineReport:
    """What a deadline request was planned at and what it took (the whole batch's call)."""

    deadline_ms: float  # the batch's tightest deadline
    predicted_ms: float  # slowdown x the latency model's prediction for the plan that ran
    measured_ms: float  # wall-clock of the call, queue wait included
    waited_ms: float  # time before the call (the server's queue)
    met: bool
    slowdown: float
    upper_units: int
    fraction: float  # the budget fraction the deadline rows ran at
    threads: int | None
    best_effort: bool = False
    dropped: tuple = ()  # ((k, upper units kept after the k-th token), ...): fell behind mid-answer

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def budget_values(budget, batch: int) -> list:
    """A budget given once or per row (a list or tuple), as one value per row."""
    values = list(budget) if isinstance(budget, (list, tuple)) else [budget]
    return values * batch if len(values) == 1 else values


def deadline_rows(budget, batch: int) -> list[Deadline | None] | None:
    """Per row, its deadline (a `Deadline` or text such as '300ms'), or None where the row has a
    fraction or FLOPs budget; None when no row has a deadline."""
    if budget is None or isinstance(budget, torch.Tensor):
        return None
    values = budget_values(budget, batch)
    rows = [
        as_deadline(v) if isinstance(v, Deadline) or (isinstance(v, str) and is_deadline_text(v)) else None
        for v in values
    ]
    return rows if any(r is not None for r in rows) else None


class DeadlineKeeper:
    """The latency profile and online controller of one model (see the module docstring)."""

    def __init__(
        self,
        model,
        profile: LatencyProfile | None = None,
        clock: Callable[[], float] = time.monotonic,
        thread_counts=None,
        learn: bool = True,
        **controller_options,
    ):
        self.model = model
        self.clock = clock
        self.learn = learn  # False: plan from the profile alone (slowdown 1), a baseline
        self._profile = profile
        # Trying the other thread count is a risk under contention (a 2-thread step with one core busy
        # has tails of 10x): every 100 requests, not 25, still finds an idle machine again within
        # seconds on a busy server.
        self._options = {"thread_counts": thread_counts, "explore_every": 100, **controller_options}
        self._controller: DeadlineController | None = None

    @property
    def profile(self) -> LatencyProfile:
        """The profile in use: given, saved for this key (`adallava profile`), or measured now quickly
        (a fraction of a second on the bundled model; kept for this process only, not saved: a quick
        measurement on a busy machine should not become the model's profile)."""
        if self._profile is None:
            saved = load_profile(profile_key(self.model))
            if saved is not None:
                _warm_up(self.model)  # the process's first calls are slow: not a deadline request's time
            self._profile = saved or calibrate(self.model, quick=True)
        return self._profile

    @property
    def controller(self) -> DeadlineController:
        if self._controller is None:
            options = dict(self._options)
            if options["thread_counts"] is None:
                options["thread_counts"] = default_thread_counts(self.model)
            self._controller = DeadlineController(self.profile, clock=self.clock, **options)
        return self._controller

    def configure(
        self,
        profile: LatencyProfile | None = None,
        clock: Callable[[], float] | None = None,
        learn: bool | None = None,
        **controller_options,
    ) -> None:
        """Use another profile, clock (tests) and/or controller settings (thread_counts, window,
        quantile, half_life_s, ...); `learn=False` keeps the slowdown at 1 (the profile alone, no
        online control: a baseline). Forgets what the controller learned."""
        if learn is not None:
            self.learn = learn
        if profile is not None:
            self._profile = profile
        if clock is not None:
            self.clock = clock
        self._options.update(controller_options)
        self._controller = None

    def plan(
        self,
        deadlines: list[Deadline | None],
        prompt_tokens: int,
        max_new_tokens: int,
        batch: int,
        images: int,
        waited_ms: float,
        best_effort: bool,
    ) -> tuple[DeadlinePlan, float, float]:
        """(plan, fraction for the deadline rows, tightest deadline ms). Raises DeadlineInfeasible when
        even the smallest plan misses the deadline *on an idle machine* (slowdown 1), unless best
        effort was asked for. A deadline that only the current slowdown puts out of reach runs the
        smallest plan instead of being refused: refusing would also stop the controller from seeing
        that the contention has ended (a refused request measures nothing)."""
        tightest = min(d.ms for d in deadlines if d is not None)
        plan = self.controller.plan(tightest, prompt_tokens, max_new_tokens, batch, images, waited_ms)
        if not plan.feasible:
            idle_minimum = plan.minimum_ms / plan.slowdown
            if idle_minimum > plan.budget_ms and not best_effort:
                raise DeadlineInfeasible(tightest, idle_minimum + waited_ms, 1.0)
            plan = DeadlinePlan(
                0,
                plan.threads,
                plan.slowdown,
                plan.minimum_ms,
                plan.minimum_ms,
                plan.budget_ms,
                plan.exploring,
            )
        return plan, fraction_for_units(self.profile, plan.units), tightest

    def record(
        self,
        plan: DeadlinePlan,
        measured_ms: float,
        prompt_tokens: int,
        tokens: int,
        batch: int,
        images: int,
        dropped: tuple = (),
    ) -> None:
        """Learn from a finished call: its run time (queue wait excluded) against the unscaled
        prediction for what ran (its plan, the tokens it made, and the upper units it dropped to
        after falling behind, `dropped`: ((k, units), ...))."""
        tokens = max(1, tokens)
        units, done = plan.units, 1
        predicted = predict_ms(self.profile, units, prompt_tokens, 1, batch, images).total_ms  # to token 1
        for k, later in (*dropped, (tokens, None)):
            k = min(k, tokens)
            predicted += (
                remaining_ms_by_units(self.profile, prompt_tokens, done, k, batch)[units] if k > done else 0
            )
            done, units = k, later if later is not None else units
        if self.learn and predicted > 0 and measured_ms > 0:
            self.controller.record(plan, measured_ms, predicted)

    def monitor(
        self, plan: DeadlinePlan, prompt_tokens: int, max_new_tokens: int, batch: int
    ) -> DeadlineMonitor:
        """A `DeadlineMonitor` for a call about to run `plan` (its clock starts now)."""
        return DeadlineMonitor(self.profile, plan, prompt_tokens, max_new_tokens, batch, self.clock)


class DeadlineMonitor:
    """Watches one call token by token: when the rest of the answer at its current upper units is
    predicted (times the worse of the controller's slowdown and the call's own measured pace so far) to
    end after the deadline, says how many upper units to keep for the remaining tokens
    (`core.deadline_controller.units_after_falling_behind`: fewer, never more). Layer switches: a unit
    is a layer. `dropped` records ((k, units), ...)."""

    def __init__(self, profile: LatencyProfile, plan: DeadlinePlan, prompt_tokens: int, max_new_tokens: int,
                 batch: int, clock: Callable[[], float]):  # fmt: skip
        self.profile, self.clock = profile, clock
        self.units, self.slowdown, self.budget_ms = plan.units, plan.slowdown, plan.budget_ms
        self.prompt_tokens, self.max_new_tokens, self.batch = prompt_tokens, max_new_tokens, batch
        self.started = clock()
        self.dropped: list[tuple[int, int]] = []
        self._predicted_done = predict_ms(profile, plan.units, prompt_tokens, 1, batch).total_ms  # to token 1
        self._done = 1

    def __call__(self, tokens_done: int) -> int | None:
        """Upper units to keep after `tokens_done` tokens, or None to go on as planned."""
        if tokens_done >= self.max_new_tokens or self.units == 0:
            return None
        remaining = remaining_ms_by_units(self.profile, self.prompt_tokens, tokens_done, self.max_new_tokens,
                                          self.batch)  # fmt: skip
        if tokens_done > self._done:  # the prediction for what has run so far
            steps = remaining_ms_by_units(
                self.profile, self.prompt_tokens, self._done, tokens_done, self.batch
            )
            self._predicted_done += steps[self.units]
            self._done = tokens_done
        elapsed = (self.clock() - self.started) * 1e3
        pace = elapsed / self._predicted_done if self._predicted_done > 0 else 1.0
        keep = units_after_falling_behind(
            elapsed, self.budget_ms, self.units, remaining, max(self.slowdown, pace)
        )
        if keep >= self.units:
            return None
        self.units = keep
        self.dropped.append((tokens_done, keep))
        return keep


def default_thread_counts(model) -> tuple:
    """The thread counts the controller chooses between: on a CPU running several torch threads, the
    current count and 1 (one busy core makes every multi-threaded op wait for the thread that shares
    it: measured here, a 2-thread decode step under one competing process ran up to 10x slower, one
    thread on the free core far less: docs/deadlines.md); elsewhere the thread count is left alone."""
    threads = torch.get_num_threads()
    if next(model.parameters()).device.type == "cpu" and threads > 1:
        return (threads, 1)
    return (None,)


def profile_key(model) -> ProfileKey:
    """What the measured times depend on: the model, engine, device, dtype, threads, versions."""
    import transformers

    from adallava import __version__

    parameter = next(model.parameters())
    device = parameter.device
    name = str(getattr(model, "name_or_path", "") or "") or f"unnamed-{type(model).__name__}"
    device_name = f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type
    return ProfileKey(
        model=name,
        engine="lean",
        device=device_name,
        dtype=str(parameter.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        adallava_version=__version__,
    )


def _idle_ms(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls: the profile describes an idle machine (what contention
    adds is the controller's slowdown), and the fastest call is the least disturbed by other work."""
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return min(samples)


@torch.no_grad()
def calibrate(
    model, quick: bool = False, token_counts: tuple[int, ...] | None = None, progress=None
) -> LatencyProfile:
    """Measure the model's components on its device and fit a `LatencyProfile`. quick: fewer
    repeats and token counts (about a second on the bundled model), for a first deadline request.
    `progress(step, total)` is called as components are measured."""
    repeats = 5 if quick else 20
    counts = token_counts or ((16, 64) if quick else (16, 32, 64, 128))
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    _warm_up(model)
    text = model.text_model
    engine = model.lean_engine
    weights = engine.weights.get(text.layers[model.num_prefix])
    hidden_size = model.text_config.hidden_size
    cos_table, sin_table = engine.rotary_tables(text, max(counts) * 2 + 2, dtype, device)
    kv_heads, head_dim = weights.num_kv_heads, weights.head_dim
    total_steps = 2 * len(counts) + 3
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps)

    prefill, decode = [], []
    for tokens in counts:
        hidden = torch.randn(1, tokens, hidden_size, device=device, dtype=dtype)
        keys = torch.zeros(1, kv_heads, 2 * max(counts) + 2, head_dim, device=device, dtype=dtype)
        tables = (cos_table[:tokens][None, None], sin_table[:tokens][None, None])
        prefill.append((tokens, _layer_ms(weights, hidden, tables, keys, 0, repeats)))
        tick()
        tables = (cos_table[tokens : tokens + 1][None, None], sin_table[tokens : tokens + 1][None, None])
        decode.append((tokens + 1, _layer_ms(weights, hidden[:, :1], tables, keys, tokens, repeats)))
        tick()
    layer_prefill, layer_decode = fit_linear(prefill), fit_linear(decode)
    head_samples = [(rows, _head_ms(model, rows, repeats)) for rows in (1, 4)]
    lm_head = fit_linear(head_samples)
    tick()
    vision = _vision_ms(model, repeats)
    tick()
    units_per_layer = model.total_units // model.num_layers
    profile = LatencyProfile(
        key=profile_key(model),
        num_layers=model.num_layers,
        prefix_layers=model.num_prefix,
        units_per_layer=units_per_layer,
        vision_per_image_ms=vision,
        prefill_prefix_layer=layer_prefill,
        prefill_upper_unit=_per_unit(layer_prefill, units_per_layer),
        decode_prefix_layer=layer_decode,
        decode_upper_unit=_per_unit(layer_decode, units_per_layer),
        lm_head=lm_head,
    )
    request, step = _overheads(model, profile, repeats)  # warmed up by the component timings above
    tick()
    return LatencyProfile(**{**profile.__dict__, "request_overhead_ms": request, "step_overhead_ms": step})


def _layer_ms(weights, hidden, tables, keys, start: int, repeats: int) -> float:
    """One decoder layer on hidden [1, T, D] writing keys at `start` (values share the buffer shape)."""
    values = torch.zeros_like(keys)
    return _idle_ms(lambda: decoder_layer(weights, hidden, *tables, keys, values, start, None, True), repeats)


def _head_ms(model, rows: int, repeats: int) -> float:
    """The final norm and LM head on `rows` last positions."""
    norm, head = model.text_model.norm, model.base.lm_head
    last = torch.randn(rows, model.text_config.hidden_size, device=model.device, dtype=model.dtype)
    normed = lambda: rms_norm(last, norm.weight, norm.variance_epsilon)  # noqa: E731
    return _idle_ms(lambda: torch.nn.functional.linear(normed(), head.weight, head.bias), repeats)


def _vision_ms(model, repeats: int) -> float:
    """Vision tower + projector on one image (0 for a text-only model)."""
    vision_config = getattr(model.config, "vision_config", None)
    if vision_config is None:
        return 0.0
    size = vision_config.image_size
    pixels = torch.randn(1, 3, size, size, device=model.device, dtype=model.dtype)
    return fit_constant(
        [_idle_ms(lambda: hf_compat.image_features(model.base.model, pixels), 1) for _ in range(repeats)]
    )


def _per_unit(cost, units_per_layer: int):
    return type(cost)(cost.fixed_ms / units_per_layer, cost.per_token_ms / units_per_layer)


def _warm_up(model) -> None:
    """Two whole generate calls first: a process's first calls pay one-off costs (kernel selection,
    allocations, lazily built tables) that would otherwise be read as the model's speed."""
    ids = torch.full((1, 24), 5, dtype=torch.long, device=model.device)
    for _ in range(2):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                       do_sample=False, engine="lean")  # fmt: skip
    if getattr(model.config, "vision_config", None) is not None:
        _vision_ms(model, 2)


def _overheads(model, profile: LatencyProfile, repeats: int) -> tuple[float, float]:
    """Per-request and per-step time of whole generate calls beyond the fitted components (>= 0)."""
    vocab = model.text_config.vocab_size
    ids = torch.randint(5, vocab, (1, 24), generator=torch.Generator().manual_seed(0)).to(model.device)
    full = profile.max_upper_units

    def run(new_tokens: int) -> float:
        return _idle_ms(
            lambda: model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                plan=None,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                engine="lean",
            ),  # noqa: E501
            repeats,
        )

    one, eight = run(1), run(8)
    predicted_one = predict_ms(profile, full, ids.shape[1], 1).total_ms
    predicted_eight = predict_ms(profile, full, ids.shape[1], 8).total_ms
    step = max(0.0, ((eight - one) - (predicted_eight - predicted_one)) / 7)
    request = max(0.0, one - predicted_one)
    return request, step
