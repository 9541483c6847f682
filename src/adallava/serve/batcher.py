"""Dynamic batching: requests that arrive together run as one batch, each under its own budget.

The event loop never runs the model. Requests wait in a bounded queue (full: 429 with Retry-After);
one task takes the first waiting request, waits `batch_wait_ms` for others to join (unless the batch
is already full), and hands the batch to a single worker thread. A batch that raises is retried one
request at a time, so a bad request gets its own error and its batch-mates their normal answers.
Requests whose client gave up (timeout, disconnect) are skipped, or stopped early if running.
On shutdown the queue is drained: every accepted request is answered before the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adallava.engine.deadlines import DeadlineInfeasible
from adallava.inference.answering import Prompt
from adallava.serve.errors import APIError
from adallava.serve.settings import Settings

log = logging.getLogger("adallava.serve")

TOKEN, DONE, ERROR = "token", "done", "error"


@dataclass(eq=False)
class Job:
    """One request on its way through the batcher. The worker thread reports to it through
    `events` (on the event loop): TOKEN events (streaming requests only), then DONE or ERROR."""

    prompt: Prompt
    budget: float | str | None
    max_tokens: int
    stream: bool
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)
    arrived: float | None = None  # when the request reached the server: a deadline counts from here
    best_effort: bool = False  # a deadline that cannot be met runs the smallest plan instead of a 400
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # the client gave up: skip it, or let generation stop its row
    started: bool = False  # taken into a batch (the model is running it)
    streamed: int = 0  # tokens already sent, so that a retried batch does not send them twice

    # ---- worker side (any thread) ----
    def emit(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    # ---- event-loop side ----
    def cancel(self) -> None:
        self.cancelled = True

    async def next_event(self, deadline: float, timeout_s: float) -> tuple[str, Any]:
        """The next event, or APIError 504 (and the job cancelled) once `deadline` (perf_counter) passes."""
        try:
            return await asyncio.wait_for(self.events.get(), max(0.0, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            self.cancel()
            raise APIError(
                504,
                f"the request was not answered within {timeout_s:g} s (--request-timeout-s); the server is "
                "busy or the request is long",
                type="timeout_error",
                code="timeout",
            ) from None

    async def result(self, deadline: float, timeout_s: float):
        """The engine's result for this job; raises its APIError, or 504 past the deadline."""
        while True:
            kind, value = await self.next_event(deadline, timeout_s)
            if kind == DONE:
                return value
            if kind == ERROR:
                raise value


class Batcher:
    """Owns the queue, the batching task and the model's worker thread. `engine.run(jobs)` (called
    in the worker thread) returns one result per job or raises."""

    def __init__(self, engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.queue: asyncio.Queue | None = None
        self.running = 0  # requests in the batch the worker is running
        self.closing = False
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_observers: list = []
        self.waiting: set[Job] = set()  # submitted, not yet taken into a batch

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not yet in a batch), not counting those whose client left:
        they still sit in the queue until the batcher reaches them, but hold no place in it."""
        return sum(not job.cancelled for job in self.waiting)

    def on_batch(self, observer) -> None:
        """Call `observer(size)` for each batch handed to the model."""
        self._batch_observers.append(observer)

    async def start(self) -> None:
        self.queue = asyncio.Queue()  # bounded by `depth` in `submit`
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adallava-model")
        self._task = asyncio.create_task(self._batches())

    def submit(
        self,
        prompt: Prompt,
        budget,
        max_tokens: int,
        stream: bool,
        arrived: float | None = None,
        best_effort: bool = False,
    ) -> Job:
        """Queue a request; 429 when the queue is full, 503 once shutdown has begun."""
        if self.closing or self.queue is None:
            raise APIError(
                503,
                "the server is shutting down",
                type="server_error",
                code="shutting_down",
                headers={"Connection": "close"},
            )
        if self.depth >= self.settings.max_queue:
            raise APIError(
                429,
                f"the server is at capacity: {self.settings.max_queue} requests are already waiting "
                f"(--max-queue); retry after {self.settings.retry_after_s} s",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        job = Job(
            prompt,
            budget,
            max_tokens,
            stream,
            asyncio.get_running_loop(),
            arrived=arrived,
            best_effort=best_effort,
        )
        self.waiting.add(job)
        self.queue.put_nowait(job)
        return job

    def begin_closing(self) -> None:
        """Refuse new requests (503) from now on; what is queued or running is still answered."""
        self.closing = True

    async def close(self) -> None:
        """Stop taking requests, answer every queued and running one, then stop the worker."""
        self.closing = True
        if self.queue is not None:
            await self.queue.join()
        if self._task is not None:
            self._task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.settings.batch_wait_ms / 1e3
        while True:
            batch = [await self.queue.get()]
            if wait > 0 and self.depth < self.settings.max_batch_size:
                await asyncio.sleep(wait)  # let requests that arrive together join this batch
            while (
                sum(not job.cancelled for job in batch) < self.settings.max_batch_size
                and not self.queue.empty()
            ):
                batch.append(self.queue.get_nowait())
            self.waiting.difference_update(batch)
            live = [job for job in batch if not job.cancelled]
            for job in live:
                job.started = True
            try:
                if live:
                    self.running = len(live)
                    for observer in self._batch_observers:
                        observer(len(live))
                    await loop.run_in_executor(self._executor, self._execute, live)
            finally:
                self.running = 0
                for _ in batch:
                    self.queue.task_done()

    def _execute(self, jobs: list[Job]) -> None:
        """Worker thread: run a batch; if it raises, run its requests one at a time."""
        try:
            results = self.engine.run(jobs)
        except Exception as error:  # noqa: BLE001 - isolated below, never lost
            if len(jobs) > 1:
                log.info("a batch of %d failed (%s); retrying its requests one at a time", len(jobs), error)
                for job in jobs:
                    self._execute([job])
                return
            jobs[0].emit(ERROR, as_api_error(error))
            return
        for job, result in zip(jobs, results, strict=True):
            job.emit(DONE, result)


def as_api_error(error: Exception) -> APIError:
    """The model's ValueErrors are the request's fault (a FLOPs cap below the prefix's cost, ...): 400.
    Anything else is ours: 500, with the traceback in the server log, not in the response."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, DeadlineInfeasible):
        return APIError(400, str(error), param="budget", code="deadline_infeasible")
    if isinstance(error, ValueError):
        # The request ran alone, so the model's "row 0" is noise to the client.
        return APIError(400, str(error).replace(" for row 0", ""), code="invalid_request")
    log.error("generation failed", exc_info=error)
    return APIError(
        500,
        f"internal error while generating ({type(error).__name__}); the server log has the details",
        type="server_error",
        code="internal_error",
    )
