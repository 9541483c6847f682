"""Load test of `adallava serve`: throughput and latency at 1, 4 and 16 concurrent clients, with mixed
budgets vs every request at the full budget.

The server runs in this process on a free loopback port (nothing else is contacted); each client sends
its requests one after another over HTTP, so up to `concurrency` requests are in flight. A bounded
number of requests per setting. Latency is measured by the client (request sent -> answer read).
Writes benchmarks/results/serve.json and prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/bench_serve.py --requests 48
    python benchmarks/bench_serve.py --model tiny-adallava-h --concurrency 1,4,16 --requests 96
    python benchmarks/bench_serve.py --random-width 1024 --random-layers 16 --requests 32

`--random-width` swaps the model's text stack for a random, wider Llama (same tokenizer, processor and
vision tower; fresh scheduler): its answers are noise, but its layers cost enough for skipped ones to
show in the latencies, which the bundled tiny models' HTTP and Python overhead hides.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adallava import AdaLlava, AdaptiveConfig  # noqa: E402
from adallava.eval.runner import load_model  # noqa: E402
from adallava.io.hub import resolve_model
from adallava.serve import Settings, create_app  # noqa: E402
from adallava.testing.live_server import QUESTIONS, LiveServer, chat_body, data_url
from common import machine, write_json  # noqa: E402

MIXES = {"mixed": [0.5, 0.6, 0.75, 0.85, 1.0], "full": [1.0]}
SCENE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"


def random_wide_model(name: str, width: int, layers: int):
    """`name`'s processor with a random-weight text stack `layers` x `width` (heads of 64, FFN 2.75x)."""
    _, processor, _ = load_model(name)
    config = LlavaConfig.from_pretrained(resolve_model(name))
    text = config.text_config
    text.num_hidden_layers, text.hidden_size, text.intermediate_size = layers, width, int(width * 2.75)
    text.num_attention_heads = text.num_key_value_heads = max(1, width // 64)
    torch.manual_seed(0)
    base = LlavaForConditionalGeneration(config).eval()
    return AdaLlava.from_base(base, AdaptiveConfig()).eval(), processor


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def load(url: str, concurrency: int, requests: int, budgets: list, max_tokens: int) -> dict:
    """`requests` requests from `concurrency` clients (coroutines on one thread, so the clients take
    little CPU from the server); request i asks QUESTIONS[i] under budgets[i]."""
    image = data_url(SCENE)
    bodies = [
        chat_body(QUESTIONS[i % len(QUESTIONS)], image, budgets[i % len(budgets)], max_tokens=max_tokens)
        for i in range(requests)
    ]
    latencies, batch_sizes, flops_ratio, failures = [], [], [], 0
    server_ms: dict[str, list[float]] = {"queue_ms": [], "prefill_ms": [], "decode_ms": []}
    next_index = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        for index in next_index:  # shared iterator: each request is sent once
            start = time.perf_counter()
            response = await http.post("/v1/chat/completions", json=bodies[index])
            latencies.append((time.perf_counter() - start) * 1e3)
            if response.status_code != 200:
                failures += 1
                continue
            report = response.json()["adallava"]
            batch_sizes.append(report["batch_size"])
            for key, values in server_ms.items():
                values.append(report[key])
            flops_ratio.append(report["prefill_flops"]["llm"] / report["full_prefill_flops"]["llm"])

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "requests": requests,
        "failures": failures,
        "seconds": seconds,
        "throughput_rps": requests / seconds,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "mean_batch_size": statistics.fmean(batch_sizes) if batch_sizes else 0.0,
        "mean_llm_flops_ratio": statistics.fmean(flops_ratio) if flops_ratio else 0.0,
    } | {f"mean_{key}": statistics.fmean(values) if values else 0.0 for key, values in server_ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-adallava-l")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=48, help="requests per (concurrency, mix)")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--random-width", type=int, default=0, help="a random text stack this wide (0: off)")
    parser.add_argument("--random-layers", type=int, default=16, help="its decoder layers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.concurrency.split(",")]

    if args.random_width:
        model, processor = random_wide_model(args.model, args.random_width, args.random_layers)
        adaptive = True
    else:
        model, processor, adaptive = load_model(args.model)
    if not adaptive:
        raise SystemExit(f"--model {args.model!r} is not adaptive: budgets cannot be mixed")
    settings = Settings(
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, max_queue=max(levels) * 2
    )
    rows = []
    with LiveServer(create_app(model, processor, settings, name=args.model)) as server:
        asyncio.run(load(server.url, 2, 8, MIXES["mixed"], args.max_tokens))  # warm-up
        for concurrency in levels:
            for mix, budgets in MIXES.items():  # interleaved, so drifts of a shared machine hit both
                rows.append(
                    {"concurrency": concurrency, "mix": mix, "budgets": budgets}
                    | asyncio.run(load(server.url, concurrency, args.requests, budgets, args.max_tokens))
                )
    payload = {"benchmark": "serve", "args": vars(args) | {"out": None}, "machine": machine(), "rows": rows}
    path = write_json("serve", payload, args.out)

    shape = f" (random text stack {args.random_layers}x{args.random_width})" if args.random_width else ""
    print(f"adallava serve, {args.model}{shape}, {args.requests} requests per row, "
          f"max_tokens {args.max_tokens}, "
          f"max batch {args.max_batch_size}, wait {args.batch_wait_ms:g} ms, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print()
    print("| clients | budgets | req/s | p50 ms | p95 ms | mean batch | queue / prefill / decode ms | "
          "LLM prefill FLOPs / full |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        mix = "mixed 0.5-1.0" if row["mix"] == "mixed" else "all 1.0"
        print(f"| {row['concurrency']} | {mix} | {row['throughput_rps']:.1f} | {row['p50_ms']:.0f} | "
              f"{row['p95_ms']:.0f} | {row['mean_batch_size']:.1f} | {row['mean_queue_ms']:.0f} / "
              f"{row['mean_prefill_ms']:.0f} / {row['mean_decode_ms']:.0f} | "
              f"{row['mean_llm_flops_ratio']:.2f} |"
              + (f" ({row['failures']} failed)" if row["failures"] else ""))  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
