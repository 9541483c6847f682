"""`adallava serve` under bad traffic (issue 17): how good requests fare beside hostile input, clients
that give up, a burst past the queue, and requests with infeasible FLOPs caps.

The server runs as its own process (`adallava serve`) on a free loopback port (nothing else is
contacted), so its resident memory can be read. Good traffic is `--clients` clients each sending its
requests one after another (`--requests` in all per scenario); bad traffic runs beside it:

- baseline: good traffic alone.
- hostile (and "hostile < 1 MB", without the 15 MB text): plus 2 clients cycling through the probe's
  hostile requests at `--bad-rate` requests/s in all (testing.live_server.hostile_requests:
  a 1x100000 PNG, 15 MB of text, JSON edge cases, wrong types, ...). Each must be a quick 4xx.
- abandon: plus 2 clients that send a request (max_tokens 64) and hang up after 50 ms. Their work
  must be dropped (counted in adallava_cancelled_requests_total, not as 200).
- burst: plus `--burst` requests sent at once, beyond --max-queue: the excess must be 429 at once.
- bad budget: 15% of the good clients' requests carry a FLOPs cap below the prefix's cost ("1K"):
  each must be a 400 at preparation, and batching must not suffer.

Reported per scenario: good requests' throughput, p50 / p95 latency and mean batch size; the bad
requests' statuses and slowest answer; the server's RSS growth. JSON: benchmarks/results/serve_faults.json.

    python benchmarks/bench_serve_faults.py                 # about a minute on 2 CPU cores
    python benchmarks/bench_serve_faults.py --requests 192 --clients 16
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adallava.testing.live_server import QUESTIONS, ServerProcess, chat_body, data_url, hostile_requests  # noqa: E402
from common import machine, write_json  # noqa: E402

SCENE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"
BUDGETS = [0.5, 0.6, 0.75, 0.85, 1.0]
BAD_BUDGET_SHARE = 0.15


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Traffic:
    """What one scenario's clients saw: good requests' latencies and batch sizes, and the status and
    latency of every bad request."""

    def __init__(self):
        self.good_ms: list[float] = []
        self.batch_sizes: list[int] = []
        self.good_failures: collections.Counter = collections.Counter()  # status -> count
        self.bad_status: collections.Counter = collections.Counter()
        self.bad_ms: list[float] = []
        self.refused_ms: list[float] = []  # the bad requests answered 429

    def summary(self, seconds: float) -> dict:
        return {
            "good_requests": len(self.good_ms),
            "good_failures": dict(self.good_failures),
            "good_throughput_rps": len(self.good_ms) / seconds,
            "good_p50_ms": percentile(self.good_ms, 50),
            "good_p95_ms": percentile(self.good_ms, 95),
            "mean_batch_size": statistics.fmean(self.batch_sizes) if self.batch_sizes else 0.0,
            "bad_requests": sum(self.bad_status.values()),
            "bad_status": dict(sorted(self.bad_status.items())),
            "bad_max_ms": max(self.bad_ms, default=0.0),
            "refused_p95_ms": percentile(self.refused_ms, 95),
        }


async def good_clients(
    http: httpx.AsyncClient, traffic: Traffic, clients: int, requests: int, bad_share: float
):
    """`requests` requests from `clients` clients; every 1/bad_share-th carries an infeasible cap."""
    image = data_url(SCENE)
    every = round(1 / bad_share) if bad_share else 0
    indices = iter(range(requests))

    async def client() -> None:
        for i in indices:  # shared: each request is sent once
            bad = every and i % every == every - 1
            budget = "1K" if bad else BUDGETS[i % len(BUDGETS)]
            body = chat_body(QUESTIONS[i % len(QUESTIONS)], image, budget, max_tokens=8)
            start = time.perf_counter()
            response = await http.post("/v1/chat/completions", json=body)
            ms = (time.perf_counter() - start) * 1e3
            if bad:
                traffic.bad_status[response.status_code] += 1
                traffic.bad_ms.append(ms)
            elif response.status_code == 200:
                traffic.good_ms.append(ms)
                traffic.batch_sizes.append(response.json()["adallava"]["batch_size"])
            else:
                traffic.good_failures[response.status_code] += 1

    await asyncio.gather(*(client() for _ in range(clients)))


async def hostile_clients(url: str, traffic: Traffic, stop: asyncio.Event, largest: int, rate: float) -> None:
    """2 clients cycling through the hostile requests of at most `largest` bytes, `rate` requests/s
    in all (at most: each client waits for its answer)."""
    cases = [case for case in hostile_requests(data_url(SCENE)).values() if len(case.body) <= largest]

    async def client(offset: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            index = offset
            while not stop.is_set():
                case = cases[index % len(cases)]
                start = time.perf_counter()
                response = await http.post(
                    "/v1/chat/completions", content=case.body, headers={"content-type": case.content_type}
                )
                elapsed = time.perf_counter() - start
                traffic.bad_ms.append(elapsed * 1e3)
                traffic.bad_status[response.status_code] += 1
                index += 1
                await asyncio.sleep(max(0.0, 2 / rate - elapsed))

    await asyncio.gather(client(0), client(len(cases) // 2))


async def abandoning_clients(port: int, traffic: Traffic, stop: asyncio.Event) -> None:
    """Clients that send a 64-token request and hang up after 50 ms, again and again."""
    body = json.dumps(chat_body(QUESTIONS[1], data_url(SCENE), max_tokens=64)).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def client() -> None:
        while not stop.is_set():
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            traffic.bad_status["abandoned"] += 1

    await asyncio.gather(client(), client())


async def burst(http_url: str, traffic: Traffic, size: int) -> None:
    """`size` requests at once, each on its own connection."""
    body = chat_body(QUESTIONS[0], data_url(SCENE), 0.75, max_tokens=8)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=http_url, timeout=120, limits=limits) as http:

        async def one() -> None:
            start = time.perf_counter()
            response = await http.post("/v1/chat/completions", json=body)
            ms = (time.perf_counter() - start) * 1e3
            traffic.bad_ms.append(ms)
            traffic.bad_status[response.status_code] += 1
            if response.status_code == 429:
                traffic.refused_ms.append(ms)

        await asyncio.gather(*(one() for _ in range(size)))


async def scenario(server: ServerProcess, name: str, args) -> dict:
    traffic, stop = Traffic(), asyncio.Event()
    limits = httpx.Limits(max_connections=args.clients)
    before_mb, before_cpu = server.rss_mb(), server.cpu_seconds()
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
        extra = []
        if name in ("hostile", "hostile < 1 MB"):
            largest = 2**20 if name == "hostile < 1 MB" else 2**30
            hostile = hostile_clients(server.url, traffic, stop, largest, args.bad_rate)
            extra.append(asyncio.create_task(hostile))
        elif name == "abandon":
            extra.append(asyncio.create_task(abandoning_clients(server.port, traffic, stop)))
        elif name == "burst":
            extra.append(asyncio.create_task(burst(server.url, traffic, args.burst)))
        start = time.perf_counter()
        share = BAD_BUDGET_SHARE if name == "bad budget" else 0.0
        await good_clients(http, traffic, args.clients, args.requests, share)
        seconds = time.perf_counter() - start
        stop.set()
        await asyncio.gather(*extra)
    await asyncio.sleep(0.5)  # let cancelled work and counters settle
    metrics = httpx.get(server.url + "/metrics").text
    cancelled = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("adallava_cancelled_requests_total{")
    }
    growth, cpu = server.rss_mb() - before_mb, server.cpu_seconds() - before_cpu
    return (
        {"scenario": name, "seconds": seconds, "server_cpu_s": cpu, "rss_growth_mb": growth}
        | traffic.summary(seconds)
        | {"cancelled_so_far": cancelled}
    )


async def run(server: ServerProcess, args) -> list[dict]:
    """Each bad scenario right after a baseline run (the machine may be shared: a pair sees the same
    conditions), `--repeats` times; rows in that order."""
    warm = Traffic()
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        await good_clients(http, warm, 2, 8, 0.0)
    rows = []
    for repeat in range(args.repeats):
        for name in args.scenarios.split(","):
            for run_name in ("baseline", name):
                rows.append(await scenario(server, run_name, args) | {"pair": name, "repeat": repeat})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-adallava-l")
    parser.add_argument("--clients", type=int, default=8, help="good clients")
    parser.add_argument("--requests", type=int, default=96, help="good requests per scenario")
    parser.add_argument("--bad-rate", type=float, default=20.0, help="hostile requests per second")
    parser.add_argument("--burst", type=int, default=200, help="requests sent at once in the burst scenario")
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument(
        "--scenarios",
        default="hostile,hostile < 1 MB,abandon,burst,bad budget",
        help="each paired with a baseline",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()

    flags = [
        "--model",
        args.model,
        "--max-queue",
        str(args.max_queue),
        "--max-batch-size",
        str(args.max_batch_size),
    ]
    with ServerProcess(*flags) as server:
        start_mb = server.rss_mb()
        rows = asyncio.run(run(server, args))
        end_mb = server.rss_mb()
        log = server.log()
    payload = {
        "benchmark": "serve_faults",
        "args": vars(args) | {"out": None},
        "machine": machine(),
        "rss_mb": {"start": start_mb, "end": end_mb},
        "server_tracebacks": log.count("Traceback"),
        "rows": rows,
    }
    path = write_json("serve_faults", payload, args.out)

    print(f"adallava serve under bad traffic: {args.model}, {args.clients} good clients, "
          f"{args.requests} good requests per scenario, max_tokens 8, max batch {args.max_batch_size}, "
          f"max queue {args.max_queue}")  # fmt: skip
    print()
    print("| scenario | good req/s | good p50 ms | good p95 ms | mean batch | bad requests: statuses | "
          "slowest bad ms | server CPU s | RSS growth MB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for row in rows:
        if row["scenario"] == "baseline":
            row = row | {"scenario": f"baseline (before {row['pair']})"}
        statuses = ", ".join(f"{count} x {status}" for status, count in row["bad_status"].items()) or "-"
        if row["refused_p95_ms"]:
            statuses += f" (429 p95 {row['refused_p95_ms']:.0f} ms)"
        print(f"| {row['scenario']} | {row['good_throughput_rps']:.1f} | {row['good_p50_ms']:.0f} | "
              f"{row['good_p95_ms']:.0f} | {row['mean_batch_size']:.1f} | {statuses} | "
              f"{row['bad_max_ms']:.0f} | {row['server_cpu_s']:.1f} | {row['rss_growth_mb']:.0f} |"
              + (f" (good failed: {row['good_failures']})" if row["good_failures"] else ""))  # fmt: skip
    cancelled, tracebacks = rows[-1]["cancelled_so_far"], payload["server_tracebacks"]
    print(f"\nserver RSS {start_mb:.0f} -> {end_mb:.0f} MB; cancelled by stage: {cancelled}; "
          f"tracebacks in the server log: {tracebacks}")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
