"""A per-device latency model: milliseconds of one answer as a function of its plan and token counts.

Each component is measured on the device and fitted as a straight line in the tokens it sees
(`LinearCost`: ms = fixed_ms + per_token_ms * tokens):

- vision tower + projector: fixed ms per image;
- one prefix layer's prefill, and one upper unit's prefill (a whole layer for layer switches, one
  head unit's share of a layer for head switches), in the prompt tokens of all rows
  (batch * prompt_tokens);
- one prefix layer's decode step, and one upper unit's decode step, in batch * context length (the
  keys each new token attends to);
- the lm_head, in rows (logits of each row's last position only, once in prefill and once per step);
- fixed overheads: per request (tokenising, allocation, Python) and per decode step (sampling, cache
  bookkeeping).

An answer of n new tokens is one prefill (which yields the first token) and n - 1 decode steps; step
i (1 <= i < n) attends to prompt_tokens + i keys. With u upper units running:

    prefill = request + images * vision + P * prefix(B*T) + u * unit(B*T) + lm_head(B)
    decode  = sum over i of [step + P * prefix_step(B*(T+i)) + u * unit_step(B*(T+i)) + lm_head(B)]

(P prefix layers, T prompt tokens, B rows). A layer whose units are all off costs nothing; the
parts of a head-switched layer outside its units (norms, residual adds) are folded into the units.
For long answers the decode sum dominates. The model is deliberately simple: what it misses (noise,
contention, caches) the online controller's slowdown (`adallava.core.deadline_controller`) absorbs.

Profiles are keyed by everything that changes the numbers (`ProfileKey`) and saved as JSON, beside
the checkpoint or in the user cache folder `default_cache_folder()`:

    $ADALLAVA_CACHE/latency/            if ADALLAVA_CACHE is set, else
    $XDG_CACHE_HOME/adallava/latency/   if XDG_CACHE_HOME is set, else
    ~/.cache/adallava/latency/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROFILE_FORMAT = 1  # bump when the JSON layout changes; older files are then ignored


@dataclass(frozen=True)
class LinearCost:
    """ms = fixed_ms + per_token_ms * tokens; both non-negative."""

    fixed_ms: float = 0.0
    per_token_ms: float = 0.0

    def __post_init__(self):
        for name in ("fixed_ms", "per_token_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"LinearCost.{name} must be a number of ms, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LinearCost.{name} must be finite and >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    def at(self, tokens: float) -> float:
        """Milliseconds at `tokens` tokens."""
        return self.fixed_ms + self.per_token_ms * tokens


def fit_linear(samples: Iterable[tuple[float, float]]) -> LinearCost:
    """Least-squares line through (tokens, ms) samples with both coefficients >= 0.

    Needs samples at two or more distinct token counts (pass one median per token count: medians
    shrug off the odd slow call that would drag a least-squares line). The constrained optimum of a
    two-parameter least squares is the unconstrained one when that is non-negative, else the best
    of the fits on the boundary (a constant, or a line through the origin), so those are compared.
    """
    points = [(float(tokens), float(ms)) for tokens, ms in samples]
    if len({tokens for tokens, _ in points}) < 2:
        raise ValueError(
            f"fit_linear needs samples at two or more distinct token counts, got {len(points)} sample(s) "
            f"at {sorted({tokens for tokens, _ in points})}"
        )
    for tokens, ms in points:
        if not (math.isfinite(tokens) and math.isfinite(ms)) or tokens < 0 or ms < 0:
            raise ValueError(f"fit_linear samples must be finite and >= 0, got ({tokens!r}, {ms!r})")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    candidates = [(mean_y - slope * mean_x, slope)]  # unconstrained
    candidates.append((mean_y, 0.0))  # a constant (mean_y >= 0 since every ms is)
    sum_xx = sum(x * x for x, _ in points)
    candidates.append((0.0, sum(x * y for x, y in points) / sum_xx))  # through the origin
    feasible = [(a, b) for a, b in candidates if a >= 0 and b >= 0]

    def squared_error(line: tuple[float, float]) -> float:
        return sum((y - line[0] - line[1] * x) ** 2 for x, y in points)

    fixed, per_token = min(feasible, key=squared_error)
    return LinearCost(fixed_ms=fixed, per_token_ms=per_token)


def fit_constant(samples_ms: Iterable[float]) -> float:
    """A fixed cost (ms) from repeated measurements: their median (robust to the odd slow call)."""
    values = sorted(float(ms) for ms in samples_ms)
    if not values or any(not math.isfinite(ms) or ms < 0 for ms in values):
        raise ValueError(f"fit_constant needs one or more finite ms >= 0, got {values!r}")
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


@dataclass(frozen=True)
class ProfileKey:
    """Everything that changes measured times: a profile is reused only under an equal key."""

    model: str
    """Model name or content hash."""
    engine: str
    """Which code path runs it (e.g. 'hf', 'lean')."""
    device: str
    """e.g. 'cpu', 'cuda:NVIDIA H100'."""
    dtype: str
    threads: int
    """torch intra-op threads while measuring."""
    torch_version: str
    transformers_version: str
    adallava_version: str

    def file_name(self) -> str:
        """A readable, file-safe name with a digest of the whole key: '<model>-<device>-...-<hash>.json'."""
        readable = "-".join([self.model[-40:], self.engine, self.device, self.dtype, f"t{self.threads}"])
        readable = re.sub(r"[^A-Za-z0-9_.]+", "_", readable).strip("_")
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{readable}-{digest[:12]}.json"


@dataclass(frozen=True)
class LatencyProfile:
    """Fitted costs of one model on one device (see the module docstring for the formula)."""

    key: ProfileKey
    num_layers: int
    """Decoder layers in all."""
    prefix_layers: int
    """Layers that always run (P); the other num_layers - P are switchable."""
    units_per_layer: int = 1
    """Switchable units of an upper layer: 1 for layer switches, head units for head switches."""
    vision_per_image_ms: float = 0.0
    """Vision tower + projector, per image."""
    request_overhead_ms: float = 0.0
    step_overhead_ms: float = 0.0
    """Per decode step, besides the layers and lm_head."""
    prefill_prefix_layer: LinearCost = LinearCost()
    """One prefix layer's prefill, in batch * prompt tokens."""
    prefill_upper_unit: LinearCost = LinearCost()
    """One upper unit's prefill, in batch * prompt tokens."""
    decode_prefix_layer: LinearCost = LinearCost()
    """One prefix layer's decode step, in batch * context length."""
    decode_upper_unit: LinearCost = LinearCost()
    """One upper unit's decode step, in batch * context length."""
    lm_head: LinearCost = LinearCost()
    """One lm_head call, in rows (last position of each row)."""

    def __post_init__(self):
        if not 0 <= self.prefix_layers <= self.num_layers or self.num_layers < 1:
            raise ValueError(
                f"LatencyProfile needs num_layers >= 1 and 0 <= prefix_layers <= num_layers, got "
                f"num_layers={self.num_layers}, prefix_layers={self.prefix_layers}"
            )
        if self.units_per_layer < 1:
            raise ValueError(f"LatencyProfile.units_per_layer must be >= 1, got {self.units_per_layer}")
        for name in ("vision_per_image_ms", "request_overhead_ms", "step_overhead_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LatencyProfile.{name} must be finite and >= 0 ms, got {value!r}")

    @property
    def max_upper_units(self) -> int:
        """Switchable units when every upper layer runs in full."""
        return (self.num_layers - self.prefix_layers) * self.units_per_layer

    def to_dict(self) -> dict:
        return {"format": PROFILE_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyProfile:
        data = dict(data)
        if data.pop("format", None) != PROFILE_FORMAT:
            raise ValueError(f"latency profile format must be {PROFILE_FORMAT}")
        costs = {
            f.name: LinearCost(**data[f.name]) for f in dataclasses.fields(cls) if f.type == "LinearCost"
        }
        return cls(**{**data, **costs, "key": ProfileKey(**data["key"])})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LatencyProfile:
        return cls.from_dict(json.loads(text))


def default_cache_folder() -> Path:
    """Where profiles go when not beside the checkpoint: $ADALLAVA_CACHE/latency, else
    $XDG_CACHE_HOME/adallava/latency, else ~/.cache/adallava/latency."""
    if os.environ.get("ADALLAVA_CACHE"):
        return Path(os.environ["ADALLAVA_CACHE"]) / "latency"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "adallava" / "latency"
    return Path.home() / ".cache" / "adallava" / "latency"


def profile_path(key: ProfileKey, folder: str | Path | None = None) -> Path:
    """The file of `key`'s profile in `folder` (default: `default_cache_folder()`)."""
    return Path(folder if folder is not None else default_cache_folder()) / key.file_name()


def save_profile(profile: LatencyProfile, folder: str | Path | None = None) -> Path:
    """Write `profile` as JSON to `profile_path(profile.key, folder)` (atomically) and return the path."""
    path = profile_path(profile.key, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    partial.write_text(profile.to_json())
    partial.replace(path)
    return path


def load_profile(key: ProfileKey, folder: str | Path | None = None) -> LatencyProfile | None:
    """The saved profile of exactly `key`, or None when there is none (or only one of an older
    format, or a file whose key differs: then a fresh calibration is due)."""
    path = profile_path(key, folder)
    if not path.is_file():
        return None
    try:
        profile = LatencyProfile.from_json(path.read_text())
    except (ValueError, KeyError, TypeError):
        return None
    return profile if profile.key == key else None


@dataclass(frozen=True)
class PredictedTime:
    """Predicted ms of one call (all rows together)."""

    prefill_ms: float
    """Up to the first token: request overhead, vision, the prompt through the layers, lm_head."""
    decode_ms: float
    """The other max_new_tokens - 1 tokens."""

    @property
    def total_ms(self) -> float:
        return self.prefill_ms + self.decode_ms


def upper_units_of(plan: int | Sequence[int], profile: LatencyProfile) -> int:
    """Upper units a plan runs: an int as is, or the sum of units run by each upper layer (a list of
    num_layers - prefix_layers counts in [0, units_per_layer]; for layer switches 0 or 1 each)."""
    if isinstance(plan, bool):
        raise ValueError(f"plan must be a unit count or a list of per-layer unit counts, got {plan!r}")
    if isinstance(plan, int):
        units = plan
    else:
        counts = list(plan)
        upper_layers = profile.num_layers - profile.prefix_layers
        if len(counts) != upper_layers or any(not 0 <= c <= profile.units_per_layer for c in counts):
            raise ValueError(
                f"plan must list {upper_layers} upper layers' unit counts, each in "
                f"[0, {profile.units_per_layer}], got {counts}"
            )
        units = sum(counts)
    if not 0 <= units <= profile.max_upper_units:
        raise ValueError(f"plan runs {units} upper units; allowed: 0 to {profile.max_upper_units}")
    return units


def decode_steps_ms(
    profile: LatencyProfile, upper_units: int, prompt_tokens: int, first_step: int, end_step: int, batch: int
) -> float:
    """Predicted ms of decode steps first_step <= i < end_step, step i attending to prompt_tokens + i
    keys in each of `batch` rows. Closed form: every cost is linear in the context."""
    steps = max(0, end_step - first_step)
    if steps == 0:
        return 0.0
    context_sum = steps * prompt_tokens + (first_step + end_step - 1) * steps / 2  # sum of T + i
    prefix, unit = profile.decode_prefix_layer, profile.decode_upper_unit
    per_step_fixed = (
        profile.step_overhead_ms
        + profile.prefix_layers * prefix.fixed_ms
        + upper_units * unit.fixed_ms
        + profile.lm_head.at(batch)
    )
    per_context = batch * (profile.prefix_layers * prefix.per_token_ms + upper_units * unit.per_token_ms)
    return steps * per_step_fixed + per_context * context_sum


def _check_request(prompt_tokens: int, max_new_tokens: int, batch: int, images: int) -> None:
    if prompt_tokens < 1 or max_new_tokens < 1 or batch < 1 or images < 0:
        raise ValueError(
            "need prompt_tokens >= 1, max_new_tokens >= 1, batch >= 1 and images >= 0, got "
            f"prompt_tokens={prompt_tokens}, max_new_tokens={max_new_tokens}, batch={batch}, images={images}"
        )


def predict_ms(
    profile: LatencyProfile,
    plan: int | Sequence[int],
    prompt_tokens: int,
    max_new_tokens: int,
    batch: int = 1,
    images: int = 0,
) -> PredictedTime:
    """Predicted time of one call running `plan` (upper units, or per-upper-layer unit counts).

    prompt_tokens: sequence length per row after visual tokens are spliced in; images: images in the
    whole batch (vision runs once per image)."""
    _check_request(prompt_tokens, max_new_tokens, batch, images)
    units = upper_units_of(plan, profile)
    tokens = batch * prompt_tokens
    prefill = (
        profile.request_overhead_ms
        + images * profile.vision_per_image_ms
        + profile.prefix_layers * profile.prefill_prefix_layer.at(tokens)
        + units * profile.prefill_upper_unit.at(tokens)
        + profile.lm_head.at(batch)
    )
    decode = decode_steps_ms(profile, units, prompt_tokens, 1, max_new_tokens, batch)
    return PredictedTime(prefill_ms=prefill, decode_ms=decode)


def remaining_ms_by_units(
    profile: LatencyProfile, prompt_tokens: int, tokens_done: int, max_new_tokens: int, batch: int = 1
) -> list[float]:
    """Predicted ms of the rest of an answer after `tokens_done` of `max_new_tokens` tokens, for each
    upper-unit count 0..max_upper_units (index = units): the input of the mid-generation rule."""
    _check_request(prompt_tokens, max_new_tokens, batch, 0)
    if not 1 <= tokens_done <= max_new_tokens:
        raise ValueError(f"tokens_done must be in [1, max_new_tokens={max_new_tokens}], got {tokens_done}")
    return [
        decode_steps_ms(profile, units, prompt_tokens, tokens_done, max_new_tokens, batch)
        for units in range(profile.max_upper_units + 1)
    ]


@dataclass(frozen=True)
class DeadlineFit:
    """The plan for a deadline: `units` upper units, or None when even the prefix alone is too slow."""

    units: int | None
    """Upper units to run (the largest that fits, in the scheduler's order); None: infeasible."""
    predicted_ms: float
    """Predicted ms of that plan, times slowdown (of the smallest plan when infeasible)."""
    minimum_ms: float
    """Predicted ms of the smallest plan (prefix only), times slowdown."""
    slowdown: float

    @property
    def feasible(self) -> bool:
        return self.units is not None


def largest_fitting_units(
    profile: LatencyProfile,
    deadline_ms: float,
    slowdown: float,
    prompt_tokens: int,
    max_new_tokens: int,
    batch: int = 1,
    images: int = 0,
) -> DeadlineFit:
    """The most upper units whose predicted time times `slowdown` is within `deadline_ms` (what is
    left of the deadline: subtract queue wait first). Infeasible (units None) when the prefix-only
    plan does not fit either; its predicted time is then `minimum_ms`."""
    if not math.isfinite(slowdown) or slowdown <= 0:
        raise ValueError(f"slowdown must be a positive, finite factor, got {slowdown!r}")

    def scaled(units: int) -> float:
        return slowdown * predict_ms(profile, units, prompt_tokens, max_new_tokens, batch, images).total_ms

    minimum = scaled(0)
    # Time grows with units (every cost is >= 0), so the first fit from the top is the largest.
    for units in range(profile.max_upper_units, -1, -1):
        time = scaled(units)
        if time <= deadline_ms:
            return DeadlineFit(units=units, predicted_ms=time, minimum_ms=minimum, slowdown=slowdown)
    return DeadlineFit(units=None, predicted_ms=minimum, minimum_ms=minimum, slowdown=slowdown)


def fraction_for_units(profile: LatencyProfile, upper_units: int) -> float:
    """The budget fraction that buys exactly `upper_units` under the paper's rule
    n = floor(Nu * l) - Pu (core/budget.py): l = (Pu + n) / Nu, with Nu and Pu counted in units."""
    units = upper_units_of(upper_units, profile)
    per_layer = profile.units_per_layer
    return (profile.prefix_layers * per_layer + units) / (profile.num_layers * per_layer)
