"""EvalArgs: every setting of `adallava eval`, typed, validated, documented once.

The docstring under each field is its CLI help (`adallava eval --help`), and a `Literal[...]`
annotation its choices; `adallava.cli.flags` makes the flags. `evaluate(EvalArgs(...))` in
`adallava.eval.runner` is the same run from Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from adallava.core import settings
from adallava.core.config import TOKEN_SELECTIONS
from adallava.data.benchmarks import BENCHMARKS, READERS  # noqa: F401  (re-exported for eval)
from adallava.eval.protocols import PROTOCOLS

METHODS = ("adaptive", "early-exit", "random", "static", "full")
DTYPES = ("float32", "bfloat16", "float16")
PROMPT_FORMATS = ("auto", "chat_template", "llava_v1")
DEFAULT_BUDGETS = (0.5, 0.6, 0.75, 0.85, 1.0)


@dataclass(frozen=True)
class EvalArgs:
    """Settings of one evaluation: benchmarks x methods x budgets of one model."""

    data: str
    """A generated test world (a folder with manifest.json), or a JSON file with the same 'benchmarks'
    entries for real data (see docs/evaluation.md)."""
    out: str
    """Output folder: results.json, results.csv, predictions/ (and static_plans.json)."""
    model: str = "tiny-adallava-l"
    """Model folder or bundled name (default: the bundled AdaLLaVA-L): an adallava checkpoint (with
    adaptive_config.json), or a plain HF Llava folder (then only the explicit-plan methods early-exit,
    random, static and full apply). The processor is loaded from the same folder."""
    benchmarks: tuple[Literal[BENCHMARKS], ...] = ()
    """Benchmarks to evaluate, comma-separated (default: every benchmark of the data)."""
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    """Budgets, comma-separated fractions of the full decoder-stack prefill FLOPs, each in (0, 1]."""
    methods: tuple[Literal[METHODS], ...] = ("adaptive",)
    """Plan providers, comma-separated: adaptive, early-exit, random, static, full."""
    batch_size: int = 8
    """Questions per generate call (left padding; results do not depend on it)."""
    limit: int | None = None
    """Evaluate only the first N questions of each benchmark (MME: rounded up to whole image pairs;
    MMBench: N questions, each with its circular copies and rotations)."""
    max_new_tokens: int | None = None
    """Tokens to generate per answer (default: the model's generation config, else 128 as LLaVA's eval)."""
    seed: int = 0
    """Seed of the random method's plans (each question's plan depends only on the seed, the benchmark and
    the question)."""
    protocol: Literal[PROTOCOLS] = "llava"
    """Scoring protocol: llava (LLaVA-1.5's scripts, MMBench with all option rotations) or lmms-eval."""
    validation: str | None = None
    """Static method: the data (world folder or benchmarks JSON) its plans are chosen on, e.g. a test world
    generated with another seed. Required for --methods static."""
    validation_limit: int | None = None
    """Static method: use only the first N validation questions of each benchmark."""
    prompt_format: Literal[PROMPT_FORMATS] = "auto"
    """'auto' (the processor's chat template, else llava_v1), 'chat_template' or 'llava_v1'
    (`USER: <image>\\n{prompt} ASSISTANT:`)."""
    pad_to_square: bool = False
    """Pad images to a square with the mean colour first (LLaVA-1.5: image_aspect_ratio pad)."""
    token_selection: Literal[TOKEN_SELECTIONS] | None = None
    """Override the model's visual token selection: none, prumerge, prumerge+ or prumerge+offset (default:
    the model's)."""
    device: str | None = None
    """Torch device (default: the accelerate process's device: cuda if available, else cpu)."""
    dtype: Literal[DTYPES] = "float32"
    """Model weights dtype: float32, bfloat16 or float16."""
    threads: int | None = None
    """CPU threads for torch (default: torch's choice). On a busy CPU, 1 is several times faster for tiny
    models."""
    measure_ttft: bool = True
    """Time a prefill-only call per batch for time to first token (costs one extra prefill per batch)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise ValueError(f"{flag(name)} is required")
        settings.check_choices(self)  # every Literal field: benchmarks, methods, protocol, dtype, ...
        if not self.methods:
            raise ValueError(f"{flag('methods')} needs at least one of {', '.join(METHODS)}")
        if not self.budgets:
            raise ValueError(f"{flag('budgets')} needs at least one budget")
        for budget in self.budgets:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)):
                raise ValueError(f"{flag('budgets')} must be numbers; got {budget!r}")
            if not (math.isfinite(budget) and 0 < budget <= 1):
                raise ValueError(f"{flag('budgets')} must lie in (0, 1]; got {budget!r}")
        for name in ("benchmarks", "budgets", "methods"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{flag(name)} lists a value twice: {values}")
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))
        _check(self, "batch_size", self.batch_size >= 1, "must be >= 1")
        _check(self, "limit", self.limit is None or self.limit >= 1, "must be >= 1")
        _check(
            self,
            "validation_limit",
            self.validation_limit is None or self.validation_limit >= 1,
            "must be >= 1",
        )
        _check(
            self, "max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, "must be >= 1"
        )
        _check(self, "seed", self.seed >= 0, "must be >= 0")
        _check(self, "threads", self.threads is None or self.threads >= 1, "must be >= 1")
        if "static" in self.methods and not self.validation:
            raise ValueError(
                "--methods static chooses its plans on validation data: give --validation, e.g. a test world "
                "generated with another seed (adallava world generate --split test --seed 1 --out world/val)"
            )


flag = settings.flag


def _check(args: EvalArgs, name: str, ok: bool, requirement: str) -> None:
    settings.check(args, name, ok, requirement)
