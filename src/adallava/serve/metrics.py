"""Prometheus metrics of the server, in the text exposition format (written here: three metric kinds
are all the server needs, so no client library).

Names (docs/serving.md): adallava_requests_total{status}, adallava_cancelled_requests_total{stage},
adallava_request_seconds, adallava_queue_seconds, adallava_prefill_seconds, adallava_decode_seconds,
adallava_budget,
adallava_batch_size, adallava_queue_depth, adallava_running_requests, adallava_preparing_requests,
adallava_prompt_tokens_total, adallava_completion_tokens_total, adallava_prefill_flops_total,
adallava_speculative_draft_tokens_total, adallava_speculative_accepted_tokens_total,
adallava_speculative_acceptance (with --speculative).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BUDGET_BUCKETS = tuple(round(0.1 + 0.05 * i, 2) for i in range(19))  # 0.1, 0.15, ..., 1.0
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
ACCEPTANCE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # 0.1, 0.2, ..., 1.0


class Counter:
    def __init__(self, name: str, help: str, label: str | None = None):
        self.name, self.help, self.label = name, help, label
        self.values: dict[str, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, label: str = "") -> None:
        with self._lock:
            self.values[label] = self.values.get(label, 0.0) + amount

    def value(self, label: str = "") -> float:
        return self.values.get(label, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for label, value in sorted(self.values.items()):
            labels = f'{{{self.label}="{label}"}}' if self.label else ""
            lines.append(f"{self.name}{labels} {_number(value)}")
        if not self.values and not self.label:
            lines.append(f"{self.name} 0")
        return lines


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum, self.count = 0.0, 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == math.inf else _number(bound)
            lines.append(f'{self.name}_bucket{{le="{le}"}} {cumulative}')
        lines += [f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {self.count}"]
        return lines


class Gauge:
    """A value read when scraped (queue depth, running requests)."""

    def __init__(self, name: str, help: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        value = _number(self.read())
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {value}"]


class ServerMetrics:
    """Everything `/metrics` shows. Gauges are attached by the app (they read the batcher)."""

    def __init__(self):
        self.requests = Counter(
            "adallava_requests_total", "chat completion requests answered, by HTTP status", "status"
        )
        self.request_seconds = Histogram(
            "adallava_request_seconds", "arrival to the end of the answer", LATENCY_BUCKETS
        )
        self.queue_seconds = Histogram(
            "adallava_queue_seconds", "submitted to the start of its batch", LATENCY_BUCKETS
        )
        self.prefill_seconds = Histogram(
            "adallava_prefill_seconds", "its batch's prefill (vision tower, prompt, plan)", LATENCY_BUCKETS
        )
        self.decode_seconds = Histogram(
            "adallava_decode_seconds", "its decoding steps after the prefill", LATENCY_BUCKETS
        )
        self.budget = Histogram(
            "adallava_budget", "budget fraction each answered request ran under", BUDGET_BUCKETS
        )
        self.batch_size = Histogram("adallava_batch_size", "requests per generate call", BATCH_BUCKETS)
        self.prompt_tokens = Counter("adallava_prompt_tokens_total", "prompt tokens of answered requests")
        self.completion_tokens = Counter(
            "adallava_completion_tokens_total", "generated tokens of answered requests"
        )
        self.prefill_flops = Counter(
            "adallava_prefill_flops_total", "prefill FLOPs of answered requests (decoder stack)"
        )
        self.cancelled = Counter(
            "adallava_cancelled_requests_total",
            "chat completion requests whose client left before the answer, by stage (reading, preparing, "
            "queued, running, streaming); not counted in adallava_requests_total unless a stream had begun",
            "stage",
        )
        self.deadlines = Counter(
            "adallava_deadline_requests_total",
            "requests with a deadline budget, by result: met, missed (answered late), infeasible (refused: "
            "even the smallest plan was predicted to miss it)",
            "result",
        )
        self.draft_tokens = Counter(
            "adallava_speculative_draft_tokens_total",
            "tokens drafted for answered requests (--speculative; acceptance = accepted / draft tokens)",
        )
        self.accepted_tokens = Counter(
            "adallava_speculative_accepted_tokens_total",
            "drafted tokens the requests' own plans accepted (--speculative)",
        )
        self.acceptance = Histogram(
            "adallava_speculative_acceptance",
            "share of each answered request's drafted tokens that were accepted (--speculative)",
            ACCEPTANCE_BUCKETS,
        )
        self.gauges: list[Gauge] = []

    def add_gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def render(self) -> str:
        parts = [
            self.requests,
            self.cancelled,
            self.deadlines,
            self.request_seconds,
            self.queue_seconds,
            self.prefill_seconds,
            self.decode_seconds,
            self.budget,
            self.batch_size,
            self.prompt_tokens,
            self.completion_tokens,
            self.prefill_flops,
            self.draft_tokens,
            self.accepted_tokens,
            self.acceptance,
            *self.gauges,
        ]
        return "\n".join(line for part in parts for line in part.render()) + "\n"


def _number(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() else repr(float(value))
