"""HTTP errors of the ingress and their two JSON shapes.

Native endpoints answer ``{"error": {"code", "message"}}``; the OpenAI-compatible ones
answer OpenAI's own shape, ``{"error": {"message", "type", "param", "code"}}``, so the
``openai`` SDK raises its usual exception classes with our message.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

OPENAI_PREFIX = "/v1/chat/"

# A turn's error code (error event) -> HTTP status when the turn is not streamed.
_TURN_ERROR_STATUS = {
    "deadline_exceeded": 504,
    "timeout": 504,
    "no_healthy_provider": 503,
    "unavailable": 503,
    "all_models_failed": 503,
    "rate_limited": 429,
    "budget_exceeded": 402,
    "bad_request": 400,
    "context_too_long": 400,
    "content_filtered": 400,
    "cancelled": 409,
}

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "server_error",
    504: "timeout",
}


class ApiError(Exception):
    """Raised by handlers to answer with an error status and a JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}


class BodyTooLarge(ApiError):
    """Raised when a request body exceeds ``max_body_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"the request body exceeds {limit} bytes")


def turn_error_status(code: str) -> int:
    """The HTTP status for a turn that ended with error ``code`` (502 when unknown)."""
    return _TURN_ERROR_STATUS.get(code, 502)


def error_body(
    status: int, code: str, message: str, *, openai: bool, param: str | None = None
) -> dict[str, Any]:
    if openai:
        fallback = "server_error" if status >= 500 else "invalid_request_error"
        kind = _OPENAI_TYPES.get(status, fallback)
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    openai: bool = False,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body = error_body(status, code, message, openai=openai, param=param)
    if extra:
        body = {**extra, **body}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def is_openai(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_PREFIX)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    """Turn every error into one of our JSON shapes; nothing escapes as a bare 500."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(
            exc.status, exc.code, exc.message, openai=is_openai(request), param=exc.param,
            headers=exc.headers, extra=exc.extra,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), message,
            openai=is_openai(request), headers=dict(exc.headers or {}),
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(
            422, "invalid_request", _validation_message(exc), openai=is_openai(request)
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        return error_response(
            500, "internal_error", "the dispatcher failed to handle this request",
            openai=is_openai(request),
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
