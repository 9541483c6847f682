"""Answer wall-clock of the generation engines (HF `generate`, the lean engine, lean + compile) at
budgets 0.5 / 0.75 / 1.0, next to the cost model's FLOPs and a floor measured in the same run.

Two models: the bundled tiny-adallava-l (scene.png and a question) and a 16 x 1024 random text stack
(bench_serve's `random_wide_model`: the bundled processor and vision tower, a wide random Llama and a
fresh scheduler; a text prompt of fixed length). Every call writes exactly `--new-tokens` tokens
(greedy, min_new_tokens = max_new_tokens), batch 1. Paths and budgets are timed round-robin
(`common.time_interleaved`), so drifts of a shared machine hit all of them alike.

The floor: the bare `F.linear` calls of the same plan (q, k, v, o, gate, up, down of each executed
layer and the LM head) on the prefill's token count and then on one token per decoding step: no
attention, norms, rotary, sampling or Python around them, same thread count. The vision tower is not
in the floor (it is the same at every budget).

Writes benchmarks/results/engine.json and engine.png (the results folder is git-ignored) and prints
markdown tables.

    python benchmarks/bench_engine.py              # both models, 30 repeats
    python benchmarks/bench_engine.py --quick      # 3 repeats, a smoke run
    python benchmarks/bench_engine.py --models bundled --repeats 50 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adallava.inference.answering import collate, encode  # noqa: E402
from adallava.inference.prompts import chat_prompt  # noqa: E402
from adallava.io.hub import load_model  # noqa: E402
from bench_serve import percentile, random_wide_model  # noqa: E402
from common import (  # noqa: E402
    RESULTS_DIR,
    add_timing_args,
    apply_timing_args,
    machine,
    time_interleaved,
    write_json,
)

BUDGETS = (0.5, 0.75, 1.0)
PATHS = {
    "hf": {"engine": "hf"},
    "lean": {"engine": "lean"},
    "lean+compile": {"engine": "lean", "compile": True},
}
QUESTION = "What is in the picture?"
SCENE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"
# Acceptance limits of issue 15 (wall-clock ratio 0.5 / 1.0 over the FLOPs ratio; lean over hf).
SCALING_LIMIT = {"bundled": 1.15, "stack": 1.05}
SPEEDUP_LIMIT = {"bundled": 3.0}
QUIET_LOAD = 0.5
FLOOR_LABELS = {
    "floor": "floor: bare matmuls (7 per layer + LM head)",
    "floor_engine_matmuls": "floor: the lean engine's matmuls (q|k|v, o, gate|up, down)",
}


def load_average() -> float:
    """The 1-minute load average (0.0 where /proc is absent)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return 0.0


def bundled_setup(args) -> tuple:
    """tiny-adallava-l with scene.png and one question: (model, inputs, description)."""
    model, processor = load_model("tiny-adallava-l")
    prompt = encode(processor, chat_prompt(processor, QUESTION), [Image.open(SCENE).convert("RGB")])
    pad = processor.tokenizer.pad_token_id
    inputs = collate([prompt], 0 if pad is None else pad)
    return model, inputs, {"model": "tiny-adallava-l", "prompt": f"scene.png + {QUESTION!r}"}


def stack_setup(args) -> tuple:
    """The random layers x width text stack with a text prompt of `--text-tokens` random ids (the
    tokenizer's special ids and the image token left out)."""
    model, processor = random_wide_model("tiny-adallava-l", args.width, args.layers)
    special = set(processor.tokenizer.all_special_ids) | {model.config.image_token_id}
    allowed = torch.tensor([i for i in range(model.config.text_config.vocab_size) if i not in special])
    generator = torch.Generator().manual_seed(0)
    ids = allowed[torch.randint(len(allowed), (1, args.text_tokens), generator=generator)]  # [1, T]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    description = {
        "model": f"random {args.layers}x{args.width} text stack (bench_serve.random_wide_model)",
        "prompt": f"{args.text_tokens} random text token ids (seed 0)",
    }
    return model, inputs, description


SETUPS = {"bundled": bundled_setup, "stack": stack_setup}


def spread(values: list[float]) -> dict:
    """median / p10 / p90 (nearest rank) and min in ms (the min: what a quiet moment allows)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "p10": percentile(values, 10),
        "p90": percentile(values, 90),
    }


class Recorder:
    """One (path, budget) call of `generate`, recording wall-clock, the engine's prefill / decode ms,
    the plan run and the new tokens of every call."""

    def __init__(self, model, inputs: dict, budget: float, options: dict, new_tokens: int):
        self.model, self.inputs, self.budget, self.options = model, inputs, budget, options
        self.new_tokens = new_tokens
        self.total, self.prefill, self.decode, self.plans, self.tokens = [], [], [], set(), set()
        self.out = None

    def __call__(self) -> None:
        start = time.perf_counter()
        out = self.model.generate(
            **self.inputs,
            budget=self.budget,
            min_new_tokens=self.new_tokens,
            max_new_tokens=self.new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            **self.options,
        )
        self.total.append((time.perf_counter() - start) * 1e3)
        self.prefill.append(out.prefill_ms)
        self.decode.append(out.decode_ms)
        self.plans.add(tuple(map(tuple, out.plan.executed_layers())))
        self.tokens.add(tuple(out.sequences[0, -self.new_tokens :].tolist()))
        self.out = out

    def drop_warmup(self, warmup: int) -> None:
        for samples in (self.total, self.prefill, self.decode):
            del samples[:warmup]


def probe_path(model, inputs: dict, options: dict, new_tokens: int) -> tuple[str, float | None]:
    """("ok", first call ms) or ("not available: why", None) for a path whose options `generate`
    rejects (e.g. `compile=True` before the engine has it)."""
    start = time.perf_counter()
    try:
        Recorder(model, inputs, 1.0, options, new_tokens)()
    except (TypeError, ValueError) as error:
        if "compile" not in options:
            raise
        return f"not available: {error}", None
    return "ok", (time.perf_counter() - start) * 1e3


def separate_projections(model, index: int) -> list[tuple]:
    """(weight [out, in], bias) of layer `index`'s seven projections, as the HF modules hold them."""
    layer = model.text_model.layers[index]
    attention, mlp = layer.self_attn, layer.mlp
    modules = [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj]
    modules += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    return [(m.weight.detach(), None if m.bias is None else m.bias.detach()) for m in modules]


def engine_projections(model, index: int) -> list[tuple]:
    """(weight, bias) of layer `index`'s projections as the lean engine multiplies them: q/k/v and
    gate/up concatenated where its weights cache fuses them (small layers), separate otherwise; o and
    down as the HF modules hold them (same shapes and FLOPs as the engine's own layout)."""
    weights = model.lean_engine.weights.get(model.text_model.layers[index])
    separate = separate_projections(model, index)  # q, k, v, o, gate, up, down
    qkv = [(weights.qkv, weights.qkv_bias)] if isinstance(weights.qkv, torch.Tensor) else separate[:3]
    gate_up = separate[4:6]
    if isinstance(weights.gate_up, torch.Tensor):
        gate_up = [(weights.gate_up, weights.gate_up_bias)]
    return qkv + [separate[3]] + gate_up + [separate[6]]


def engine_fuses(model) -> bool:
    """Whether the lean engine concatenates the first layer's projections (`engine_projections`)."""
    return len(engine_projections(model, 0)) < 7


class Floor:
    """The bare matmuls of a layer plan: for each executed layer its projections (`projections`),
    then the LM head on the last position, on `prefill_tokens` tokens, then `steps` times on one
    token."""

    def __init__(self, model, executed: list[int], prefill_tokens: int, steps: int, projections):
        generator = torch.Generator().manual_seed(0)
        self.linears = []  # (weight [out, in], bias, prefill input [1, T, in], step input [1, 1, in])
        for index in executed:
            for weight, bias in projections(model, index):
                self.linears.append(self._entry(weight, bias, prefill_tokens, generator))
        head = model.base.lm_head
        bias = None if head.bias is None else head.bias.detach()
        self.head = self._entry(head.weight.detach(), bias, 1, generator)
        self.steps = steps
        self.prefill, self.decode, self.total = [], [], []

    @staticmethod
    def _entry(weight, bias, tokens: int, generator) -> tuple:
        prefill = torch.randn(1, tokens, weight.shape[1], generator=generator).to(weight.dtype)
        return weight, bias, prefill, prefill[:, -1:].contiguous()

    @torch.no_grad()
    def __call__(self) -> None:
        linear = torch.nn.functional.linear
        start = time.perf_counter()
        for weight, bias, tokens, _ in self.linears:
            linear(tokens, weight, bias)
        linear(self.head[2], self.head[0], self.head[1])
        prefill_end = time.perf_counter()
        for _ in range(self.steps):
            for weight, bias, _, token in self.linears:
                linear(token, weight, bias)
            linear(self.head[3], self.head[0], self.head[1])
        end = time.perf_counter()
        self.prefill.append((prefill_end - start) * 1e3)
        self.decode.append((end - prefill_end) * 1e3)
        self.total.append((end - start) * 1e3)

    def drop_warmup(self, warmup: int) -> None:
        for samples in (self.total, self.prefill, self.decode):
            del samples[:warmup]


def flops(out) -> dict:
    """The cost model's FLOPs of one answer (row 0): prefill + decode, split by part."""
    prefill, decode = out.prefill_cost, out.decode_cost
    parts = {part: float(getattr(prefill, part)[0] + getattr(decode, part)[0]) for part in ("vision", "llm")}
    return parts | {
        "lm_head": float(prefill.lm_head[0] + decode.lm_head[0]),
        "prefill": float(prefill.total[0]),
        "decode": float(decode.total[0]),
        "total": float(prefill.total[0] + decode.total[0]),
    }


def bench_model(name: str, args) -> dict:
    model, inputs, description = SETUPS[name](args)
    trained = bool(getattr(model, "scheduler_trained", False))
    statuses, first_call_ms = {}, {}
    for path in args.paths:
        statuses[path], first_call_ms[path] = probe_path(model, inputs, PATHS[path], args.new_tokens)
    paths = [path for path in args.paths if statuses[path] == "ok"]
    calls = {
        (path, budget): Recorder(model, inputs, budget, PATHS[path], args.new_tokens)
        for budget in BUDGETS
        for path in paths
    }
    # The floor follows the plan the budget gives (read from one call before timing). Where the lean
    # engine fuses projections (small layers), a second floor multiplies as it does.
    variants = {"floor": separate_projections}
    if engine_fuses(model):
        variants["floor_engine_matmuls"] = engine_projections
    floors = {}
    for budget in BUDGETS:
        probe = Recorder(model, inputs, budget, PATHS[paths[0]], args.new_tokens)
        probe()
        executed = probe.out.plan.executed_layers()[0]
        prefill_tokens = int(probe.out.prefill_tokens[0])
        for variant, projections in variants.items():
            floors[(variant, budget)] = Floor(
                model, executed, prefill_tokens, args.new_tokens - 1, projections
            )
    timed = {f"{path}@{budget}": call for (path, budget), call in calls.items()}
    timed |= {f"{variant}@{budget}": floor for (variant, budget), floor in floors.items()}
    time_interleaved(timed, args.repeats, args.warmup)
    for call in timed.values():
        call.drop_warmup(args.warmup)

    rows, floor_rows = [], []
    for budget in BUDGETS:
        for variant in variants:
            floor = floors[(variant, budget)]
            floor_rows.append(
                {
                    "variant": variant,
                    "budget": budget,
                    "total_ms": spread(floor.total),
                    "prefill_ms": spread(floor.prefill),
                    "decode_ms": spread(floor.decode),
                    "matmuls_per_pass": len(floor.linears) + 1,
                }
            )
        for path in paths:
            call = calls[(path, budget)]
            reference = calls[(paths[0], budget)]
            row = {
                "path": path,
                "budget": budget,
                "executed_layers": list(next(iter(call.plans))[0]),  # row 0 (batch 1)
                "plan_deterministic": len(call.plans) == 1,
                "prefill_tokens": int(call.out.prefill_tokens[0]),
                "new_tokens": len(next(iter(call.tokens))),
                "same_tokens_as_" + paths[0]: call.tokens == reference.tokens,
                "total_ms": spread(call.total),
                "prefill_ms": spread(call.prefill),
                "decode_ms": spread(call.decode),
                "flops": flops(call.out),
            }
            for variant in variants:
                floor_median = statistics.median(floors[(variant, budget)].total)
                row[f"vs_{variant}"] = row["total_ms"]["median"] / floor_median
            rows.append(row)

    def row(path: str, budget: float) -> dict:
        return next(r for r in rows if r["path"] == path and r["budget"] == budget)

    scaling = {}
    for path in paths:
        low, full = row(path, 0.5), row(path, 1.0)
        wall = low["total_ms"]["median"] / full["total_ms"]["median"]
        ideal = low["flops"]["total"] / full["flops"]["total"]
        entry = {"wall_ratio": wall, "flops_ratio": ideal, "wall_over_flops": wall / ideal}
        if path == "lean":
            limit = SCALING_LIMIT[name]
            entry |= {"limit": limit, "pass": 1 / limit <= wall / ideal <= limit}
        scaling[path] = entry
    floor_scaling = {
        variant: statistics.median(floors[(variant, 0.5)].total)
        / statistics.median(floors[(variant, 1.0)].total)
        for variant in variants
    }
    speedup = None
    lean_paths = [path for path in paths if path.startswith("lean")]
    if "hf" in paths and lean_paths:
        hf_ms = row("hf", 1.0)["total_ms"]["median"]
        # hf's median over each lean path's at budget 1.0; the limit (compilation allowed) judges the fastest
        ratios = {path: hf_ms / row(path, 1.0)["total_ms"]["median"] for path in lean_paths}
        fastest = max(ratios, key=ratios.get)
        speedup = {"over_hf_at_1.0": ratios, "fastest": fastest}
        if name in SPEEDUP_LIMIT:
            value = speedup["over_hf_at_1.0"][fastest]
            speedup |= {"limit": SPEEDUP_LIMIT[name], "pass": value >= SPEEDUP_LIMIT[name]}
    text = model.text_model.config
    return {
        "name": name,
        **description,
        "shape": {
            "layers": text.num_hidden_layers,
            "hidden": text.hidden_size,
            "intermediate": text.intermediate_size,
            "heads": text.num_attention_heads,
            "vocab": text.vocab_size,
        },
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "scheduler_trained": trained,
        "plans": (
            "budget through the "
            + ("trained" if trained else "untrained (fresh, seed 0)")
            + " scheduler; the same plan on every call (plan_deterministic per row)"
        ),
        "paths": statuses,
        "first_call_ms": first_call_ms,
        "rows": rows,
        "floor": floor_rows,
        "floor_wall_ratio_0.5_over_1.0": floor_scaling,
        "budget_scaling": scaling,
        "speedup": speedup,
    }


def plot(models: list[dict], figure_path: Path) -> Path | None:
    """Median total ms (p10-p90 bars) per path and budget, the floor, and each path's FLOPs-ideal line
    (its budget-1.0 time scaled by the FLOPs ratio)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for axis, result in zip(axes[0], models, strict=True):
        for index, path in enumerate(p for p, s in result["paths"].items() if s == "ok"):
            rows = [r for r in result["rows"] if r["path"] == path]
            budgets = [r["budget"] for r in rows]
            median = [r["total_ms"]["median"] for r in rows]
            low = [m - r["total_ms"]["p10"] for m, r in zip(median, rows, strict=True)]
            high = [r["total_ms"]["p90"] - m for m, r in zip(median, rows, strict=True)]
            color = f"C{index}"
            axis.errorbar(budgets, median, yerr=[low, high], marker="o", capsize=3, color=color, label=path)
            full = rows[-1]
            ideal = [full["total_ms"]["median"] * r["flops"]["total"] / full["flops"]["total"] for r in rows]
            axis.plot(budgets, ideal, linestyle=":", color=color, label=f"{path}: FLOPs-ideal")
        for variant, style in (("floor", "--"), ("floor_engine_matmuls", "-.")):
            floor = [f for f in result["floor"] if f["variant"] == variant]
            if floor:
                axis.plot(
                    [f["budget"] for f in floor],
                    [f["total_ms"]["median"] for f in floor],
                    marker="s",
                    color="black",
                    linestyle=style,
                    label=FLOOR_LABELS[variant],
                )
        axis.set_yscale("log")
        axis.set_xlabel("budget")
        axis.set_ylabel(f"ms per answer (prefill + {result['rows'][0]['new_tokens']} tokens)")
        axis.set_title(result["model"], fontsize=9)
        axis.set_xticks(list(BUDGETS))
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(figure_path, dpi=120)
    plt.close(figure)
    return figure_path


def print_tables(payload: dict) -> None:
    print(
        f"engine benchmark, torch threads {payload['threads']}, {payload['repeats']} repeats, "
        f"load {payload['load']['before']:.2f} -> {payload['load']['after']:.2f} "
        f"({'quiet' if payload['load']['quiet'] else 'NOT quiet'})"
    )
    for result in payload["models"]:
        print(f"\n### {result['model']} ({result['prompt_tokens']} prompt tokens)\n")
        for path, status in result["paths"].items():
            if status != "ok":
                print(f"- {path}: {status}")
        variants = list(dict.fromkeys(f["variant"] for f in result["floor"]))
        print(
            "\n| path | budget | layers | total ms (p10-p90) | min | prefill ms | decode ms | GFLOPs | "
            + " | ".join(f"x {v}" for v in variants)
            + " |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(variants))
        for row in result["rows"]:
            total = row["total_ms"]
            print(
                f"| {row['path']} | {row['budget']} | {len(row['executed_layers'])} | "
                f"{total['median']:.2f} ({total['p10']:.2f}-{total['p90']:.2f}) | {total['min']:.2f} | "
                f"{row['prefill_ms']['median']:.2f} | {row['decode_ms']['median']:.2f} | "
                f"{row['flops']['total'] / 1e9:.3f} | "
                + " | ".join(f"{row[f'vs_{v}']:.2f}" for v in variants)
                + " |"
            )
        for floor in result["floor"]:
            total = floor["total_ms"]
            print(
                f"| {floor['variant']} | {floor['budget']} | | "
                f"{total['median']:.2f} ({total['p10']:.2f}-{total['p90']:.2f}) | {total['min']:.2f} | "
                f"{floor['prefill_ms']['median']:.2f} | {floor['decode_ms']['median']:.2f} | |"
                + " |"
                * len(variants)
            )
        ratios = ", ".join(f"{v} {r:.3f}" for v, r in result["floor_wall_ratio_0.5_over_1.0"].items())
        print(f"\nfloor wall-clock 0.5 / 1.0: {ratios}")
        print("\n| path | wall 0.5/1.0 | FLOPs 0.5/1.0 | wall / FLOPs | limit |")
        print("|---|---:|---:|---:|---|")
        for path, entry in result["budget_scaling"].items():
            verdict = f"{entry['limit']} ({'pass' if entry['pass'] else 'FAIL'})" if "limit" in entry else ""
            print(
                f"| {path} | {entry['wall_ratio']:.3f} | {entry['flops_ratio']:.3f} | "
                f"{entry['wall_over_flops']:.3f} | {verdict} |"
            )
        if result["speedup"]:
            speedup = result["speedup"]
            verdict = (
                f" (limit {speedup['limit']}: {'pass' if speedup['pass'] else 'FAIL'})"
                if "limit" in speedup
                else ""
            )
            ratios = ", ".join(f"{path} {value:.2f}x" for path, value in speedup["over_hf_at_1.0"].items())
            print(f"\nover hf at budget 1.0: {ratios}; the fastest, {speedup['fastest']}, judged{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="bundled,stack", help="comma-separated: bundled, stack")
    parser.add_argument(
        "--paths", default="hf,lean,lean+compile", help="comma-separated: " + ", ".join(PATHS)
    )
    add_timing_args(parser)
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens per answer (exactly)")
    parser.add_argument("--width", type=int, default=1024, help="the random stack's hidden size")
    parser.add_argument("--layers", type=int, default=16, help="the random stack's decoder layers")
    parser.add_argument("--text-tokens", type=int, default=64, help="the random stack's prompt length")
    args = parser.parse_args()
    apply_timing_args(args)
    args.models = args.models.split(",")
    args.paths = args.paths.split(",")
    for value, allowed, flag in ((args.models, SETUPS, "--models"), (args.paths, PATHS, "--paths")):
        unknown = [v for v in value if v not in allowed]
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; allowed: {', '.join(allowed)}")
    if "hf" not in args.paths and "lean" not in args.paths:
        parser.error("--paths needs hf or lean")

    load_before = load_average()
    models = [bench_model(name, args) for name in args.models]
    load_after = load_average()
    payload = {
        "benchmark": "engine",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": vars(args) | {"out": None},
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "repeats": args.repeats,
        "load": {
            "before": load_before,
            "after": load_after,
            "quiet_threshold": QUIET_LOAD,
            # The load after includes this run's own threads: only the load before says whether
            # others were busy.
            "quiet": load_before < QUIET_LOAD,
        },
        "models": models,
    }
    out_dir = args.out or RESULTS_DIR
    path = write_json("engine", payload, out_dir)
    figure = plot(models, out_dir / "engine.png")
    print_tables(payload)
    print(f"\nwrote {path}" + (f" and {figure}" if figure else ""))


if __name__ == "__main__":
    main()
