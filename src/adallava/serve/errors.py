"""APIError: a request that fails with an HTTP status and an OpenAI-style error body.

Every refusal the server makes is one of these, raised where the problem is found (parsing, limits,
the queue, the model) and turned into `{"error": {"message", "type", "param", "code"}}` by the app.
"""

from __future__ import annotations


class APIError(Exception):
    """status: the HTTP status; message: what was wrong, naming the value and what is allowed;
    type / code: OpenAI's error type and a stable machine-readable code; param: the request field."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, param=param, code=code)


def too_large(message: str, *, param: str | None = None, code: str = "too_large") -> APIError:
    return APIError(413, message, param=param, code=code)
