"""Held-out report of the bundled models on a synthetic test world (issue 5's tables).

    python scripts/world_report.py --world runs/world-test --base runs/tiny-llava \
        --adaptive-l runs/tiny-adallava-l --adaptive-h runs/tiny-adallava-h --out runs/report

Writes OUT/world_report.json and OUT/world_report.md: the base model's accuracy overall and per
family, naive early exit at 50% and 75% depth, AdaLLaVA-L/-H at budgets 0.5..1.0 (accuracy, FLOPs,
budget violations), early exit on the adaptive model's own weights at the same depth, and the
scheduler's content awareness at budget 0.75 (distinct plans, per-family layer usage).
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

BUDGETS = (0.5, 0.6, 0.75, 0.85, 1.0)


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
    for fraction in (0.5, 0.75):
        layers = math.floor(n * fraction)
        result = evaluate_heldout(base, processor, questions, layers_run=layers, batch_size=args.batch_size)
        report["base"][f"early_exit_{fraction}"] = summarize(result) | {"layers": layers}
    print(f"base: {report['base']['full']['accuracy']:.1f}%  ({time.perf_counter() - start:.0f} s)")

    for name, folder in (("adallava_l", args.adaptive_l), ("adallava_h", args.adaptive_h)):
        if folder is None:
            continue
        model, processor = load_model(folder)
        rows = {}
        for budget in BUDGETS:
            result = evaluate_heldout(model, processor, questions, budget=budget, batch_size=args.batch_size)
            rows[str(budget)] = {"adaptive": summarize(result)}
            if budget == 0.75:
                report[f"{name}_content_awareness"] = content_awareness(result, n)
            layers = math.floor(n * budget)
            exit_result = evaluate_heldout(
                model, processor, questions, layers_run=layers, batch_size=args.batch_size
            )
            rows[str(budget)]["early_exit_own_weights"] = summarize(exit_result) | {"layers": layers}
            print(f"{name} b={budget}: {result.accuracy:.1f}% (early exit {exit_result.accuracy:.1f}%), "
                  f"violations {result.violations}  ({time.perf_counter() - start:.0f} s)")  # fmt: skip
        report[name] = rows
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
    for fraction in (0.5, 0.75):
        row = base[f"early_exit_{fraction}"]
        lines.append(f"| naive early exit, {row['layers']} layers | {row['accuracy']:.1f} |")
    lines += ["", "Per family (full model):", "", "| family | accuracy |", "|---|---|"]
    lines += [f"| {family} | {acc:.1f} |" for family, acc in base["full"]["per_family"].items()]
    for name, title in (("adallava_l", "AdaLLaVA-L"), ("adallava_h", "AdaLLaVA-H")):
        if name not in report:
            continue
        header = "| budget | accuracy | LLM FLOPs used | violations | early exit, own weights |"
        lines += ["", f"## {title}", "", header, "|---|---|---|---|---|"]
        for budget, row in report[name].items():
            a, e = row["adaptive"], row["early_exit_own_weights"]
            lines.append(
                f"| {budget} | {a['accuracy']:.1f} | {a['llm_fraction']:.3f} | {a['violations']} | "
                f"{e['accuracy']:.1f} ({e['layers']} layers) |"
            )
        aware = report.get(f"{name}_content_awareness")
        if aware:
            lines += ["", f"Content awareness at budget 0.75: {aware['distinct_plans']} distinct plans.", ""]
            lines += ["| family | distinct plans | layer usage (layers 0..N-1) |", "|---|---|---|"]
            for family, usage in aware["layer_usage_per_family"].items():
                cells = " ".join(f"{u:.2f}" for u in usage)
                lines.append(f"| {family} | {aware['distinct_plans_per_family'][family]} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
