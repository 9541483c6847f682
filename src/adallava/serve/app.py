"""The HTTP app: OpenAI-compatible chat completions with a budget per request, models, health,
Prometheus metrics, and a page at `/` to try it.

    app = create_app(model, processor, Settings(), name="tiny-adallava-l")
    uvicorn.run(app, host="127.0.0.1", port=8000)

The server is thin: every answer comes from `answering.answer_batch`, the same call `adallava ask`
makes. Every error is an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`.

In reading order: `create_app` (the wiring), `lifespan`, `server_metrics`, the error handlers, `Routes`
(the handlers and the streaming response), then the response fields and `TextDeltas`.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from adallava.serve import openapi
from adallava.serve.batcher import DONE, ERROR, TOKEN, Batcher, Job
from adallava.serve.engine import Result, ServedModel
from adallava.serve.errors import APIError, too_large
from adallava.serve.metrics import ServerMetrics
from adallava.serve.openapi import install_openapi
from adallava.serve.protocol import (
    ParsedRequest,
    chunk_body,
    completion_body,
    completion_id,
    schema_error,
    sse,
)
from adallava.serve.settings import Settings

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("adallava.serve")


def create_app(
    model,
    processor,
    settings: Settings | None = None,
    *,
    name: str = "adallava",
    adaptive: bool = True,
    api_key: str | None = None,
) -> FastAPI:
    """The server for one loaded model. `adaptive=False` for a base model (no trained scheduler):
    it runs every layer and refuses budgets. `api_key`: when given, /v1/* and /metrics require
    `Authorization: Bearer <api_key>` (401 otherwise); the page and /health stay open.

    Wiring only: the model and its batcher, the metrics, the error handlers, the routes (`Routes`)
    and the OpenAPI document. `app.state` holds `served`, `batcher`, `metrics` and `settings`; tests
    and benchmarks reach in there."""
    settings = settings or Settings()
    served = ServedModel(model, processor, name, adaptive, settings)
    batcher = Batcher(served, settings)
    metrics = server_metrics(batcher)
    app = FastAPI(title="adallava", summary="latency-adaptive LLaVA, a budget per request", lifespan=lifespan)
    app.state.served, app.state.batcher = served, batcher
    app.state.metrics, app.state.settings = metrics, settings
    add_error_handlers(app)
    routes = Routes(served, batcher, metrics, settings, api_key)
    routes.add_to(app)
    metrics.add_gauge(
        "adallava_preparing_requests", "requests being read and prepared", lambda: routes.preparing
    )
    install_openapi(app)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Starts the batcher's worker with the server; at shutdown (uvicorn has stopped accepting) it
    answers what was accepted before the worker stops.

    At start it also freezes what is allocated so far (the model, torch, transformers, the app) out of
    the garbage collector's reach (`gc.freeze`): a full collection otherwise walks those ~400,000
    objects, 240 ms on the 2-core machine, and stalls the batch that runs meanwhile (bench_serve's p95
    at 4 clients was 280-300 ms against a p50 of 70-79 ms; docs/serving.md). Unfrozen at shutdown."""
    batcher: Batcher = app.state.batcher
    await batcher.start()
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
    await batcher.close()
    app.state.served.close()


def server_metrics(batcher: Batcher) -> ServerMetrics:
    """The Prometheus metrics, with the batcher's queue depth and running batch as live gauges and
    the size of every batch it runs observed."""
    metrics = ServerMetrics()
    metrics.add_gauge("adallava_queue_depth", "requests waiting for the model", lambda: batcher.depth)
    metrics.add_gauge("adallava_running_requests", "requests in the running batch", lambda: batcher.running)
    batcher.on_batch(metrics.batch_size.observe)
    return metrics


# ---- errors: always OpenAI's shape, never a traceback ----


def add_error_handlers(app: FastAPI) -> None:
    """Every error the app can meet, answered as an OpenAI-style error body."""
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


async def api_error(request: Request, error: APIError) -> JSONResponse:
    """An APIError as its status, its body and its headers (e.g. Retry-After)."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """A body FastAPI's own validation refused, as a 400 naming the offending field."""
    return await api_error(request, schema_error(list(error.errors())))


async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's errors (an unknown path, a wrong method) with their status and headers (`Allow` on a
    405), e.g. 404 not_found."""
    kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {error.detail}"
    headers = dict(error.headers or {})
    return await api_error(request, APIError(error.status_code, message, code=kind, headers=headers))


async def unexpected(request: Request, error: Exception) -> JSONResponse:
    """A bug outside the chat route (which answers its own): logged with its traceback, answered as a
    500 that names only the exception's type. Starlette re-raises it after this answer and the server
    closes the connection, so the response says so."""
    log.error("unhandled error on %s", request.url.path, exc_info=error)
    return await api_error(request, internal_error(error, {"Connection": "close"}))


def internal_error(error: Exception, headers: dict[str, str] | None = None) -> APIError:
    return APIError(
        500,
        f"internal error ({type(error).__name__})",
        type="server_error",
        code="internal_error",
        headers=headers,
    )


class ClientGone(Exception):
    """The client closed its connection before its answer; `stage`: reading (its body), preparing,
    queued or running."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


# ---- routes ----


class Routes:
    """The routes of one served model: the page at `/`, health, models, metrics and chat completions,
    with what they share: the model, its batcher, the metrics, the limits and the API key.

    Handlers carry no return annotation: FastAPI would take one as a response model."""

    def __init__(
        self, served: ServedModel, batcher: Batcher, metrics: ServerMetrics, settings: Settings, api_key=None
    ):
        self.served, self.batcher, self.metrics, self.settings = served, batcher, metrics, settings
        self.api_key = api_key
        self.preparing = 0  # requests admitted and being read or prepared (event loop only)
        self.pending_bytes = 0  # their declared body sizes

    def add_to(self, app: FastAPI) -> None:
        """Registers the routes (GET ones answer HEAD too) and the page's static files on `app`."""
        app.add_api_route("/", self.page, methods=["GET", "HEAD"], include_in_schema=False)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
        for path, handler, kwargs in (
            ("/health", self.health, openapi.HEALTH),
            ("/v1/models", self.models, openapi.MODELS),
            ("/metrics", self.prometheus, openapi.METRICS),
        ):
            app.add_api_route(path, handler, methods=["GET", "HEAD"], **kwargs)
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"], **openapi.CHAT)

    async def page(self):
        """The page to try the model in a browser."""
        return FileResponse(STATIC / "index.html")

    async def health(self):
        """The model's name and the load (queue depth, running requests); 503 once shutting down."""
        if self.batcher.closing:
            return JSONResponse({"status": "shutting_down"}, status_code=503, headers={"Connection": "close"})
        return {
            "status": "ok",
            "model": self.served.card.name,
            "queue_depth": self.batcher.depth,
            "running": self.batcher.running,
        }

    async def models(self, request: Request):
        """The one model served, OpenAI's list shape, with adallava's description of it."""
        self._authorize(request)
        entry = {
            "id": self.served.card.name,
            "object": "model",
            "created": 0,
            "owned_by": "adallava",
            "adallava": self.served.describe(),
        }
        return {"object": "list", "data": [entry]}

    async def prometheus(self, request: Request):
        """The metrics in Prometheus' text format."""
        self._authorize(request)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def _authorize(self, request: Request) -> None:
        """401 unless the request carries the API key (when the server has one)."""
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.api_key.encode()
        ):
            raise APIError(
                401,
                "this server requires an API key: send the header 'Authorization: Bearer <key>' (--api-key)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def chat_completions(self, request: Request):
        """An OpenAI chat completion with a budget: one JSON body, or server-sent events with `stream`.
        Every answer is counted by status in the request metrics; a request whose client left is
        counted as cancelled (by stage) instead, and its work is dropped."""
        arrived = time.perf_counter()
        deadline = arrived + self.settings.request_timeout_s
        try:
            return await self._complete(request, arrived, deadline)
        except APIError as error:
            self.metrics.requests.inc(label=str(error.status))
            if error.code == "deadline_infeasible":
                self.metrics.deadlines.inc(label="infeasible")
            raise
        except ClientGone as gone:
            self.metrics.cancelled.inc(label=gone.stage)
            return Response(status_code=499)  # nobody is there to read it
        except Exception as error:  # noqa: BLE001 - a bug: answered here, so the connection stays usable
            log.error("unhandled error on %s", request.url.path, exc_info=error)
            self.metrics.requests.inc(label="500")
            raise internal_error(error) from None

    async def _complete(self, request: Request, arrived: float, deadline: float):
        """Admission (key, content type, shutdown, capacity: all before the body is read), then the
        request read and prepared in a prepare worker, queued, and answered, while the connection is
        watched: if the client leaves, its work stops where it is."""
        self._authorize(request)
        check_content_type(request)
        if self.batcher.closing:
            raise shutting_down()
        declared = min(declared_length(request), self.settings.max_request_bytes)  # more: 413 in read_body
        self._admit(declared)
        watch = ClientWatch(request)
        try:
            self.preparing += 1
            self.pending_bytes += declared
            try:
                try:
                    raw = await read_body(request, self.settings.max_request_bytes)
                except ClientDisconnect:
                    raise ClientGone("reading") from None
                watch.start()
                loop = asyncio.get_running_loop()
                reading = loop.run_in_executor(self.served.pool, self.served.read, raw)
                parsed, prompt = await watch.race(reading, lambda: "preparing")
            finally:
                self.preparing -= 1
                self.pending_bytes -= declared
            job = self.batcher.submit(
                prompt, parsed.budget, parsed.max_tokens, parsed.stream, arrived, parsed.best_effort
            )
            stage = lambda: "running" if job.started else "queued"  # noqa: E731
            rid = completion_id()
            if parsed.stream:
                first = await watch.race(
                    job.next_event(deadline, self.settings.request_timeout_s), stage, job
                )
                watch.stop()  # from here Starlette's streaming response watches the connection
                return self._stream(job, first, parsed, rid, arrived, deadline)
            result = await watch.race(job.result(deadline, self.settings.request_timeout_s), stage, job)
        finally:
            watch.stop()
        answer = result.answer
        content = completion_body(
            rid, self.served.card.name, answer.text, answer.finish_reason, usage(result), report(result)
        )
        self.metrics.requests.inc(label="200")
        self._observe(result, arrived)
        return content

    def _admit(self, declared: int) -> None:
        """429 before any work when the requests being prepared and those queued fill --max-queue, or
        when this body would take the bodies being read and prepared past --max-pending-bytes."""
        waiting = self.preparing + self.batcher.depth
        if waiting >= self.settings.max_queue:
            raise self._busy(
                f"{waiting} requests are already waiting (--max-queue {self.settings.max_queue})"
            )
        if self.preparing and self.pending_bytes + declared > self.settings.max_pending_bytes:
            raise self._busy(
                f"{self.pending_bytes} bytes of requests are being read and prepared; this one's "
                f"{declared} would pass --max-pending-bytes {self.settings.max_pending_bytes}"
            )

    def _busy(self, why: str) -> APIError:
        return APIError(
            429,
            f"the server is at capacity: {why}; retry after {self.settings.retry_after_s} s",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    def _stream(
        self, job: Job, first, parsed: ParsedRequest, rid: str, arrived: float, deadline: float
    ) -> StreamingResponse:
        """The streaming response. Its first event decides the status: an error before any token is
        raised, to be a proper 4xx/5xx; after that the status is 200 and errors go in the stream."""
        if first[0] == ERROR:
            raise first[1]
        self.metrics.requests.inc(label="200")
        events = self._events(job, first, parsed, rid, arrived, deadline)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def _events(
        self, job: Job, first, parsed: ParsedRequest, rid: str, arrived: float, deadline: float
    ):
        """Server-sent events: a role chunk, one chunk per new piece of text, the closing chunks
        (`_closing_events`), then [DONE]. If the client goes away first, the job is cancelled so that
        generation drops its row."""
        model_name = self.served.card.name
        deltas = TextDeltas(self.served.processor.tokenizer)
        finished = False
        try:
            yield sse(chunk_body(rid, model_name, {"role": "assistant", "content": ""}))
            kind, value = first
            while True:
                if kind == TOKEN:
                    piece = deltas.push(value)
                    if piece:
                        yield sse(chunk_body(rid, model_name, {"content": piece}))
                elif kind == DONE:
                    for event in self._closing_events(deltas, value, rid, parsed.include_usage):
                        yield event
                    self._observe(value, arrived)
                    break
                else:  # an error after the stream began (only a timeout can come this late)
                    yield sse(value.body())
                    break
                kind, value = await self._next_event(job, deadline)
            yield sse("[DONE]")
            finished = True
        finally:
            if not finished:
                job.cancel()
                self.metrics.cancelled.inc(label="streaming")

    async def _next_event(self, job: Job, deadline: float) -> tuple[str, Any]:
        """The job's next event; a timeout comes back as an ERROR event, to be sent in the stream."""
        try:
            return await job.next_event(deadline, self.settings.request_timeout_s)
        except APIError as error:
            return ERROR, error

    def _closing_events(
        self, deltas: TextDeltas, result: Result, rid: str, include_usage: bool
    ) -> list[bytes]:
        """The events once the answer is done: any text not yet sent, a chunk with the finish reason and
        the `adallava` report, and a usage chunk if the client asked for one."""
        model_name, answer = self.served.card.name, result.answer
        events = []
        rest = deltas.finish(answer.text)
        if rest:
            events.append(sse(chunk_body(rid, model_name, {"content": rest})))
        events.append(sse(chunk_body(rid, model_name, {}, answer.finish_reason, adallava=report(result))))
        if include_usage:
            events.append(sse({**chunk_body(rid, model_name, {}), "choices": [], "usage": usage(result)}))
        return events

    def _observe(self, result: Result, arrived: float) -> None:
        """Records a finished answer in the metrics: its latency and stages, budget, tokens and FLOPs."""
        answer = result.answer
        self.metrics.request_seconds.observe(time.perf_counter() - arrived)
        self.metrics.queue_seconds.observe(result.queue_ms / 1e3)
        self.metrics.prefill_seconds.observe(result.prefill_ms / 1e3)
        self.metrics.decode_seconds.observe(result.decode_ms / 1e3)
        self.metrics.budget.observe(1.0 if answer.budget is None else answer.budget)
        self.metrics.prompt_tokens.inc(answer.prompt_tokens)
        self.metrics.completion_tokens.inc(answer.completion_tokens)
        self.metrics.prefill_flops.inc(answer.prefill_flops["llm"])
        if answer.deadline is not None:
            self.metrics.deadlines.inc(label="met" if answer.deadline["met"] else "missed")
        if result.speculative is not None:
            drafted, accepted = result.speculative["drafted"], result.speculative["accepted"]
            self.metrics.draft_tokens.inc(drafted)
            self.metrics.accepted_tokens.inc(accepted)
            if drafted:
                self.metrics.acceptance.observe(accepted / drafted)


def usage(result: Result) -> dict:
    """The `usage` field of a response: prompt, completion and total tokens."""
    answer = result.answer
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def report(result: Result) -> dict:
    """The `adallava` field of a response: the budget, the plan that ran, its FLOPs, the timings and the
    prompt's words the tokenizer did not know. `queue_ms` / `prefill_ms` / `decode_ms` are the server's
    view of this row; `generate_*_ms` the engine's own times of the generate call (the whole batch's)."""
    answer = result.answer
    return {
        "budget": answer.budget,
        "plan": answer.plan,
        "prefill_flops": answer.prefill_flops,
        "full_prefill_flops": answer.full_prefill_flops,
        "decode_flops": answer.decode_flops,
        "queue_ms": round(result.queue_ms, 3),
        "prefill_ms": round(result.prefill_ms, 3),
        "decode_ms": round(result.decode_ms, 3),
        **{
            f"generate_{name}": _ms(getattr(answer, name, None))
            for name in ("prefill_ms", "decode_ms", "total_ms")
        },
        "batch_size": result.batch_size,
        "deadline": answer.deadline,
        "speculative": result.speculative,
        "unknown_words": result.unknown_words,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def declared_length(request: Request) -> int:
    """The body's size as its Content-Length declares it (0 when absent or malformed: read_body
    still stops at --max-request-bytes)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() and len(value) < 20 else 0


def check_content_type(request: Request) -> None:
    """415 unless the body is declared JSON: a browser page elsewhere can POST text/plain or a form
    to this server without asking (no CORS preflight), but not application/json."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise APIError(
            415,
            f"the request body must be JSON sent with 'Content-Type: application/json', got "
            f"{media[:80] or 'no Content-Type'}",
            code="unsupported_media_type",
        )


def shutting_down() -> APIError:
    return APIError(
        503,
        "the server is shutting down",
        type="server_error",
        code="shutting_down",
        headers={"Connection": "close"},
    )


class ClientWatch:
    """Watches a request's connection, once its body is read, for the client leaving: `race` awaits
    some work (preparation, the answer) or the disconnect, whichever comes first."""

    def __init__(self, request: Request):
        self.receive = request.receive
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._disconnected())

    async def _disconnected(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def race(self, work, stage: Callable[[], str], job: Job | None = None):
        """`work`'s result; if the client leaves first, the job is cancelled (dropped from the queue,
        or its row stopped at the next decoding step) and ClientGone(stage()) is raised."""
        work = asyncio.ensure_future(work)
        if self.task is None:
            return await work
        done, _ = await asyncio.wait({work, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        work.cancel()
        if job is not None:
            job.cancel()
        raise ClientGone(stage())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _body_too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _body_too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _body_too_large(size: int, limit: int) -> APIError:
    return too_large(
        f"the request body is at least {size} bytes; the limit is {limit} bytes (--max-request-bytes)",
        code="request_too_large",
    )


class TextDeltas:
    """Streamed text as pieces whose concatenation is the final answer: the decoded tokens so far,
    stripped as the final answer is, sent whenever they extend what was sent."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        if not text.startswith(self.sent) or text.endswith("\ufffd"):  # a character still incomplete
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece

    def finish(self, final: str) -> str:
        if not final.startswith(self.sent):
            log.warning("streamed text %r is not a prefix of the answer %r", self.sent, final)
            return ""
        piece, self.sent = final[len(self.sent) :], final
        return piece
