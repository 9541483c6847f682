"""The OpenAI chat-completions protocol as adallava serves it: request schema, parsing into a
conversation, images and a budget (with every limit checked), and the response and chunk bodies.

Accepted beyond OpenAI's schema: `budget` (a fraction in [b_min, 1], a FLOPs cap such as "2M", or a
deadline such as "300ms", counted from the request's arrival; `best_effort` runs the smallest plan for
a deadline that cannot be met instead of refusing it),
sent as a body field (the `openai` client's `extra_body`). Decoding is greedy; sampling fields
(`temperature`, `top_p`, `seed`, ...) are accepted for client compatibility and ignored.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import PIL
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from adallava.core.budget import budget_fractions, parse_budget, parse_flops
from adallava.core.deadline import Deadline
from adallava.serve.errors import APIError, bad_request, too_large
from adallava.serve.settings import Settings

# ---- request schema ------------------------------------------------------------------------------


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL | str


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The request body. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    budget: Any = None  # checked by check_budget, which knows the model's range
    best_effort: bool = False  # a deadline even the smallest plan cannot meet: run that plan anyway
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = 1
    stop: str | list[str] | None = None


def parse_body(raw: bytes, max_messages: int, max_chars: int | None = None) -> ChatCompletionRequest:
    """JSON bytes -> a validated request; 400 naming the field on anything malformed, including what
    Python's JSON reader cannot hold (nesting past its recursion limit, an integer past its digit
    limit) and text that is not valid Unicode (a lone UTF-16 surrogate such as "\\ud800"). The message
    count and (with `max_chars`) the text's length are checked on the parsed JSON, before validation
    copies it."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise bad_request(
            "the request body is not valid JSON: arrays or objects nested too deeply", code="invalid_json"
        ) from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, the integer digit limit
        raise bad_request(f"the request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    if _SURROGATE_ESCAPE.search(raw):
        check_unicode(data)
    messages = data.get("messages")
    if isinstance(messages, list) and len(messages) > max_messages:
        raise bad_request(
            f"messages: {len(messages)} messages; at most {max_messages} per request (--max-messages)",
            param="messages",
            code="too_many_messages",
        )
    if max_chars is not None and isinstance(messages, list):
        check_text_length(messages, max_chars)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as error:
        raise schema_error(error.errors()) from None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate


def check_unicode(data: Any) -> None:
    """400 naming the first string (key or value) of parsed JSON that holds a lone surrogate: JSON
    allows "\\ud800", but it is no character, and UTF-8 (the tokenizer, the response) cannot encode it."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:  # iterative: the body may nest as deep as the JSON reader allowed
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                stack += [(key, path or "body"), (item, f"{path}.{key}".lstrip("."))]
        elif isinstance(value, list):
            stack += [(item, f"{path}.{index}".lstrip(".")) for index, item in enumerate(value)]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                bad = value[error.start : error.end].encode("unicode_escape").decode()
                raise bad_request(
                    f"{path or 'body'}: the text holds a lone UTF-16 surrogate ({bad}) at character "
                    f"{error.start}; text must be valid Unicode (a surrogate only as half of a pair)",
                    param=path or None,
                    code="invalid_unicode",
                ) from None


def schema_error(errors: list[dict]) -> APIError:
    """A 400 naming the bad field (e.g. `messages.0.content.1.image_url.url`) and what it should be.
    Of the alternatives pydantic tried for a union, the one that got furthest explains the problem."""
    located = [(_field_path(error["loc"]), error) for error in errors]
    path, error = max(located, key=lambda item: len(item[0]))
    location = ".".join(str(part) for part in path)
    value = error.get("input")
    shown = f"; got {_short(value)}" if value is not None and not isinstance(value, (dict, list)) else ""
    return bad_request(
        f"{location or 'body'}: {error['msg']}{shown}", param=location or None, code="invalid_field"
    )


def _short(value: Any, limit: int = 80) -> str:
    """repr of a value for an error message, cut to `limit` characters (a bad field may be megabytes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {len(str(abs(value)))} digits"
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown)} characters)"


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[A-Z]\w*|.*\[.*\])$")


def _field_path(loc) -> list:
    """pydantic's error location without union member tags ('str', 'list[...]', 'ImageURL') and the
    discriminator value it repeats ('image_url', 'image_url' -> 'image_url'), and without 'body'."""
    path: list = []
    for part in loc:
        if part == "body" or (isinstance(part, str) and _UNION_TAG.match(part)):
            continue
        if path and part == path[-1] and isinstance(part, str):
            continue
        path.append(part)
    return path


# ---- parsed request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedRequest:
    """A request checked against the limits. messages: Hugging Face chat format (image parts as
    {"type": "image"}, in order); images: RGB PIL images, one per image part; budget: what the model
    gets (None for a base model); max_tokens: new tokens at most."""

    messages: list[dict]
    images: list[Image.Image]
    budget: float | str | Deadline | None
    max_tokens: int
    stream: bool
    include_usage: bool
    best_effort: bool = False


@dataclass(frozen=True)
class ModelCard:
    """What the protocol needs to know about the served model."""

    name: str
    adaptive: bool
    min_budget: float
    default_max_tokens: int
    max_prompt_chars: int  # characters of text, checked before tokenizing


def parse_request(request: ChatCompletionRequest, card: ModelCard, settings: Settings) -> ParsedRequest:
    """Check a validated request's model, options, images and budget; raise APIError otherwise."""
    if request.model is not None and request.model != card.name:
        raise APIError(
            404,
            f"model {request.model!r} is not served here; this server serves {card.name!r} (GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    if request.n != 1:
        raise bad_request(f"n must be 1 (one answer per request), got {request.n}", param="n")
    if request.stop:
        raise bad_request(
            "stop sequences are not supported: an answer ends at the model's end-of-sequence token or at "
            "max_tokens",
            param="stop",
        )
    messages, images = [], []
    for index, message in enumerate(request.messages):
        parts = []
        content = message.content
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        for part_index, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
                continue
            if len(images) >= settings.max_images:
                raise bad_request(
                    f"at most {settings.max_images} image(s) per request", param=f"messages.{index}.content"
                )
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            images.append(decode_image(url, settings, f"messages.{index}.content.{part_index}.image_url"))
            parts.append({"type": "image"})
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": parts})
    check_text_length(messages, card.max_prompt_chars)
    return ParsedRequest(
        messages=messages,
        images=images,
        budget=check_budget(request.budget, card),
        max_tokens=check_max_tokens(request, card, settings),
        stream=request.stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        best_effort=request.best_effort,
    )


def check_text_length(messages: list, max_chars: int) -> None:
    """400 context_length_exceeded when the messages' text (string contents and text parts, in
    Hugging Face's or OpenAI's form) is longer than `max_chars`: found before the tokenizer spends
    seconds on megabytes of text. Anything malformed is left to the schema."""
    chars = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        parts = [content] if isinstance(content, str) else content if isinstance(content, list) else []
        for part in parts:
            text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
            chars += len(text) if isinstance(text, str) else 0
    if chars > max_chars:
        raise bad_request(
            f"messages: the text is {chars} characters; the limit is {max_chars} (checked before "
            "tokenizing; --max-prompt-chars)",
            param="messages",
            code="context_length_exceeded",
        )


def check_max_tokens(request: ChatCompletionRequest, card: ModelCard, settings: Settings) -> int:
    value = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    if value is None:
        return min(card.default_max_tokens, settings.max_tokens_limit)
    if not 1 <= value <= settings.max_tokens_limit:
        raise bad_request(
            f"{param} {value} is outside the allowed range [1, {settings.max_tokens_limit}]", param=param
        )
    return value


def check_budget(value, card: ModelCard) -> float | str | Deadline | None:
    """The budget the model gets: absent -> 1.0 (the full model) for an adaptive model, None for a
    base model. Fractions are checked here; a FLOPs cap is checked for syntax here and against the
    request's own full cost by the model (a cap below the prefix's cost is a 400 then); a deadline
    ("300ms", "0.3s") is checked for its form here and planned from the request's arrival."""
    if not card.adaptive:
        if value is not None:
            raise bad_request(
                f"model {card.name!r} is not adaptive (it has no trained scheduler: it always runs every "
                f"layer): send no budget, got {value!r}",
                param="budget",
                code="budget_not_supported",
            )
        return None
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad_request(
            f"budget must be a fraction in [{card.min_budget:g}, 1], a FLOPs string such as '2M' or a "
            f"deadline such as '300ms', got "
            f"{value!r} ({type(value).__name__})",
            param="budget",
            code="invalid_budget",
        )
    try:
        budget = parse_budget(value) if isinstance(value, str) else float(value)
    except ValueError as error:  # a deadline in a form that is not accepted ("5 min", "-3ms")
        raise bad_request(str(error), param="budget", code="invalid_budget") from None
    except OverflowError:  # an integer too large for a float: no FLOPs cap is that large
        raise bad_request(
            f"budget {_short(value)} is too large to be a number of FLOPs (at most about 1.8e308)",
            param="budget",
            code="invalid_budget",
        ) from None
    if isinstance(budget, Deadline):
        return budget
    try:
        if isinstance(budget, str) or budget > 1:  # a FLOPs cap; the model converts it per request
            parse_flops(budget)
        else:
            budget_fractions([budget], 1, card.min_budget)
    except ValueError as error:
        message = str(error).replace(" for row 0", "")  # one request: the row is noise here
        raise bad_request(message, param="budget", code="invalid_budget") from None
    return budget


# ---- images --------------------------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*);base64,", re.I)

# The formats a user sends, by data-URL type -> PIL's format name. Only these decoders are ever tried
# (PIL would otherwise try every plugin it has, EPS through Ghostscript included).
IMAGE_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}
IMAGE_FORMATS = tuple(dict.fromkeys(IMAGE_TYPES.values()))


def decode_image(url: str, settings: Settings, param: str) -> Image.Image:
    """A data URL (`data:image/png;base64,...`) or bare base64 -> an RGB image, within the limits:
    bytes, then (from the header, before decoding) format, width x height and aspect ratio."""
    if re.match(r"^\s*(https?|ftp|file)://", url, re.I):
        raise bad_request(
            f"{param}: {url[:60]!r} is a URL to fetch; this server does not fetch images from addresses. "
            "Send the image inline as a data URL: data:image/png;base64,<base64 bytes>",
            param=param,
            code="image_url_not_allowed",
        )
    match = _DATA_URL.match(url)
    if match is None and url.startswith("data:"):
        raise bad_request(
            f"{param}: a data URL must be base64-encoded (data:image/png;base64,...)",
            param=param,
            code="invalid_image",
        )
    formats = _allowed_formats(match["mime"] if match else None, param)
    payload = url[match.end() :] if match else url
    if len(payload) * 3 // 4 > settings.max_image_bytes + 3:  # before decoding: base64 is 4/3 the bytes
        raise _image_too_large(len(payload) * 3 // 4, settings, param)
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            f"{param}: the image is neither a data URL nor valid base64", param=param, code="invalid_image"
        ) from None
    if len(data) > settings.max_image_bytes:
        raise _image_too_large(len(data), settings, param)
    try:
        image = Image.open(io.BytesIO(data), formats=formats)  # reads the header only
        check_image_size(*image.size, settings, param)
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise bad_request(
            f"{param}: the bytes are not a {' / '.join(formats)} image PIL can read ({type(error).__name__}: "
            f"{str(error)[:200]})",
            param=param,
            code="invalid_image",
        ) from None
    except PIL.Image.DecompressionBombError as error:
        raise too_large(f"{param}: {error}", param=param, code="image_too_large") from None


def _allowed_formats(mime: str | None, param: str) -> tuple[str, ...]:
    """The PIL formats to try: the data URL's type (which must be one of IMAGE_TYPES), or all of
    IMAGE_FORMATS for bare base64. 400 `invalid_image` for any other type."""
    if mime is None:
        return IMAGE_FORMATS
    fmt = IMAGE_TYPES.get(mime.lower())
    if fmt is None:
        raise bad_request(
            f"{param}: the data URL's type {mime[:60]!r} is not an image type this server reads; send one of "
            f"{', '.join(IMAGE_TYPES)}",
            param=param,
            code="invalid_image",
        )
    return (fmt,)


def check_image_size(width: int, height: int, settings: Settings, param: str) -> None:
    """An image's size from its header, before its pixels are decoded: 413 past --max-image-pixels,
    400 past --max-image-aspect-ratio."""
    if width * height > settings.max_image_pixels:
        raise too_large(
            f"{param}: the image has {width}x{height} = {width * height} pixels; the limit is "
            f"{settings.max_image_pixels} (--max-image-pixels)",
            param=param,
            code="image_too_large",
        )
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > settings.max_image_aspect_ratio:
        raise bad_request(
            f"{param}: the image is {width}x{height}, an aspect ratio of {ratio:.4g}; the limit is "
            f"{settings.max_image_aspect_ratio:g} (--max-image-aspect-ratio)",
            param=param,
            code="image_aspect_ratio",
        )


def _image_too_large(size: int, settings: Settings, param: str) -> APIError:
    return too_large(
        f"{param}: the image is about {size} bytes; the limit is {settings.max_image_bytes} bytes "
        "(--max-image-bytes)",
        param=param,
        code="image_too_large",
    )


# ---- responses -----------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion_body(rid: str, model: str, text: str, finish_reason: str, usage: dict, adallava: dict) -> dict:
    """A `chat.completion` object, with adallava's report of what ran."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage,
        "adallava": adallava,
    }


def chunk_body(rid: str, model: str, delta: dict, finish_reason: str | None = None, **extra) -> dict:
    """A `chat.completion.chunk` object (one server-sent event)."""
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        **extra,
    }


def sse(data: dict | str) -> bytes:
    """One server-sent event line pair."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
