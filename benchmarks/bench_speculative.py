"""Self-speculative decoding against plain decoding on the lean engine: decode tokens/s, acceptance and
where a round's time goes, at verify budgets 1.0 and 0.75 with k = 2, 4, 6 drafted tokens per round.

The bundled tiny-adallava-l answers the caption question ("List the objects in the image.") about
test-split scenes of the synthetic world with the most objects (5 shapes and 2 letter cards: the
longest answers it gives, ~15 tokens with the end of sequence). Every call is greedy, batch 1, and
ends at the model's own end of sequence (max 48 new tokens). The draft plan is the prefix layers alone
(draft budget b_min = 0.5) and, at verify budget 1.0, also the budget-0.75 draft (the prefix plus the
two best-ranked upper layers). Paths are timed round-robin (`common.time_interleaved`); one sample is
one pass over all scenes, its decode tokens/s the new tokens after the first over the engine's
decode_ms (the first token comes from the prefill, which speculation does not change).

Where the time goes: one extra, instrumented pass per speculative path times a round's draft steps,
its verification forward and the bookkeeping around them (acceptance, cache validity, tokens).

Writes benchmarks/results/speculative.json and speculative.png (the results folder is git-ignored) and
prints markdown tables.

    python benchmarks/bench_speculative.py --threads 1           # 30 repeats
    python benchmarks/bench_speculative.py --quick               # 3 repeats, a smoke run
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adallava.data.world.questions import CAPTION_QUESTION  # noqa: E402
from adallava.data.world.render import render  # noqa: E402
from adallava.data.world.scene import sample_scene, stream  # noqa: E402
from adallava.engine.lean import speculative  # noqa: E402
from adallava.engine.lean.speculative import SpeculativeConfig  # noqa: E402
from adallava.inference.answering import collate, encode  # noqa: E402
from adallava.inference.prompts import chat_prompt  # noqa: E402
from adallava.io.hub import load_model  # noqa: E402
from bench_serve import percentile  # noqa: E402
from common import (  # noqa: E402
    RESULTS_DIR,
    add_timing_args,
    apply_timing_args,
    machine,
    time_interleaved,
    write_json,
)

VERIFY_BUDGETS = (1.0, 0.75)
DRAFT_TOKENS = (2, 4, 6)
DRAFT_BUDGETS = (None, 0.75)  # None: the prefix alone (b_min)
MAX_NEW_TOKENS = 48
TARGET = 1.3  # issue 20: decode tokens/s over plain decoding at budget 1.0, CPU, bundled model
QUIET_LOAD = 0.5


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return 0.0


def caption_prompts(processor, count: int) -> list[dict]:
    """Batch-1 inputs: the caption question about `count` test scenes with 5 shapes and 2 letters."""
    pad = processor.tokenizer.pad_token_id or 0
    inputs = []
    for index in range(count):
        scene = sample_scene(
            stream(0, "bench-speculative", index), "test", shape_counts=(5,), letter_counts=(2,)
        )
        prompt = encode(processor, chat_prompt(processor, CAPTION_QUESTION), [render(scene)])
        inputs.append(collate([prompt], pad))
    return inputs


class Path_:
    """One path (plain, or speculative with k and a draft budget) at one verify budget over every
    prompt: per sample, decode tokens and ms summed over the prompts; tokens, acceptance and FLOPs of
    the last sample."""

    def __init__(self, model, prompts, budget: float, config: SpeculativeConfig | None):
        self.model, self.prompts, self.budget, self.config = model, prompts, budget, config
        self.decode_ms, self.total_ms, self.rates = [], [], []
        self.tokens: list[tuple] = []
        self.drafted = self.accepted = self.rounds = 0
        self.flops = {"decode": 0.0, "draft": 0.0, "verify": 0.0, "wasted": 0.0}
        self.draft_layers = None

    def __call__(self) -> None:
        decode_ms = total_ms = 0.0
        new_tokens = 0
        tokens, drafted, accepted, rounds = [], 0, 0, 0
        flops = dict.fromkeys(self.flops, 0.0)
        for inputs in self.prompts:
            start = time.perf_counter()
            with torch.no_grad():
                out = self.model.generate(
                    **inputs,
                    budget=self.budget,
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    return_dict_in_generate=True,
                    speculative=self.config,
                )
            total_ms += (time.perf_counter() - start) * 1e3
            new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
            tokens.append(tuple(new))
            new_tokens += len(new) - 1
            decode_ms += out.decode_ms
            flops["decode"] += float(out.decode_cost.total[0])
            report = out.speculative
            if report is not None:
                drafted += int(report.drafted[0])
                accepted += int(report.accepted[0])
                rounds += int(report.rounds[0])
                flops["draft"] += float(report.draft_flops[0])
                flops["verify"] += float(report.verify_flops[0])
                flops["wasted"] += float(report.wasted_flops[0])
                self.draft_layers = report.draft_plan.executed_layers()[0]
        self.decode_ms.append(decode_ms)
        self.total_ms.append(total_ms)
        self.rates.append(new_tokens / decode_ms * 1e3)
        self.new_tokens = new_tokens
        self.tokens, self.drafted, self.accepted, self.rounds, self.flops = (
            tokens,
            drafted,
            accepted,
            rounds,
            flops,
        )

    def drop_warmup(self, warmup: int) -> None:
        for samples in (self.decode_ms, self.total_ms, self.rates):
            del samples[:warmup]

    def drop_after(self, count: int) -> None:
        for samples in (self.decode_ms, self.total_ms, self.rates):
            del samples[count:]


class RoundClock:
    """Times a speculative round's parts (draft steps, verification, the rest of `_round`) by wrapping
    `speculative._Rounds` methods for one pass."""

    def __init__(self):
        self.ms = {"round": 0.0, "draft": 0.0, "verify": 0.0}
        self.rounds = 0

    def __enter__(self):
        rounds = speculative._Rounds
        self.saved = {name: getattr(rounds, name) for name in ("_round", "_draft_step", "_verify")}
        for name, part in (("_round", "round"), ("_draft_step", "draft"), ("_verify", "verify")):
            setattr(rounds, name, self._timed(self.saved[name], part))
        return self

    def __exit__(self, *exc) -> None:
        for name, method in self.saved.items():
            setattr(speculative._Rounds, name, method)

    def _timed(self, method, part: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            self.ms[part] += (time.perf_counter() - start) * 1e3
            self.rounds += part == "round"
            return result

        return timed

    def per_round(self) -> dict:
        rounds = max(self.rounds, 1)
        draft, verify = self.ms["draft"] / rounds, self.ms["verify"] / rounds
        return {
            "draft_ms": draft,
            "verify_ms": verify,
            "other_ms": self.ms["round"] / rounds - draft - verify,
            "rounds": self.rounds,
        }


def spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "p10": percentile(values, 10),
        "p90": percentile(values, 90),
    }


def label(k: int | None, draft_budget: float | None) -> str:
    if k is None:
        return "plain"
    return f"k={k}, draft {'prefix' if draft_budget is None else draft_budget}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_timing_args(parser, unit="pass")
    parser.add_argument("--scenes", type=int, default=8, help="caption prompts per pass")
    parser.add_argument("--clock-passes", type=int, default=3, help="instrumented passes per path")
    args = parser.parse_args()
    apply_timing_args(args)

    load_before = load_average()
    model, processor = load_model("tiny-adallava-l")
    prompts = caption_prompts(processor, args.scenes)
    paths: dict[tuple, Path_] = {}
    for budget in VERIFY_BUDGETS:
        paths[(budget, None, None)] = Path_(model, prompts, budget, None)
        for draft in DRAFT_BUDGETS:
            if draft is not None and draft >= budget:
                continue
            for k in DRAFT_TOKENS:
                config = SpeculativeConfig(draft_budget=draft, num_draft_tokens=k)
                paths[(budget, k, draft)] = Path_(model, prompts, budget, config)
    timed = {f"{label(k, d)}@{b}": path for (b, k, d), path in paths.items()}
    time_interleaved(timed, args.repeats, args.warmup)
    for path in paths.values():
        path.drop_warmup(args.warmup)
    clocks = {}
    for key, path in paths.items():
        if key[1] is not None:
            timed_samples = len(path.rates)
            with RoundClock() as clock:
                for _ in range(args.clock_passes):
                    path()
            clocks[key] = clock.per_round()
            path.drop_after(timed_samples)  # the instrumented passes are not timing samples
    load_after = load_average()

    rows = []
    for (budget, k, draft), path in paths.items():
        plain = paths[(budget, None, None)]
        rate = spread(path.rates)
        row = {
            "budget": budget,
            "path": label(k, draft),
            "num_draft_tokens": k,
            "draft_budget": draft,
            "draft_layers": path.draft_layers,
            "decode_tokens_per_s": rate,
            "speedup": rate["median"] / statistics.median(plain.rates),
            # per repeat against the plain pass timed next to it (a shared machine's drifts cancel)
            "speedup_paired": statistics.median(
                [a / b for a, b in zip(path.rates, plain.rates, strict=True)]
            ),
            "decode_ms": spread(path.decode_ms),
            "total_ms": spread(path.total_ms),
            "new_tokens_per_pass": path.new_tokens + len(prompts),
            "same_tokens_as_plain": path.tokens == plain.tokens,
            "flops": path.flops,
        }
        if k is not None:
            row |= {
                "drafted": path.drafted,
                "accepted": path.accepted,
                "acceptance": path.accepted / path.drafted if path.drafted else None,
                "rounds": path.rounds,
                "tokens_per_round": path.new_tokens / path.rounds if path.rounds else None,
                "round_ms": clocks[(budget, k, draft)],
            }
        rows.append(row)
    full = [r for r in rows if r["budget"] == 1.0 and r["num_draft_tokens"] is not None]
    best = max(full, key=lambda r: r["speedup"])
    payload = {
        "benchmark": "speculative",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": vars(args) | {"out": None},
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "model": "tiny-adallava-l",
        "prompts": f"{len(prompts)} test scenes (5 shapes, 2 letters) + {CAPTION_QUESTION!r}, batch 1",
        "max_new_tokens": MAX_NEW_TOKENS,
        "load": {"before": load_before, "after": load_after, "quiet": load_before < QUIET_LOAD},
        "rows": rows,
        "target": {
            "budget": 1.0,
            "best": best["path"],
            "speedup": best["speedup"],
            "speedup_paired": best["speedup_paired"],
            "limit": TARGET,
            "pass": best["speedup"] >= TARGET,
        },
    }
    out_dir = args.out or RESULTS_DIR
    written = write_json("speculative", payload, out_dir)
    figure = plot(rows, out_dir / "speculative.png")
    print_tables(payload)
    print(f"\nwrote {written}" + (f" and {figure}" if figure else ""))


def plot(rows: list[dict], figure_path: Path) -> Path | None:
    """Decode tokens/s against k per verify budget and draft (plain decoding as a line), and the
    acceptance rate against k."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (speed, acceptance) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, budget in enumerate(VERIFY_BUDGETS):
        color = f"C{index}"
        plain = next(r for r in rows if r["budget"] == budget and r["num_draft_tokens"] is None)
        speed.axhline(
            plain["decode_tokens_per_s"]["median"], color=color, linestyle=":", label=f"plain @ {budget}"
        )
        for style, draft in zip(("-", "--"), DRAFT_BUDGETS, strict=True):
            chosen = [
                r
                for r in rows
                if r["budget"] == budget and r["num_draft_tokens"] and r["draft_budget"] == draft
            ]
            if not chosen:
                continue
            ks = [r["num_draft_tokens"] for r in chosen]
            name = f"@ {budget}, draft {'prefix' if draft is None else draft}"
            median = [r["decode_tokens_per_s"]["median"] for r in chosen]
            low = [m - r["decode_tokens_per_s"]["p10"] for m, r in zip(median, chosen, strict=True)]
            high = [r["decode_tokens_per_s"]["p90"] - m for m, r in zip(median, chosen, strict=True)]
            speed.errorbar(ks, median, yerr=[low, high], marker="o", capsize=3, color=color, linestyle=style,
                           label=f"speculative {name}")  # fmt: skip
            acceptance.plot(ks, [r["acceptance"] for r in chosen], marker="o", color=color, linestyle=style,
                            label=name)  # fmt: skip
    speed.set_xlabel("drafted tokens per round (k)")
    speed.set_ylabel("decode tokens/s (median, p10-p90)")
    speed.set_xticks(list(DRAFT_TOKENS))
    speed.grid(alpha=0.3)
    speed.legend(fontsize=7)
    acceptance.set_xlabel("drafted tokens per round (k)")
    acceptance.set_ylabel("accepted / drafted")
    acceptance.set_ylim(0, 1.05)
    acceptance.set_xticks(list(DRAFT_TOKENS))
    acceptance.grid(alpha=0.3)
    acceptance.legend(fontsize=7)
    figure.suptitle("tiny-adallava-l, caption answers, batch 1, lean engine", fontsize=9)
    figure.tight_layout()
    figure.savefig(figure_path, dpi=120)
    plt.close(figure)
    return figure_path


def print_tables(payload: dict) -> None:
    load = payload["load"]
    quiet = "quiet" if load["quiet"] else "NOT quiet"
    print(
        f"\n{payload['model']}: {payload['prompts']}; {payload['threads']} thread(s); load "
        f"{load['before']:.2f} before, {load['after']:.2f} after ({quiet})\n"
    )
    print("| budget | path | draft layers | decode tok/s (p10-p90) | x plain (paired) | acceptance "
          "| tokens/round | round ms: draft / verify / other | same tokens |")  # fmt: skip
    print("|---:|---|---|---:|---:|---:|---:|---|---|")
    for row in payload["rows"]:
        rate = row["decode_tokens_per_s"]
        spec = row["num_draft_tokens"] is not None
        parts = row.get("round_ms")
        print(
            f"| {row['budget']} | {row['path']} | {row['draft_layers'] or ''} | {rate['median']:.0f} "
            f"({rate['p10']:.0f}-{rate['p90']:.0f}) | {row['speedup']:.2f} ({row['speedup_paired']:.2f}) | "
            + (f"{row['acceptance']:.3f} | {row['tokens_per_round']:.2f} | " if spec else " | | ")
            + (
                f"{parts['draft_ms']:.2f} / {parts['verify_ms']:.2f} / {parts['other_ms']:.2f} | "
                if spec
                else " | "
            )
            + f"{row['same_tokens_as_plain']} |"
        )
    target = payload["target"]
    print(
        f"\nbest at budget 1.0: {target['best']}, {target['speedup']:.2f}x plain decode tokens/s "
        f"(paired {target['speedup_paired']:.2f}x) "
        f"(target {target['limit']}x: {'pass' if target['pass'] else 'NOT met'})"
    )
    print("\nFLOPs per pass (GFLOPs): decode cost of the tokens / draft / verify / wasted")
    for row in payload["rows"]:
        if row["num_draft_tokens"] is not None:
            f = row["flops"]
            print(f"  {row['budget']} {row['path']}: {f['decode'] / 1e9:.4f} / {f['draft'] / 1e9:.4f} / "
                  f"{f['verify'] / 1e9:.4f} / {f['wasted'] / 1e9:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
