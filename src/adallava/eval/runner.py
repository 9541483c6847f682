"""The evaluation loop behind `adallava eval`: benchmarks x methods x budgets of one model.

For each benchmark (`benchmarks`: read with its official reader), each method (`methods`: who decides
the plans) and each budget: answers from `engine` (batched greedy generation through
`adallava.inference.answering`), predictions in the format the official scorer reads, the benchmark's
metric and one results row (`results`: prefill FLOPs, budget violations, time per answer, time to
first token, plan statistics). `DIR/results.json` and `DIR/results.csv` hold the rows
(docs/evaluation.md), `DIR/plans_*.json` the adaptive method's plan for each input at each budget (the
paper's Fig. 5), and `DIR/meta.json` how the folder was made (command, git commit, package versions,
machine). The static method's plans come from `static`.

Sharding: under `accelerate launch` each process answers every num_processes-th question; answers
are gathered and the main process scores and writes. Plans never depend on the batch or the shard.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import subprocess
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from adallava.core.settings import flag
from adallava.eval.args import EvalArgs
from adallava.eval.benchmarks import Benchmark, benchmark_items, load_benchmarks
from adallava.eval.engine import Engine
from adallava.eval.methods import (
    Adaptive,
    Depth,
    EarlyExit,
    Full,
    RandomPlans,
    StaticPlans,
    upper_layers_for,
)
from adallava.eval.results import (
    plans_path,
    predictions_of,
    result_row,
    score,
    score_command,
    write_meta,
    write_plans,
    write_predictions,
    write_results,
)
from adallava.eval.static import choose_static_plans
from adallava.io.hub import check_device, resolve_model


def load_model(path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu"):
    """(AdaLlava, processor, is_adaptive) from a folder or a bundled name, through `io.hub.load_model`,
    with the tokenizer padding on the left for batched generation. A plain HF Llava folder is wrapped
    with `AdaLlava.from_base` (P = N // 2), so explicit plans run on it; its scheduler is untrained."""
    from adallava.engine.llava import ADAPTIVE_CONFIG_FILE
    from adallava.io.hub import load_model as load_named

    model, processor = load_named(path, device=device, dtype=getattr(torch, dtype))
    processor.tokenizer.padding_side = "left"
    return model, processor, (resolve_model(path) / ADAPTIVE_CONFIG_FILE).is_file()


def make_provider(method: str, depth: Depth, args: EvalArgs):
    if method == "adaptive":
        return Adaptive()
    if method == "early-exit":
        return EarlyExit(depth)
    if method == "random":
        return RandomPlans(depth, args.seed)
    if method == "static":
        return StaticPlans(depth)
    return Full()


def evaluate(args: EvalArgs) -> list[dict]:
    """Run every (benchmark, method, budget) of `args`; write predictions, results.json and results.csv
    under args.out (main process). Returns this run's rows."""
    from accelerate import PartialState

    # cpu=True lets torchrun / accelerate shard over CPU processes (gloo) when no GPU is used.
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device:
        check_device(args.device)  # a clear error before any work, not a traceback from torch
    device = torch.device(args.device) if args.device else state.device
    benchmarks = load_benchmarks(args.data, args.benchmarks, args.limit)
    model, processor, adaptive = load_model(args.model, args.dtype, device)
    if args.token_selection is not None:  # e.g. PruMerge on top of adaptive plans (issue 7)
        model.adaptive = replace(model.adaptive, token_selection=args.token_selection)
    depth = Depth(model.num_layers, model.num_prefix)
    providers = [make_provider(method, depth, args) for method in args.methods]
    for provider in providers:
        provider.check(depth, args.budgets, adaptive)
    if "adaptive" in args.methods and adaptive and not model.scheduler_trained:
        raise ValueError(
            f"--methods adaptive: model {str(args.model)!r} has an untrained scheduler (made by "
            "`adallava init` or from_base): train it first (`adallava train`, stage adaptive), or "
            "evaluate it with early-exit, random, static or full"
        )
    engine = Engine(model, processor, args, device, state)
    out = Path(args.out)
    if any(isinstance(p, StaticPlans) for p in providers):
        choices = choose_static_plans(engine, args, [b.name for b in benchmarks], depth, out)
        providers = [StaticPlans(depth, choices) if isinstance(p, StaticPlans) else p for p in providers]
    rows = []
    for benchmark in benchmarks:
        items = benchmark_items(benchmark, args.protocol)
        for provider in providers:
            for budget in provider.budgets(args.budgets):
                desc = f"{benchmark.name} {provider.name} {budget:g}"
                answers, timing = engine.answer(benchmark.name, items, provider, budget, desc)
                if state.is_main_process:
                    rows.append(
                        _row(engine, adaptive, depth, benchmark, items, provider, budget, answers, timing)
                    )
    if state.is_main_process:
        write_results(out, rows)
        write_meta(out, provenance(args, device, state.num_processes))
    return rows


def _row(engine: Engine, adaptive: bool, depth: Depth, benchmark: Benchmark, items, provider, budget: float,
         answers, timing) -> dict[str, Any]:  # fmt: skip
    """Score one (benchmark, method, budget), write its predictions and make its results row."""
    args, model = engine.args, engine.model
    out = Path(args.out)
    result = score(benchmark, predictions_of(benchmark.name, items, answers), args.protocol)
    folder = out / "predictions" / benchmark.name / provider.name / f"budget-{budget:g}"
    predictions = write_predictions(benchmark, folder, items, answers, Path(args.model).name)
    extra: dict[str, Any] = {
        "model": str(args.model),
        "scheduler": model.adaptive.scheduler if adaptive else None,  # Table 2 groups by it
        "protocol": args.protocol,
        "max_new_tokens": engine.max_new_tokens,
        "predictions": str(predictions.relative_to(out)),
        # The official scorers need every question: a --limit run cannot be re-scored by them.
        "score_command": None
        if args.limit
        else shlex.join(score_command(benchmark, predictions, args.protocol)),
    }
    if isinstance(provider, StaticPlans):
        choice = provider.choices[benchmark.name][upper_layers_for(depth, budget)]
        extra["static_plan"] = choice.to_dict()
    # Token selection is part of the method's name in results: "adaptive+prumerge".
    selection = model.adaptive.token_selection
    method = provider.name if selection == "none" else f"{provider.name}+{selection}"
    if isinstance(provider, Adaptive):  # the scheduler's plan for each input (Fig. 5)
        header = {"budget": budget, "model": Path(args.model).name, "method": method,
                  "num_prefix_layers": depth.num_prefix}  # fmt: skip
        path = plans_path(out, Path(args.model).name, method, budget)
        write_plans(path, benchmark.name, items, answers, depth.num_layers, header)
    row = result_row(benchmark, method, budget, result, answers, timing, depth.num_layers, extra)
    deterministic = adaptive and model.adaptive.scheduler == "deterministic"
    if deterministic and isinstance(provider, Adaptive):  # the Table 2 ablation's numbers
        row["metrics"] |= {"violations": row["violations"], "budget_use": row["budget_use"]}
    return row


# ---- provenance (meta.json) ---------------------------------------------------------------------------
def provenance(args: EvalArgs, device: torch.device, processes: int = 1) -> dict[str, Any]:
    """How a results folder was made: the command, the git commit of the adallava source ("unknown"
    outside a git checkout), package versions and the machine."""
    import transformers

    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    commit, modified = git_commit()
    return {
        "command": command_line(args),
        "git_commit": commit,
        "git_modified": modified,
        "versions": {
            "adallava": _version("adallava"),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "device": name,
            "threads": torch.get_num_threads(),
            "processes": processes,
        },
    }


def command_line(args: EvalArgs) -> str:
    """An `adallava eval` command equivalent to `args`: --model, then the flags of the settings that
    differ from their defaults."""
    words = ["adallava", "eval"]
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if (value == field.default and field.name != "model") or value is None:
            continue
        if isinstance(value, bool):
            words.append(flag(field.name) if value else "--no-" + flag(field.name)[2:])
            continue
        if isinstance(value, tuple):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        words += [flag(field.name), str(value)]
    return shlex.join(words)


def git_commit() -> tuple[str, bool | None]:
    """(HEAD commit, whether the package's tracked files differ from it) of the git checkout holding
    this source file; ("unknown", None) when it is not in one (an installed wheel) or git is missing."""
    here = Path(__file__).resolve()
    package = here.parents[1]

    def git(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(package), *argv], capture_output=True, text=True, timeout=20)

    try:
        if git("ls-files", "--error-unmatch", str(here)).returncode != 0:  # not tracked here
            return "unknown", None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown", None
        return head.stdout.strip(), git("diff", "--quiet", "HEAD", "--", ".").returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
