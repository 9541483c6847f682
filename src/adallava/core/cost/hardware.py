"""Hardware presets and a roofline time estimate, in the spirit of LLM-Viewer (Yuan et al. 2024).

Figures are public datasheet numbers: peak *dense* tensor-core FLOP/s (no 2:4 sparsity) and HBM
bandwidth of the SXM parts. A roofline estimate is a lower bound on real latency: every operator
group runs at the slower of its compute time and its memory time, and nothing else costs anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from adallava.core.cost.flops import Cost

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class Hardware:
    """Peak dense FLOP/s per dtype (None: not supported) and memory bandwidth in bytes/s."""

    name: str
    fp16_flops: float | None
    bf16_flops: float | None
    fp32_flops: float | None
    bandwidth: float
    description: str = ""

    def __post_init__(self):
        for field in ("fp16_flops", "bf16_flops", "fp32_flops", "bandwidth"):
            value = getattr(self, field)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"Hardware.{field} must be a positive, finite number, got {value!r}")

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for `dtype` ("fp16", "bf16" or "fp32")."""
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
        value = getattr(self, f"{dtype}_flops")
        if value is None:
            raise ValueError(
                f"hardware {self.name!r} has no {dtype} peak (not supported); pick another dtype"
            )
        return value

    def with_overrides(self, peak_flops: float | None = None, bandwidth: float | None = None) -> Hardware:
        """A copy with every dtype's peak set to `peak_flops` and/or a new `bandwidth` (bytes/s)."""
        changes: dict = {}
        if peak_flops is not None:
            changes.update(fp16_flops=peak_flops, bf16_flops=peak_flops, fp32_flops=peak_flops)
        if bandwidth is not None:
            changes["bandwidth"] = bandwidth
        if changes:
            changes["description"] = f"{self.description} (overridden)".strip()
        return replace(self, **changes)


_T = 1e12
_GBS = 1e9
# Sources: NVIDIA V100, A100, H100 and H200 datasheets (SXM form factor).
PRESETS: dict[str, Hardware] = {
    "v100": Hardware("v100", 125 * _T, None, 15.7 * _T, 900 * _GBS, "NVIDIA V100 SXM2 32GB"),
    "a100-40gb": Hardware("a100-40gb", 312 * _T, 312 * _T, 19.5 * _T, 1555 * _GBS, "NVIDIA A100 SXM 40GB"),
    "a100-80gb": Hardware("a100-80gb", 312 * _T, 312 * _T, 19.5 * _T, 2039 * _GBS, "NVIDIA A100 SXM 80GB"),
    "h100-sxm": Hardware("h100-sxm", 989 * _T, 989 * _T, 67 * _T, 3350 * _GBS, "NVIDIA H100 SXM 80GB"),
    "h200": Hardware("h200", 989 * _T, 989 * _T, 67 * _T, 4800 * _GBS, "NVIDIA H200 SXM 141GB"),
    # A placeholder server CPU (a few TFLOP/s with wide SIMD, ~100 GB/s of DRAM bandwidth); describe
    # your own with `with_overrides` / `adallava flops --peak-flops ... --bandwidth ...`.
    "cpu": Hardware("cpu", 1 * _T, 1 * _T, 1 * _T, 100 * _GBS, "generic CPU (override peak and bandwidth)"),
}
ALIASES = {"a100": "a100-80gb", "h100": "h100-sxm", "h200-sxm": "h200", "v100-sxm2": "v100"}


def get_hardware(name: str, peak_flops: float | None = None, bandwidth: float | None = None) -> Hardware:
    """A preset by name (case-insensitive; aliases such as "a100" allowed), optionally overridden."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise ValueError(f"unknown hardware {name!r}; choose one of {sorted(PRESETS) + sorted(ALIASES)}")
    return PRESETS[key].with_overrides(peak_flops, bandwidth)


def roofline_time(cost: Cost, hardware: Hardware, dtype: str = "fp16") -> float:
    """Estimated seconds for one phase: sum over operator groups of max(FLOPs / peak, bytes / bandwidth).

    `cost` must have been computed with `dtype_bytes` matching `dtype` (2 for fp16/bf16, 4 for fp32).
    """
    peak = hardware.peak(dtype)
    if cost.dtype_bytes != DTYPE_BYTES[dtype]:
        raise ValueError(
            f"cost was computed with dtype_bytes={cost.dtype_bytes:g} but dtype {dtype!r} moves "
            f"{DTYPE_BYTES[dtype]} bytes per element; "
            f"recompute the cost with dtype_bytes={DTYPE_BYTES[dtype]}"
        )
    if not cost.parts:
        return max(cost.total / peak, cost.bytes.total / hardware.bandwidth)
    return sum(max(part.flops / peak, part.bytes.total / hardware.bandwidth) for part in cost.parts)
