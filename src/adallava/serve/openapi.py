"""The OpenAPI document at /openapi.json: the schemas of the responses and errors, each route's
documented statuses, and the chat request body (read by the route itself, so FastAPI cannot see it).

Schemathesis checks the live server against this document (tests/serve/test_openapi.py): every status
a route can answer is listed here with its content type and body schema.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from adallava.serve.protocol import ChatCompletionRequest

# ---- response bodies -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every refusal: OpenAI's error shape."""

    error: ErrorDetail


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DeadlineReport(BaseModel):
    """A deadline budget's plan and outcome, seen from the request's arrival (docs/deadlines.md)."""

    model_config = ConfigDict(extra="allow")

    deadline_ms: float
    predicted_ms: float
    measured_ms: float
    waited_ms: float
    met: bool
    slowdown: float
    upper_units: int
    fraction: float
    threads: int | None = None
    best_effort: bool = False


class Report(BaseModel):
    """adallava's report of what ran (docs/serving.md, Response)."""

    model_config = ConfigDict(extra="allow")

    budget: float | None
    plan: dict[str, Any]
    prefill_flops: dict[str, float]
    full_prefill_flops: dict[str, float]
    decode_flops: dict[str, float]
    queue_ms: float
    prefill_ms: float
    decode_ms: float
    generate_prefill_ms: float | None = None
    generate_decode_ms: float | None = None
    generate_total_ms: float | None = None
    batch_size: int
    deadline: DeadlineReport | None = None
    speculative: dict[str, int] | None = None
    unknown_words: list[str]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    adallava: Report


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "shutting_down"]


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    adallava: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelEntry]


# ---- each route's documented responses -------------------------------------------------------------


def _errors(*statuses: int) -> dict[int, dict]:
    what = {
        400: "a malformed or out-of-range request (the message names the field and what is allowed)",
        401: "no or a wrong API key (only when the server has one)",
        404: "a model this server does not serve",
        413: "a body, image or processed image over its limit",
        415: "a body not sent as application/json",
        429: "the queue is full (Retry-After says when to retry)",
        500: "a bug (details in the server log)",
        503: "the server is shutting down",
        504: "not answered within --request-timeout-s",
    }
    return {status: {"model": ErrorResponse, "description": what[status]} for status in statuses}


# One server-sent event (OpenAPI before 3.2 gives an event stream's schema per event): its data line is a
# chat.completion.chunk as JSON, an error body, or [DONE].
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "a chat.completion.chunk or an error as JSON, or [DONE]"},
        "event": {"type": "string"},
    },
}
CHAT = {
    "summary": "a chat completion under a budget",
    "response_model": None,
    "responses": {
        200: {
            "model": ChatCompletion,
            "description": "the answer, or with `stream` server-sent events of chat.completion.chunk",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **_errors(400, 401, 404, 413, 415, 429, 500, 503, 504),
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
            },
        }
    },
}
HEALTH = {
    "summary": "liveness and load",
    "response_model": None,
    "responses": {
        200: {"model": Health, "description": "serving"},
        503: {"model": Health, "description": "shutting down"},
    },
}
MODELS = {
    "summary": "the served model",
    "response_model": None,
    "responses": {200: {"model": ModelList, "description": "one model"}, **_errors(401)},
}
METRICS = {
    "summary": "Prometheus metrics",
    "response_model": None,
    "response_class": PlainTextResponse,
    "responses": {
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **_errors(401),
    },
}


def install_openapi(app: FastAPI) -> None:
    """FastAPI's document plus the chat request body's schemas (in components, as a body model's),
    without the HEAD operations of GET routes."""

    def document() -> dict:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # a GET + HEAD route has one operation id for both methods
                warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
                spec = get_openapi(
                    title=app.title, version=app.version, summary=app.summary, routes=app.routes
                )
            request = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(request.pop("$defs", {}))
            schemas["ChatCompletionRequest"] = request
            for operations in spec["paths"].values():
                operations.pop("head", None)  # HEAD is GET without the body (RFC 9110), not an operation
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = document
