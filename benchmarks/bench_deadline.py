"""Deadlines in milliseconds, kept under CPU contention: miss rates, latency / deadline and budget used
per policy, on an idle machine and with one or two background processes spinning (issue 16).

Two models: (1) a random 16 x 1024 text stack (`bench_serve.random_wide_model`; layers dominate its
latency). Its scheduler is random, so it is marked `scheduler_trained = True` by hand to accept
budgets: its plans are arbitrary but deterministic, and its answers are noise (no accuracy).
(2) the bundled tiny-adallava-l on image questions of a freshly generated held-out test world
(seed 1), scored with the world's own exact-match rule (`adallava.eval.heldout.normalize`).

Phases (each model): calibrate a latency profile on the idle machine; time every plan idle (the
fixed-fraction baseline is tuned from it: per deadline, the largest fraction whose idle p99 meets
it); start one hog (`CpuHog`, one process on core 0) and measure the smallest and full plans under
it: the deadlines lie between those medians; then run every (policy, deadline, clients) cell under
one hog, under two hogs (both cores) and idle (idle also gets deadlines inside the idle range, so
the budget-use comparison is not trivially 1.0); finally one contention episode (idle -> hog on ->
hog off) with the controller. Hogs are started and stopped here and exit by themselves after
`--hog-seconds` at most.

Policies: full (budget 1.0), fixed (the tuned fraction), profile (deadline mode, `learn=False`),
controller (`learn=True`), controller+threads (`learn=True, thread_counts=(2, 1)`). Clients:
sequential (each request right after the previous) and 4 closed-loop clients feeding one FIFO worker
thread, with `deadline_start` = arrival (queue wait counts; their deadlines are 4x the sequential
ones: a request may wait behind three others). A deadline the controller judges infeasible
(`DeadlineInfeasible`) is a refusal, counted apart from misses. Each cell starts from a fresh
controller; its first 5 requests are warm-ups, left out of every figure.

    .venv/bin/python benchmarks/bench_deadline.py --quick      # a few minutes
    .venv/bin/python benchmarks/bench_deadline.py              # ~20 minutes on a 2-core machine

Writes benchmarks/results/deadline.json, deadline_episode.png and deadline_miss_rates.png.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adallava.core.latency_model import fraction_for_units, predict_ms  # noqa: E402
from adallava.data.world.generate import generate_world, load_heldout  # noqa: E402
from adallava.engine.deadlines import DeadlineInfeasible, calibrate  # noqa: E402
from adallava.eval.heldout import normalize  # noqa: E402
from adallava.inference.answering import Prompt, answer_batch, encode  # noqa: E402
from adallava.inference.prompts import chat_prompt  # noqa: E402
from adallava.io.hub import load_model  # noqa: E402
from adallava.testing.cpu_hog import CpuHog  # noqa: E402
from bench_serve import percentile, random_wide_model  # noqa: E402
from common import RESULTS_DIR, machine, write_json  # noqa: E402

WARMUP = 5  # requests per cell left out of every figure (the controller's learning time)
POLICIES = ("full", "fixed", "profile", "controller", "controller+threads")
CLIENTS = (1, 4)
CONDITIONS = {"idle": None, "hog1": (1, [0]), "hog2": (2, [0, 1])}
DEADLINE_POINTS = (0.25, 0.5, 0.75)  # where the deadlines lie between the smallest and full plan


class Workload:
    """One model and its requests: prompts (cycled), token limit, and how to score an answer."""

    def __init__(self, name, model, processor, prompts, answers, max_new_tokens):
        self.name, self.model, self.processor = name, model, processor
        self.prompts, self.answers, self.max_new_tokens = prompts, answers, max_new_tokens

    def run(self, index: int, budget, start: float):
        """Answer request `index` under `budget` (a fraction or '123.4ms'), counted from `start`."""
        prompt = self.prompts[index % len(self.prompts)]
        return answer_batch(
            self.model, self.processor, [prompt], [budget], [self.max_new_tokens], deadline_start=start
        )[0]

    def correct(self, index: int, text: str) -> bool | None:
        if self.answers is None:
            return None
        return normalize(text) == normalize(self.answers[index % len(self.answers)])


def stack_workload(prompt_tokens: int, max_new_tokens: int) -> Workload:
    model, processor = random_wide_model("tiny-adallava-l", 1024, 16)
    model.scheduler_trained = True  # random scheduler: arbitrary but deterministic plans
    vocab = model.text_config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = [Prompt(torch.randint(5, vocab, (prompt_tokens,), generator=generator)) for _ in range(16)]
    return Workload("stack-16x1024", model, processor, prompts, None, max_new_tokens)


def bundled_workload(max_new_tokens: int, per_family: int) -> Workload:
    model, processor = load_model("tiny-adallava-l")
    model.eval()
    with tempfile.TemporaryDirectory() as folder:
        generate_world(Path(folder) / "test", split="test", seed=1, n=per_family, progress=False)
        questions = load_heldout(Path(folder) / "test")
        order = sorted(range(len(questions)), key=lambda i: (i * 7919) % len(questions))  # mix families
        questions = [questions[i] for i in order]
        prompts = []
        for question in questions:
            with Image.open(question.image) as image:
                prompts.append(
                    encode(processor, chat_prompt(processor, question.prompt), [image.convert("RGB")])
                )
    return Workload(
        "tiny-adallava-l", model, processor, prompts, [q.answer for q in questions], max_new_tokens
    )


def configure(model, policy: str, profile) -> None:
    """A fresh controller for the policy (deadline policies); fraction policies ignore it."""
    keeper = model.deadlines
    if policy == "profile":
        keeper.configure(profile=profile, learn=False, thread_counts=(None,))
    elif policy == "controller":
        keeper.configure(profile=profile, learn=True, thread_counts=(None,))
    elif policy == "controller+threads":
        keeper.configure(profile=profile, learn=True, thread_counts=(2, 1))


def one_request(work: Workload, index: int, budget, start: float) -> dict:
    """Run one request; its record (latency from `start`, fraction, deadline report, correctness)."""
    try:
        answer = work.run(index, budget, start)
    except DeadlineInfeasible as refusal:
        return {"index": index, "refused": True, "minimum_ms": refusal.minimum_ms,
                "at": time.perf_counter()}  # fmt: skip
    done = time.perf_counter()
    report = answer.deadline or {}
    return {
        "index": index,
        "refused": False,
        "at": done,
        "latency_ms": (done - start) * 1e3,
        "waited_ms": report.get("waited_ms", 0.0),
        "fraction": answer.budget if answer.budget is not None else 1.0,
        "slowdown": report.get("slowdown"),
        "threads": report.get("threads"),
        "torch_threads": torch.get_num_threads(),
        "predicted_ms": report.get("predicted_ms"),
        "correct": work.correct(index, answer.text),
    }


def sequential(work: Workload, budget, requests: int) -> list[dict]:
    return [one_request(work, index, budget, time.perf_counter()) for index in range(requests)]


def concurrent(work: Workload, budget, requests: int, clients: int) -> list[dict]:
    """`clients` closed-loop clients (threads); one worker answers their requests one at a time, FIFO,
    each counted from its arrival (so the queue wait is part of its latency). The worker is the main
    thread: torch's intra-op threads (and `torch.set_num_threads`) act on the thread that set them, and
    a Python thread started later runs its ops on one thread here whatever it sets."""
    inbox: queue.Queue = queue.Queue()
    records: list[dict] = []
    tickets = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                index = next(tickets, None)
            if index is None:
                return
            done = threading.Event()
            inbox.put((index, time.perf_counter(), done))
            done.wait()

    senders = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for sender in senders:
        sender.start()
    for _ in range(requests):  # every ticket becomes exactly one job
        index, arrival, done = inbox.get()
        records.append(one_request(work, index, budget, arrival))
        done.set()
    for sender in senders:
        sender.join()
    return sorted(records, key=lambda r: r["at"])


def summarize(records: list[dict], deadline_ms: float | None) -> dict:
    """Figures of one cell after its warm-ups: misses among answered requests, refusals apart."""
    scored = records[WARMUP:]
    answered = [r for r in scored if not r["refused"]]
    ratios = [r["latency_ms"] / deadline_ms for r in answered] if deadline_ms else []
    misses = sum(ratio > 1 for ratio in ratios)
    right = [r["correct"] for r in answered if r["correct"] is not None]
    mean = lambda values: statistics.fmean(values) if values else None  # noqa: E731
    return {
        "requests": len(records),
        "scored": len(scored),
        "answered": len(answered),
        "refusals": len(scored) - len(answered),
        "misses": misses,
        "miss_rate": misses / len(answered) if answered else None,
        "p50_latency_over_deadline": percentile(ratios, 50) if ratios else None,
        "p95_latency_over_deadline": percentile(ratios, 95) if ratios else None,
        "p99_latency_over_deadline": percentile(ratios, 99) if ratios else None,
        "p50_ms": percentile([r["latency_ms"] for r in answered], 50) if answered else None,
        "mean_fraction": mean([r["fraction"] for r in answered]),
        "mean_slowdown": mean([r["slowdown"] for r in answered if r["slowdown"] is not None]),
        "threads_1_share": mean([float(r["threads"] == 1) for r in answered]),
        "accuracy": 100 * sum(right) / len(right) if right else None,
    }


def predicted_ms(work: Workload, profile, units: int) -> float:
    """The profile's prediction for the first prompt under `units` upper units (slowdown 1)."""
    prompt = work.prompts[0]
    images = 0 if prompt.pixel_values is None else prompt.pixel_values.shape[0]
    return predict_ms(profile, units, prompt.num_tokens + 1, work.max_new_tokens, 1, images).total_ms


def time_plans(work: Workload, fractions: list[float], repeats: int) -> dict[float, list[float]]:
    """Latency (ms) of each plan, `repeats` sequential calls each, round-robin (+1 warm-up each)."""
    samples: dict[float, list[float]] = {f: [] for f in fractions}
    for round_index in range(repeats + 1):
        for fraction in fractions:
            start = time.perf_counter()
            work.run(round_index, fraction, start)
            if round_index:
                samples[fraction].append((time.perf_counter() - start) * 1e3)
    return samples


def tuned_fraction(idle_p99: dict[float, float], deadline_ms: float) -> tuple[float, bool]:
    """The largest fraction whose idle p99 meets the deadline (the smallest, flagged False, if none)."""
    fitting = [f for f, p99 in idle_p99.items() if p99 <= deadline_ms]
    return (max(fitting), True) if fitting else (min(idle_p99), False)


def run_cells(work, profile, condition, deadlines, fixed, requests, clients_list, log) -> list[dict]:
    rows = []
    for deadline_ms in deadlines:
        for clients in clients_list:
            cell_deadline = deadline_ms * clients
            for policy in POLICIES:
                configure(work.model, policy, profile)
                if policy == "full":
                    budget = 1.0
                elif policy == "fixed":
                    budget = fixed[deadline_ms]
                else:
                    budget = f"{cell_deadline:.1f}ms"
                started = time.perf_counter()
                if clients == 1:
                    records = sequential(work, budget, requests)
                else:
                    records = concurrent(work, budget, requests, clients)
                row = {"model": work.name, "condition": condition, "policy": policy, "clients": clients,
                       "deadline_ms": cell_deadline, "base_deadline_ms": deadline_ms,
                       "seconds": time.perf_counter() - started,
                       **summarize(records, cell_deadline)}  # fmt: skip
                rows.append(row)
                log(
                    f"  {condition:5} {policy:18} {clients}c {cell_deadline:7.1f}ms: miss "
                    f"{_pct(row['miss_rate'])} refused {row['refusals']:3d} p99/d "
                    f"{_num(row['p99_latency_over_deadline'])} frac {_num(row['mean_fraction'])} "
                    f"acc {_num(row['accuracy'])} ({row['seconds']:.0f} s)"
                )
    return rows


def episode(work, profile, policy, deadline_ms, phases, log) -> list[dict]:
    """A deadline policy through idle -> one hog -> idle, `phases` [(name, seconds)]: one request per
    deadline period (a stream: the next starts when the previous ends, or one deadline after it
    started, whichever is later; a refused request does not make the next come sooner)."""
    configure(work.model, policy, profile)
    budget = f"{deadline_ms:.1f}ms"
    records, index, origin = [], 0, time.perf_counter()
    for phase, seconds in phases:
        hog = CpuHog(processes=1, cores=[0], max_seconds=seconds + 30) if phase == "hog1" else None
        if hog:
            hog.start()
        try:
            end = time.perf_counter() + seconds
            while (start := time.perf_counter()) < end:
                record = one_request(work, index, budget, start)
                record.update(phase=phase, t_s=start - origin)
                records.append(record)
                index += 1
                time.sleep(max(0.0, start + deadline_ms / 1e3 - time.perf_counter()))
        finally:
            if hog:
                hog.stop()
    missed = sum(1 for r in records if not r["refused"] and r["latency_ms"] > deadline_ms)
    refused = sum(r["refused"] for r in records)
    log(
        f"  episode, {policy} at {deadline_ms:.1f} ms: {len(records)} requests, {missed} missed, "
        f"{refused} refused"
    )
    return records


def _counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(c) for c in text.split(","))
    if any(c < 1 for c in counts):
        raise SystemExit(f"client counts must be >= 1, got {text!r}")
    return counts


def _pct(value) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def _num(value) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


def quiet_machine() -> dict:
    """The 1-minute load average and the busiest other processes (`ps`), quiet when load < 0.5."""
    load1 = os.getloadavg()[0]
    try:
        listing = subprocess.run(
            ["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=5
        ).stdout.splitlines()[1:6]
    except (OSError, subprocess.SubprocessError):
        listing = []
    return {"loadavg_1min": load1, "quiet": load1 < 0.5, "top_processes": [line.strip() for line in listing]}


def wait_for_quiet(limit_s: float, log) -> dict:
    """Poll the load every 10 s for up to `limit_s` until it is quiet; the last reading."""
    waited, reading = 0.0, quiet_machine()
    while not reading["quiet"] and waited < limit_s:
        log(f"waiting for a quiet machine: load {reading['loadavg_1min']:.2f}")
        time.sleep(10)
        waited += 10
        reading = quiet_machine()
    return reading | {"waited_s": waited}


def acceptance(rows: list[dict], fixed_rows: dict) -> dict:
    """The issue's targets per model: controller misses under one hog (<= 1%) vs the full model's
    (>= 50%), sequential clients; idle budget used vs the tuned fixed fraction (>= 90%)."""
    out = {}
    for model in sorted({r["model"] for r in rows}):

        def cell(cond, pol, clients=1, model=model):
            return [r for r in rows if r["model"] == model and r["condition"] == cond and r["policy"] == pol
                    and r["clients"] == clients]  # fmt: skip

        pooled = {}
        for policy in POLICIES:
            for clients in CLIENTS:
                chosen = cell("hog1", policy, clients)
                answered = sum(r["answered"] for r in chosen)
                misses = sum(r["misses"] for r in chosen)
                pooled[f"{policy}/{clients}c"] = {
                    "answered": answered,
                    "misses": misses,
                    "refusals": sum(r["refusals"] for r in chosen),
                    "miss_rate": misses / answered if answered else None,
                }
        budget_use = []
        for r in cell("idle", "controller") + cell("idle", "profile"):
            tuned = fixed_rows[model][r["base_deadline_ms"]]
            budget_use.append({
                "policy": r["policy"], "deadline_ms": r["deadline_ms"], "mean_fraction": r["mean_fraction"],
                "fixed_fraction": tuned, "ratio": (r["mean_fraction"] or 0) / tuned,
                "target_met": (r["mean_fraction"] or 0) >= 0.9 * tuned,
            })  # fmt: skip
        out[model] = {"hog1_miss_rates": pooled, "idle_budget_use": budget_use}
    return out


def pooled_table(rows: list[dict], model: str, idle_range: bool = False) -> list[str]:
    """Markdown rows per (condition, clients, policy), pooled over the deadlines of one set."""
    lines = [
        "| condition | clients | policy | answered | miss % | refused | p50 / p95 / p99 of latency/deadline "
        "(worst deadline) | mean fraction | accuracy % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for condition in CONDITIONS:
        for clients in CLIENTS:
            for policy in POLICIES:
                chosen = [
                    r for r in rows if r["model"] == model and r["condition"] == condition
                    and r["clients"] == clients and r["policy"] == policy
                    and bool(r.get("idle_range")) == idle_range
                ]  # fmt: skip
                if not chosen:
                    continue
                answered = sum(r["answered"] for r in chosen)
                misses = sum(r["misses"] for r in chosen)

                def worst(key, chosen=chosen):
                    return max((r[key] for r in chosen if r[key] is not None), default=None)

                def weighted(key, chosen=chosen, answered=answered):
                    known = [r for r in chosen if r[key] is not None and r["answered"]]
                    total = sum(r["answered"] for r in known)
                    return sum(r[key] * r["answered"] for r in known) / total if total else None

                quantiles = " / ".join(
                    _num(worst(f"p{q}_latency_over_deadline")).strip() for q in (50, 95, 99)
                )
                lines.append(
                    f"| {condition} | {clients} | {policy} | {answered} | "
                    f"{_pct(misses / answered if answered else None).strip()} | "
                    f"{sum(r['refusals'] for r in chosen)} | {quantiles} | "
                    f"{_num(weighted('mean_fraction')).strip()} | {_num(weighted('accuracy')).strip()} |"
                )
    return lines


def markdown(payload: dict) -> str:
    """The run as markdown: per model, the pooled tables, the deadlines, and the acceptance figures."""
    out = []
    for model, setup in payload["setups"].items():
        out += [f"### {model}", ""]
        out.append(
            f"Deadlines (sequential; x4 with 4 clients): contention {setup['contention_deadlines_ms']} ms, "
            f"idle range {setup['idle_deadlines_ms']} ms; {setup['requests_per_cell']} requests per cell, "
            f"first {WARMUP} left out."
        )
        out += ["", "Contention deadlines, pooled over the three:", ""]
        out += pooled_table(payload["rows"], model)
        out += ["", "Idle-range deadlines (idle machine only), pooled:", ""]
        out += pooled_table(payload["rows"], model, idle_range=True)
        out += [
            "",
            "| policy | deadline ms | mean fraction | tuned fixed fraction | ratio |",
            "|---|---|---|---|---|",
        ]
        for use in payload["acceptance"][model]["idle_budget_use"]:
            out.append(
                f"| {use['policy']} | {use['deadline_ms']:.1f} | {_num(use['mean_fraction']).strip()} | "
                f"{use['fixed_fraction']:.3f} | {100 * use['ratio']:.0f}% |"
            )
        out.append("")
    return "\n".join(out) + "\n"


def plot(path_episode: Path, path_misses: Path, episodes: dict, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(episodes), 1, figsize=(9, 3.4 * len(episodes)), squeeze=False)
    for ax, (model, data) in zip(axes[:, 0], episodes.items(), strict=True):
        records, deadline = data["records"], data["deadline_ms"]
        answered = [r for r in records if not r["refused"]]
        ax.plot([r["t_s"] for r in answered], [r["latency_ms"] for r in answered], ".-", color="#0072B2",
                lw=0.8, ms=3, label="latency (ms)")  # fmt: skip
        refused = [r for r in records if r["refused"]]
        if refused:
            ax.plot(
                [r["t_s"] for r in refused], [deadline] * len(refused), "x", color="#D55E00", label="refused"
            )
        ax.axhline(deadline, color="black", ls="--", lw=1, label=f"deadline {deadline:.0f} ms")
        hog = [r["t_s"] for r in records if r["phase"] == "hog1"]
        if hog:
            ax.axvspan(min(hog), max(hog), color="#E69F00", alpha=0.15, label="one core hogged")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{model}: through a contention episode (one request per deadline period)")
        twin = ax.twinx()
        twin.step([r["t_s"] for r in answered], [r["fraction"] for r in answered], where="post",
                  color="#009E73", lw=1, label="budget fraction")  # fmt: skip
        twin.set_ylabel("budget fraction")
        twin.set_ylim(0, 1.05)
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left", framealpha=0.6)
    fig.tight_layout()
    fig.savefig(path_episode, dpi=150)
    plt.close(fig)

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 3.6), squeeze=False)
    colours = {"idle": "#56B4E9", "hog1": "#E69F00", "hog2": "#D55E00"}
    for ax, model in zip(axes[0], models, strict=True):
        width = 0.8 / len(CONDITIONS)
        for offset, condition in enumerate(CONDITIONS):
            rates = []
            for policy in POLICIES:
                chosen = [r for r in rows if r["model"] == model and r["condition"] == condition
                          and r["policy"] == policy and r["deadline_ms"] == r["base_deadline_ms"]
                          and not r.get("idle_range")]  # fmt: skip
                answered = sum(r["answered"] for r in chosen)
                rates.append(100 * sum(r["misses"] for r in chosen) / answered if answered else math.nan)
            xs = [i + (offset - 1) * width for i in range(len(POLICIES))]
            ax.bar(xs, rates, width, color=colours[condition], label=condition)
        ax.set_xticks(range(len(POLICIES)), POLICIES, rotation=20, fontsize=8)
        ax.set_ylabel("miss rate (%), sequential clients")
        ax.set_title(f"{model}: contention deadlines")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_misses, dpi=150)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few requests per cell (a smoke run)")
    parser.add_argument("--models", default="stack,bundled", help="comma-separated: stack, bundled")
    parser.add_argument("--stack-requests", type=int, default=None, help="requests per cell (stack)")
    parser.add_argument("--bundled-requests", type=int, default=None, help="requests per cell (bundled)")
    parser.add_argument("--stack-clients", default="1", help="client counts for the stack (default 1: time)")
    parser.add_argument("--bundled-clients", default="1,4", help="client counts for the bundled model")
    parser.add_argument("--stack-prompt-tokens", type=int, default=16)
    parser.add_argument("--stack-new-tokens", type=int, default=2)
    parser.add_argument("--bundled-new-tokens", type=int, default=4)
    parser.add_argument("--hog-seconds", type=float, default=900.0, help="hard limit of each hog process")
    parser.add_argument("--wait-quiet", type=float, default=0.0, help="seconds to wait for load < 0.5 first")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    # `kill` (SIGTERM) becomes SystemExit, so the hogs' `with` blocks stop them on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stack_requests = args.stack_requests or (7 if args.quick else 20)
    bundled_requests = args.bundled_requests or (10 if args.quick else 60)
    plan_repeats = 4 if args.quick else 20
    log = lambda text: print(text, flush=True)  # noqa: E731
    began = time.perf_counter()
    quiet_before = wait_for_quiet(args.wait_quiet, log)
    log(f"load before: {quiet_before}")

    workloads = []
    for name in args.models.split(","):
        if name == "stack":
            work = stack_workload(args.stack_prompt_tokens, args.stack_new_tokens)
            workloads.append((work, stack_requests, _counts(args.stack_clients)))
        elif name == "bundled":
            work = bundled_workload(args.bundled_new_tokens, 4 if args.quick else 20)
            workloads.append((work, bundled_requests, _counts(args.bundled_clients)))
        else:
            raise SystemExit(f"--models: unknown model {name!r} (choose from stack, bundled)")

    rows, setups, episodes, fixed_by_model = [], {}, {}, {}
    for work, requests, clients in workloads:
        for attempt in range(1, 4):
            log(f"{work.name}: calibrating (idle), attempt {attempt}")
            profile = calibrate(work.model, quick=args.quick)
            fractions = [fraction_for_units(profile, u) for u in range(profile.max_upper_units + 1)]
            idle = time_plans(work, fractions, plan_repeats)
            predicted = {f: predicted_ms(work, profile, u) for u, f in enumerate(fractions)}
            # a calibration disturbed by someone else's process over-predicts: the deadline policies
            # would then refuse everything; measure again (the idle plan times are the reference)
            if predicted[1.0] <= 1.3 * statistics.median(idle[1.0]):
                break
            log(f"  profile predicts {predicted[1.0]:.1f} ms for the full plan, measured "
                f"{statistics.median(idle[1.0]):.1f} ms: calibration disturbed, again")  # fmt: skip
        idle_p99 = {f: percentile(s, 99) for f, s in idle.items()}
        with CpuHog(processes=1, cores=[0], max_seconds=args.hog_seconds):
            time.sleep(0.5)
            hogged = time_plans(work, [fractions[0], 1.0], max(4, plan_repeats // 2))
            smallest, full = (statistics.median(hogged[f]) for f in (fractions[0], 1.0))
            deadlines = [round(smallest + p * (full - smallest), 1) for p in DEADLINE_POINTS]
            idle_small, idle_full = (statistics.median(idle[f]) for f in (fractions[0], 1.0))
            idle_deadlines = [round(idle_small + p * (idle_full - idle_small), 1) for p in DEADLINE_POINTS]
            fixed = {d: tuned_fraction(idle_p99, d) for d in deadlines + idle_deadlines}
            setups[work.name] = {
                "requests_per_cell": requests,
                "max_new_tokens": work.max_new_tokens,
                "prompts": len(work.prompts),
                "fractions": fractions,
                "idle_plan_ms": {
                    str(f): {"p50": statistics.median(s), "p99": idle_p99[f]} for f, s in idle.items()
                },
                "hog1_plan_ms": {
                    str(f): {"p50": statistics.median(s), "max": max(s)} for f, s in hogged.items()
                },
                "contention_deadlines_ms": deadlines,
                "idle_deadlines_ms": idle_deadlines,
                "fixed_fraction": {
                    str(d): {"fraction": f, "idle_p99_meets": ok} for d, (f, ok) in fixed.items()
                },
                "clients": list(clients),
                "calibration_attempts": attempt,
                "profile_predicted_ms": {str(f): ms for f, ms in predicted.items()},
            }
            log(
                f"  idle plans p50 {idle_small:.1f}..{idle_full:.1f} ms; under one hog "
                f"{smallest:.1f}..{full:.1f} ms; deadlines {deadlines}, idle deadlines {idle_deadlines}"
            )
            fixed_fraction = {d: f for d, (f, _) in fixed.items()}
            fixed_by_model[work.name] = fixed_fraction
            rows += run_cells(work, profile, "hog1", deadlines, fixed_fraction, requests, clients, log)
        with CpuHog(processes=2, cores=[0, 1], max_seconds=args.hog_seconds):
            time.sleep(0.5)
            rows += run_cells(work, profile, "hog2", deadlines, fixed_fraction, requests, clients, log)
        rows += run_cells(work, profile, "idle", deadlines, fixed_fraction, requests, clients, log)
        idle_rows = run_cells(work, profile, "idle", idle_deadlines, fixed_fraction, requests, clients, log)
        for row in idle_rows:
            row["idle_range"] = True
        rows += idle_rows
        seconds = 3.0 if args.quick else 8.0
        phases = [("idle", seconds), ("hog1", 2 * seconds), ("idle", seconds)]
        for policy in ("controller", "controller+threads"):
            episodes[f"{work.name} / {policy}"] = {
                "deadline_ms": deadlines[1],
                "records": episode(work, profile, policy, deadlines[1], phases, log),
            }

    quiet_after = quiet_machine()
    out_dir = args.out or RESULTS_DIR
    payload = {
        "benchmark": "deadline",
        "quick": args.quick,
        "machine": machine(),
        "load_before": quiet_before,
        "load_after": quiet_after,
        "quiet": quiet_before["quiet"],
        "seconds": time.perf_counter() - began,
        "warmup_requests": WARMUP,
        "deadline_points": DEADLINE_POINTS,
        "setups": setups,
        "rows": rows,
        "acceptance": acceptance(rows, fixed_by_model),
        "episodes": episodes,
    }
    path = write_json("deadline", payload, out_dir)
    tables = markdown(payload)
    (out_dir / "deadline.md").write_text(tables)
    log(tables)
    try:
        plot(out_dir / "deadline_episode.png", out_dir / "deadline_miss_rates.png", episodes, rows)
    except ImportError:
        log("matplotlib is not installed: no plots (pip install 'matplotlib>=3.7')")
    for model, figures in payload["acceptance"].items():
        controller = figures["hog1_miss_rates"]["controller/1c"]["miss_rate"]
        threads = figures["hog1_miss_rates"]["controller+threads/1c"]["miss_rate"]
        full = figures["hog1_miss_rates"]["full/1c"]["miss_rate"]
        log(
            f"{model}: one hog, sequential: controller misses {_pct(controller)}, with threads "
            f"{_pct(threads)}, full model {_pct(full)}"
        )
        for use in figures["idle_budget_use"]:
            log(
                f"  idle {use['policy']} at {use['deadline_ms']:.1f} ms: fraction "
                f"{_num(use['mean_fraction'])} vs fixed {use['fixed_fraction']:.3f} "
                f"({100 * use['ratio']:.0f}%)"
            )
    log(f"wrote {path} in {payload['seconds']:.0f} s (quiet before: {quiet_before}, after: {quiet_after})")


if __name__ == "__main__":
    main()
