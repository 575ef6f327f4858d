"""The request body size limit, enforced before anything parses the body.

A declared ``Content-Length`` over the limit is answered 413 at once, without reading;
a body without one (chunked) is counted as it streams in, and reading it fails with
:class:`~dispatcher.api.errors.BodyTooLarge` (413) as soon as it passes the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.api.errors import OPENAI_PREFIX, BodyTooLarge, error_response


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        openai = str(scope.get("path", "")).startswith(OPENAI_PREFIX)
        declared = _content_length(scope)
        if declared == -2:
            response = error_response(400, "invalid_content_length",
                                      "the Content-Length header is not a number", openai=openai)
            await response(scope, receive, send)
            return
        if declared > self.max_bytes:
            exc = BodyTooLarge(self.max_bytes)
            response = error_response(exc.status, exc.code, exc.message, openai=openai,
                                      headers={"connection": "close"})
            await response(scope, receive, send)
            return
        limit = self.max_bytes
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int:
    """The declared length; -1 when absent, -2 when malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -2
            return length if length >= 0 else -2
    return -1
