"""Held-out report of the bundled models on a synthetic test world (issues 5 and 18).

    python scripts/world_report.py --world runs/world-test --base runs/tiny-llava \
        --adaptive-l runs/tiny-adallava-l --adaptive-h runs/tiny-adallava-h \
        --prumerge runs/tiny-adallava-l-prumerge --out runs/report

Writes OUT/world_report.json and OUT/world_report.md: the base model's accuracy overall and per
family, naive early exit at 50%, 60% and 75% depth, AdaLLaVA-L/-H and the PruMerge+-trained
AdaLLaVA-L at budgets 0.5, 0.55, ..., 1.0 (accuracy, FLOPs, budget violations), early exit on the
adaptive model's own weights at 50%, 60% and 75% depth, the scheduler's content awareness at budget
0.75 (distinct plans, per-family layer usage), and issue 18's acceptance checks.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from adallava.data.world.generate import load_heldout
from adallava.eval.heldout import evaluate_heldout
from adallava.io.hub import load_model

BUDGETS = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))  # 0.5, 0.55, ..., 1.0
EXIT_FRACTIONS = (0.5, 0.6, 0.75)  # naive early exit: the first floor(N * f) layers
MODELS = {
    "adallava_l": "AdaLLaVA-L",
    "adallava_h": "AdaLLaVA-H",
    "adallava_l_prumerge": "AdaLLaVA-L, PruMerge+-trained",
}


def summarize(result) -> dict:
    return {
        "accuracy": round(result.accuracy, 2),
        "per_family": {k: round(v, 2) for k, v in result.per_family.items()},
        "llm_flops": result.llm_flops,
        "llm_fraction": result.llm_flops / result.full_llm_flops,
        "violations": result.violations,
        "n": result.n,
    }


def content_awareness(result, num_layers: int) -> dict:
    by_family: dict[str, list[list[int]]] = defaultdict(list)
    for family, plan in zip(result.families, result.plans, strict=True):
        by_family[family].append(plan)
    usage = {
        family: [round(sum(i in p for p in plans) / len(plans), 3) for i in range(num_layers)]
        for family, plans in sorted(by_family.items())
    }
    counts = Counter(tuple(p) for p in result.plans)
    return {
        "distinct_plans": len(counts),
        "most_common": [[list(p), c] for p, c in counts.most_common(5)],
        "distinct_plans_per_family": {
            f: len({tuple(p) for p in plans}) for f, plans in sorted(by_family.items())
        },
        "layer_usage_per_family": usage,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adaptive-l", type=Path)
    parser.add_argument("--adaptive-h", type=Path)
    parser.add_argument("--prumerge", type=Path, help="AdaLLaVA-L fine-tuned with PruMerge+ token selection")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    questions = load_heldout(args.world)
    report: dict = {"world": str(args.world), "questions": len(questions)}
    start = time.perf_counter()

    base, processor = load_model(args.base)
    n = base.num_layers
    report["base"] = {
        "full": summarize(evaluate_heldout(base, processor, questions, batch_size=args.batch_size))
    }
    for fraction in EXIT_FRACTIONS:
        layers = math.floor(n * fraction)
        result = evaluate_heldout(base, processor, questions, layers_run=layers, batch_size=args.batch_size)
        report["base"][f"early_exit_{fraction}"] = summarize(result) | {"layers": layers}
    print(f"base: {report['base']['full']['accuracy']:.1f}%  ({time.perf_counter() - start:.0f} s)")

    folders = {
        "adallava_l": args.adaptive_l,
        "adallava_h": args.adaptive_h,
        "adallava_l_prumerge": args.prumerge,
    }
    for name, folder in folders.items():
        if folder is None:
            continue
        model, processor = load_model(folder)
        rows = {}
        for budget in BUDGETS:
            result = evaluate_heldout(model, processor, questions, budget=budget, batch_size=args.batch_size)
            rows[str(budget)] = {"adaptive": summarize(result)}
            if budget == 0.75:
                report[f"{name}_content_awareness"] = content_awareness(result, n)
            if name == "adallava_l" and budget in EXIT_FRACTIONS:
                layers = math.floor(n * budget)
                exit_result = evaluate_heldout(
                    model, processor, questions, layers_run=layers, batch_size=args.batch_size
                )
                rows[str(budget)]["early_exit_own_weights"] = summarize(exit_result) | {"layers": layers}
            used = result.llm_flops / result.full_llm_flops
            print(f"{name} b={budget}: {result.accuracy:.1f}%, FLOPs {used:.3f}"
                  f", violations {result.violations}  ({time.perf_counter() - start:.0f} s)")  # fmt: skip
        report[name] = rows
    report["acceptance"] = acceptance(report)
    report["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "world_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "world_report.md").write_text(markdown(report, n))
    print(f"wrote {args.out / 'world_report.md'} in {report['seconds']:.0f} s")


def markdown(report: dict, num_layers: int) -> str:
    base = report["base"]
    lines = [f"# Held-out accuracy on the synthetic world ({report['questions']} questions)", ""]
    lines += ["## Base model (tiny-llava)", "", "| setting | accuracy |", "|---|---|"]
    lines.append(f"| full ({num_layers} layers) | {base['full']['accuracy']:.1f} |")
    for fraction in EXIT_FRACTIONS:
        row = base[f"early_exit_{fraction}"]
        lines.append(f"| naive early exit, {row['layers']} layers | {row['accuracy']:.1f} |")
    lines += ["", "Per family (full model):", "", "| family | accuracy |", "|---|---|"]
    lines += [f"| {family} | {acc:.1f} |" for family, acc in base["full"]["per_family"].items()]
    for name, title in MODELS.items():
        if name not in report:
            continue
        header = (
            "| budget | accuracy | LLM prefill FLOPs | used / full | violations | early exit, own weights |"
        )
        lines += ["", f"## {title}", "", header, "|---|---|---|---|---|---|"]
        for budget, row in report[name].items():
            a, e = row["adaptive"], row.get("early_exit_own_weights")
            exit_cell = f"{e['accuracy']:.1f} ({e['layers']} layers)" if e else ""
            lines.append(
                f"| {budget} | {a['accuracy']:.1f} | {a['llm_flops'] / 1e6:.2f}M | {a['llm_fraction']:.3f} | "
                f"{a['violations']} | {exit_cell} |"
            )
        aware = report.get(f"{name}_content_awareness")
        if aware:
            lines += ["", f"Content awareness at budget 0.75: {aware['distinct_plans']} distinct plans.", ""]
            lines += ["| family | distinct plans | layer usage (layers 0..N-1) |", "|---|---|---|"]
            for family, usage in aware["layer_usage_per_family"].items():
                cells = " ".join(f"{u:.2f}" for u in usage)
                lines.append(f"| {family} | {aware['distinct_plans_per_family'][family]} | {cells} |")
    checks = report.get("acceptance")
    if checks:
        lines += ["", "## Acceptance (issue 18)", "", "| check | value | passes |", "|---|---|---|"]
        lines += [f"| {c['check']} | {c['value']} | {'yes' if c['passes'] else '**no**'} |" for c in checks]
    return "\n".join(lines) + "\n"


def acceptance(report: dict) -> list[dict]:
    """Issue 18's acceptance points, each as {check, value, passes}, for the models in the report."""
    checks = []

    def check(text: str, value, passes: bool) -> None:
        checks.append({"check": text, "value": value, "passes": bool(passes)})

    def curve(name: str) -> tuple[list[float], list[float], list[int]]:
        rows = [report[name][str(b)]["adaptive"] for b in BUDGETS]
        return [r["accuracy"] for r in rows], [r["llm_flops"] for r in rows], [r["violations"] for r in rows]

    def monotone(scores: list[float], slack: float = 1.0) -> bool:  # never `slack` below any lower budget's
        return all(score >= max(scores[:i]) - slack for i, score in enumerate(scores) if i)

    base = report["base"]
    if "adallava_l" in report:
        acc, flops, violations = curve("adallava_l")
        check(
            "AdaLLaVA-L: distinct mean-FLOPs points over the grid (>= 8)",
            len(set(flops)),
            len(set(flops)) >= 8,
        )
        check("AdaLLaVA-L: score non-decreasing in budget (1 point slack)", acc, monotone(acc))
        ratio = acc[BUDGETS.index(0.6)] / acc[-1]
        check("AdaLLaVA-L: at 0.6, share of its full-budget score (>= 0.95)", round(ratio, 3), ratio >= 0.95)
        check("AdaLLaVA-L: violations over the grid (0)", sum(violations), sum(violations) == 0)
        gap = acc[BUDGETS.index(0.6)] - base["early_exit_0.6"]["accuracy"]
        check(
            "naive early exit on the base at 0.6: points below AdaLLaVA-L at 0.6 (>= 10)",
            round(gap, 2),
            gap >= 10,
        )
    if "adallava_l_prumerge" in report and "adallava_l" in report:
        acc, flops, _ = curve("adallava_l_prumerge")
        full_acc, full_flops, _ = curve("adallava_l")
        share = acc[-1] / full_acc[-1]
        check(
            "PruMerge+-trained: share of AdaLLaVA-L's full-budget score (>= 0.90)",
            round(share, 3),
            share >= 0.9,
        )
        prefill = flops[-1] / full_flops[-1]
        check("PruMerge+-trained: LLM prefill FLOPs at 1.0 over AdaLLaVA-L's (<= 0.60)", round(prefill, 3),
              prefill <= 0.6)  # fmt: skip
        check("PruMerge+-trained: score non-decreasing in budget (1 point slack)", acc, monotone(acc))
    if "adallava_h" in report:
        acc, _, violations = curve("adallava_h")
        drop = base["full"]["accuracy"] - acc[-1]
        check("AdaLLaVA-H: points below the base at 1.0 (<= 1)", round(drop, 2), drop <= 1)
        check("AdaLLaVA-H: violations over the grid (0)", sum(violations), sum(violations) == 0)
    return checks


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
