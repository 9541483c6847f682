"""The static method's search for `adallava eval`: per benchmark and per number of upper layers the
budgets buy, the fixed set of upper layers that scores best on validation data (`methods.search_static`
decides which sets to try), cached in DIR/static_plans.json while the settings match."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adallava.eval.args import EvalArgs
from adallava.eval.benchmarks import benchmark_items, load_benchmarks
from adallava.eval.engine import Engine
from adallava.eval.methods import Depth, StaticChoice, plan_with_upper, search_static, upper_layers_for
from adallava.eval.results import predictions_of, score
from adallava.io.hub import resolve_model

STATIC_PLANS = "static_plans.json"


def choose_static_plans(
    engine: Engine, args: EvalArgs, names: Sequence[str], depth: Depth, out: Path
) -> dict[str, dict[int, StaticChoice]]:
    """Per benchmark and per number k of upper layers the budgets buy, the best fixed set of k upper layers
    on the validation data. Cached in out/static_plans.json, reused while the settings match."""
    ks = sorted({upper_layers_for(depth, budget) for budget in args.budgets})
    meta = _settings(engine, args)
    path = out / STATIC_PLANS
    cached = _cached(path, meta)
    needed = [name for name in names if any(k not in cached.get(name, {}) for k in ks)]
    if not needed:
        return cached
    for benchmark in load_benchmarks(args.validation, needed, args.validation_limit):
        items = benchmark_items(benchmark, args.protocol)
        have = cached.setdefault(benchmark.name, {})

        def evaluate(upper: tuple[int, ...], benchmark=benchmark, items=items) -> float:
            provider = _Fixed(depth, upper)
            desc = f"static {benchmark.name} layers {','.join(map(str, upper))}"
            answers, _ = engine.answer(benchmark.name, items, provider, 1.0, desc, leave=False)
            return score(benchmark, predictions_of(benchmark.name, items, answers), args.protocol).score

        have.update(search_static(depth, [k for k in ks if k not in have], evaluate))
    if engine.state is None or engine.state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        stored = {
            "settings": meta,
            "benchmarks": {
                name: {str(k): c.to_dict() for k, c in sorted(choices.items())}
                for name, choices in cached.items()
            },
        }
        path.write_text(json.dumps(stored, indent=1) + "\n", encoding="utf-8")
    return cached


def _settings(engine: Engine, args: EvalArgs) -> dict:
    """What a cached choice depends on."""
    return {
        "model": str(resolve_model(args.model).resolve()),
        "validation": str(Path(args.validation).resolve()),
        "validation_limit": args.validation_limit,
        "protocol": args.protocol,
        "max_new_tokens": engine.max_new_tokens,
        "prompt_format": args.prompt_format,
        "pad_to_square": args.pad_to_square,
        "dtype": args.dtype,
    }


def _cached(path: Path, meta: dict) -> dict[str, dict[int, StaticChoice]]:
    """The stored choices, when they were made with these settings."""
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text(encoding="utf-8"))
    if stored.get("settings") != meta:
        return {}
    return {
        name: {int(k): StaticChoice.from_dict(c) for k, c in choices.items()}
        for name, choices in stored.get("benchmarks", {}).items()
    }


@dataclass(frozen=True)
class _Fixed:
    """One plan for every question: a static-search candidate."""

    depth: Depth
    upper: tuple[int, ...]

    def kwargs(self, benchmark: str, keys: Sequence[str], budget: float) -> dict:
        return {"plan": plan_with_upper(self.depth, [self.upper] * len(keys))}
