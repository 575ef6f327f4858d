"""Server-sent events, and noticing a client that went away.

:class:`EventStream` is a streaming response that listens for the ASGI
``http.disconnect`` while it streams: when the client goes first, the body is cancelled
at once (not at the next write, which may be seconds away while a model thinks) and the
body iterator is closed. ``on_close(disconnected)`` runs at the end either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dispatcher.api.relay import Event

log = logging.getLogger(__name__)

T = TypeVar("T")

KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse(event: Event) -> bytes:
    """One turn event as an SSE message: its ``seq`` as the id, its JSON as the data."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), event.raw)


def sse_data(data: bytes) -> bytes:
    return b"data: %s\n\n" % data


def retry_field(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


class EventStream(Response):
    """A ``text/event-stream`` response that notices a client going away while idle."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[bool], Awaitable[None]] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = background
        self.on_close = on_close
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        streaming = asyncio.create_task(self._stream(send))
        listening = asyncio.create_task(_wait_disconnect(receive))
        disconnected = False
        try:
            done, _ = await asyncio.wait(
                {streaming, listening}, return_when=asyncio.FIRST_COMPLETED
            )
            if streaming in done:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening
                streaming.result()
            else:
                disconnected = True
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await streaming
        except OSError:
            disconnected = True  # a write to a socket the client closed
        finally:
            for task in (streaming, listening):
                task.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if self.on_close is not None:
                try:
                    await self.on_close(disconnected)
                except Exception:
                    log.exception("closing an event stream failed")
        if self.background is not None:
            await self.background()

    async def _stream(self, send: Send) -> None:
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(
    receive: Receive, work: Coroutine[Any, Any, T], on_disconnect: Callable[[], Awaitable[None]]
) -> tuple[bool, T | None]:
    """Run ``work`` unless the client disconnects first (then cancel it, call the hook).

    Returns ``(True, result)`` or ``(False, None)``. The request body must have been read.
    """
    task = asyncio.create_task(work)
    listening = asyncio.create_task(_wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        listening.cancel()
        raise
    if task in done:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await on_disconnect()
    return False, None
