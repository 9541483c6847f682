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

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adallava.serve.batcher import DONE, ERROR, TOKEN, Batcher, Job
from adallava.serve.engine import Result, ServedModel
from adallava.serve.errors import APIError, too_large
from adallava.serve.metrics import ServerMetrics
from adallava.serve.protocol import (
    ParsedRequest,
    chunk_body,
    completion_body,
    completion_id,
    parse_body,
    parse_request,
    schema_error,
    sse,
)
from adallava.serve.settings import Settings

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("adallava.serve")


def create_app(
    model, processor, settings: Settings | None = None, *, name: str = "adallava", adaptive: bool = True
) -> FastAPI:
    """The server for one loaded model. `adaptive=False` for a base model (no trained scheduler):
    it runs every layer and refuses budgets.

    Wiring only: the model and its batcher, the metrics, the error handlers and the routes (`Routes`).
    `app.state` holds `served`, `batcher`, `metrics` and `settings`; tests and benchmarks reach in there."""
    settings = settings or Settings()
    served = ServedModel(model, processor, name, adaptive, settings)
    batcher = Batcher(served, settings)
    metrics = server_metrics(batcher)
    app = FastAPI(title="adallava", summary="latency-adaptive LLaVA, a budget per request", lifespan=lifespan)
    app.state.served, app.state.batcher = served, batcher
    app.state.metrics, app.state.settings = metrics, settings
    add_error_handlers(app)
    Routes(served, batcher, metrics, settings).add_to(app)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Starts the batcher's worker with the server; at shutdown (uvicorn has stopped accepting) it
    answers what was accepted before the worker stops."""
    batcher: Batcher = app.state.batcher
    await batcher.start()
    yield
    await batcher.close()


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
    """Starlette's errors (an unknown path, a wrong method) with their status, e.g. 404 not_found."""
    kind = "not_found" if error.status_code == 404 else "http_error"
    message = f"{request.method} {request.url.path}: {error.detail}"
    return await api_error(request, APIError(error.status_code, message, code=kind))


async def unexpected(request: Request, error: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered as a 500 that names only the exception's type, and
    counted in the request metrics when it happened on a chat completion."""
    log.error("unhandled error on %s", request.url.path, exc_info=error)
    if request.url.path == "/v1/chat/completions":
        request.app.state.metrics.requests.inc(label="500")
    return await api_error(
        request,
        APIError(500, f"internal error ({type(error).__name__})", type="server_error", code="internal_error"),
    )


# ---- routes ----


class Routes:
    """The routes of one served model: the page at `/`, health, models, metrics and chat completions,
    with what they share: the model, its batcher, the metrics and the limits.

    Handlers carry no return annotation: FastAPI would take one as a response model."""

    def __init__(self, served: ServedModel, batcher: Batcher, metrics: ServerMetrics, settings: Settings):
        self.served, self.batcher, self.metrics, self.settings = served, batcher, metrics, settings

    def add_to(self, app: FastAPI) -> None:
        """Registers the routes (and the page's static files) on `app`."""
        app.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/metrics", self.prometheus, methods=["GET"], response_class=PlainTextResponse)
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])

    async def page(self):
        """The page to try the model in a browser."""
        return FileResponse(STATIC / "index.html")

    async def health(self):
        """The model's name and the load (queue depth, running requests); 503 once shutting down."""
        if self.batcher.closing:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return {
            "status": "ok",
            "model": self.served.card.name,
            "queue_depth": self.batcher.depth,
            "running": self.batcher.running,
        }

    async def models(self):
        """The one model served, OpenAI's list shape, with adallava's description of it."""
        entry = {
            "id": self.served.card.name,
            "object": "model",
            "created": 0,
            "owned_by": "adallava",
            "adallava": self.served.describe(),
        }
        return {"object": "list", "data": [entry]}

    async def prometheus(self):
        """The metrics in Prometheus' text format."""
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def chat_completions(self, request: Request):
        """An OpenAI chat completion with a budget: one JSON body, or server-sent events with `stream`.
        Every answer is counted by status in the request metrics."""
        arrived = time.perf_counter()
        deadline = arrived + self.settings.request_timeout_s
        try:
            parsed, job = await self._submit(request)
            rid = completion_id()
            if parsed.stream:
                return await self._stream(job, parsed, rid, arrived, deadline)
            result = await job.result(deadline, self.settings.request_timeout_s)
        except APIError as error:
            self.metrics.requests.inc(label=str(error.status))
            raise
        answer = result.answer
        content = completion_body(
            rid, self.served.card.name, answer.text, answer.finish_reason, usage(result), report(result)
        )
        self.metrics.requests.inc(label="200")
        self._observe(result, arrived)
        return content

    async def _submit(self, request: Request) -> tuple[ParsedRequest, Job]:
        """Reads and checks the request, prepares its prompt (in the thread pool: both decode images
        and tokenize) and queues it for the model. Any problem is raised as an APIError."""
        body = parse_body(await read_body(request, self.settings.max_request_bytes))
        parsed = await run_in_threadpool(parse_request, body, self.served.card, self.settings)
        prompt = await run_in_threadpool(self.served.prepare, parsed)
        return parsed, self.batcher.submit(prompt, parsed.budget, parsed.max_tokens, parsed.stream)

    async def _stream(
        self, job: Job, parsed: ParsedRequest, rid: str, arrived: float, deadline: float
    ) -> StreamingResponse:
        """The streaming response. Its first event decides the status: an error before any token is
        raised, to be a proper 4xx/5xx; after that the status is 200 and errors go in the stream."""
        first = await job.next_event(deadline, self.settings.request_timeout_s)
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
    prompt's words the tokenizer did not know."""
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
        "batch_size": result.batch_size,
        "unknown_words": result.unknown_words,
    }


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
