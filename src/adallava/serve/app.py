"""The HTTP app: OpenAI-compatible chat completions with a budget per request, models, health,
Prometheus metrics, and a page at `/` to try it.

    app = create_app(model, processor, Settings(), name="tiny-adallava-l")
    uvicorn.run(app, host="127.0.0.1", port=8000)

The server is thin: every answer comes from `answering.answer_batch`, the same call `adallava ask`
makes. Every error is an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

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
    it runs every layer and refuses budgets."""
    settings = settings or Settings()
    served = ServedModel(model, processor, name, adaptive, settings)
    batcher = Batcher(served, settings)
    metrics = ServerMetrics()
    metrics.add_gauge("adallava_queue_depth", "requests waiting for the model", lambda: batcher.depth)
    metrics.add_gauge("adallava_running_requests", "requests in the running batch", lambda: batcher.running)
    batcher.on_batch(metrics.batch_size.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.close()  # uvicorn has stopped accepting; answer what was accepted

    app = FastAPI(title="adallava", summary="latency-adaptive LLaVA, a budget per request", lifespan=lifespan)
    app.state.served, app.state.batcher = served, batcher  # tests and benchmarks reach in here
    app.state.metrics, app.state.settings = metrics, settings

    # ---- errors: always OpenAI's shape, never a traceback ----
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return await api_error(request, schema_error(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        kind = "not_found" if error.status_code == 404 else "http_error"
        message = f"{request.method} {request.url.path}: {error.detail}"
        return await api_error(request, APIError(error.status_code, message, code=kind))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=error)
        if request.url.path == "/v1/chat/completions":
            metrics.requests.inc(label="500")
        return await api_error(
            request,
            APIError(
                500, f"internal error ({type(error).__name__})", type="server_error", code="internal_error"
            ),
        )

    # ---- routes ----
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health():
        if batcher.closing:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return {
            "status": "ok",
            "model": served.card.name,
            "queue_depth": batcher.depth,
            "running": batcher.running,
        }

    @app.get("/v1/models")
    async def models():
        entry = {
            "id": served.card.name,
            "object": "model",
            "created": 0,
            "owned_by": "adallava",
            "adallava": served.describe(),
        }
        return {"object": "list", "data": [entry]}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrived = time.perf_counter()
        deadline = arrived + settings.request_timeout_s
        try:
            body = parse_body(await read_body(request, settings.max_request_bytes))
            parsed = await run_in_threadpool(parse_request, body, served.card, settings)
            prompt = await run_in_threadpool(served.prepare, parsed)
            job = batcher.submit(prompt, parsed.budget, parsed.max_tokens, parsed.stream)
            rid = completion_id()
            if parsed.stream:
                # The first event decides the status: an error before any token is a proper 4xx/5xx.
                first = await job.next_event(deadline, settings.request_timeout_s)
                if first[0] == ERROR:
                    raise first[1]
                metrics.requests.inc(label="200")
                events = stream(job, first, parsed, rid, arrived, deadline)
                return StreamingResponse(
                    events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
                )
            result = await job.result(deadline, settings.request_timeout_s)
        except APIError as error:
            metrics.requests.inc(label=str(error.status))
            raise
        answer = result.answer
        content = completion_body(
            rid, served.card.name, answer.text, answer.finish_reason, usage(result), report(result)
        )
        metrics.requests.inc(label="200")
        observe(result, arrived)
        return content

    async def stream(job: Job, first, parsed: ParsedRequest, rid: str, arrived: float, deadline: float):
        """Server-sent events: a role chunk, one chunk per new piece of text, a final chunk with the
        finish reason and the `adallava` report (and a usage chunk if asked), then [DONE]."""
        model_name = served.card.name
        deltas = TextDeltas(processor.tokenizer)
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
                    rest = deltas.finish(value.answer.text)
                    if rest:
                        yield sse(chunk_body(rid, model_name, {"content": rest}))
                    yield sse(
                        chunk_body(rid, model_name, {}, value.answer.finish_reason, adallava=report(value))
                    )
                    if parsed.include_usage:
                        yield sse({**chunk_body(rid, model_name, {}), "choices": [], "usage": usage(value)})
                    observe(value, arrived)
                    break
                else:  # an error after the stream began (only a timeout can come this late)
                    yield sse(value.body())
                    break
                try:
                    kind, value = await job.next_event(deadline, settings.request_timeout_s)
                except APIError as error:
                    kind, value = ERROR, error
            yield sse("[DONE]")
            finished = True
        finally:
            if not finished:  # the client went away: let generation drop its row
                job.cancel()

    def observe(result: Result, arrived: float) -> None:
        answer = result.answer
        metrics.request_seconds.observe(time.perf_counter() - arrived)
        metrics.queue_seconds.observe(result.queue_ms / 1e3)
        metrics.prefill_seconds.observe(result.prefill_ms / 1e3)
        metrics.decode_seconds.observe(result.decode_ms / 1e3)
        metrics.budget.observe(1.0 if answer.budget is None else answer.budget)
        metrics.prompt_tokens.inc(answer.prompt_tokens)
        metrics.completion_tokens.inc(answer.completion_tokens)
        metrics.prefill_flops.inc(answer.prefill_flops["llm"])

    return app


def usage(result: Result) -> dict:
    answer = result.answer
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def report(result: Result) -> dict:
    """The `adallava` field of a response: the budget, the plan that ran, its FLOPs and the timings."""
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
