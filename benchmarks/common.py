"""Shared helpers for benchmarks: timing, machine description, JSON output. Benchmarks never gate CI."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def time_call(fn, repeats: int, warmup: int = 1) -> dict:
    """Median and spread of `fn()` wall-clock time in ms (synchronising CUDA when present)."""
    return time_interleaved({"call": fn}, repeats, warmup)["call"]


def time_interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time several callables round-robin, so slow drifts of a shared machine hit all of them alike.
    Returns {name: {median_ms, min_ms, max_ms, n}}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {"median_ms": statistics.median(s), "min_ms": min(s), "max_ms": max(s), "n": repeats}
        for name, s in samples.items()
    }


def write_json(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def add_timing_args(parser, repeats: int = 30, unit: str = "call") -> None:
    """The flags every timing benchmark takes: --repeats, --warmup, --quick, --threads, --out."""
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=2, help=f"untimed {unit}s of each path first")
    parser.add_argument("--quick", action="store_true", help=f"3 repeats, 1 warm-up {unit}: a smoke run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")


def apply_timing_args(args) -> None:
    """--quick's repeats and warm-up, and --threads' torch thread count."""
    if args.quick:
        args.repeats, args.warmup = 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
