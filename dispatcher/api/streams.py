"""Consuming a started turn: as native SSE, or gathered whole; metrics on the way."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.types import Receive

from dispatcher.api.openai_compat import Collected
from dispatcher.api.relay import Event
from dispatcher.api.runtime import Runtime
from dispatcher.api.service import Started, release
from dispatcher.api.sse import KEEPALIVE, EventStream, retry_field, sse, unless_disconnected


class Observer:
    """Per-turn metrics: time to first token (fresh turns only) and error codes."""

    __slots__ = ("_rt", "_started", "_waiting_first")

    def __init__(self, rt: Runtime, started: Started) -> None:
        self._rt = rt
        self._started = started
        self._waiting_first = started.created

    def see(self, event: Event) -> None:
        if self._waiting_first and event.type in ("token", "tool_call"):
            self._waiting_first = False
            ttft = time.time() - self._started.received_at
            self._rt.metrics.ttft.labels(self._started.tier).observe(max(ttft, 0.0))
        elif event.type == "error":
            self._rt.metrics.turn_errors.labels(str(event.data.get("code", "error"))).inc()


def headers(started: Started, model: str | None = None) -> dict[str, str]:
    return {
        "x-dispatcher-turn-id": started.turn_id,
        "x-dispatcher-tier": started.tier,
        "x-dispatcher-model": model or started.model,
    }


async def native_events(rt: Runtime, started: Started) -> AsyncIterator[bytes]:
    """The turn as SSE: ``id: seq``, ``event: type``, ``data: the event's JSON``."""
    observer = Observer(rt, started)
    rt.metrics.active_streams.inc()
    try:
        yield retry_field(rt.tuning.sse_retry_ms)
        if started.first is not None:
            yield sse(started.first)
        last = time.monotonic()
        async for event in started.relay:
            if event is None:
                if time.monotonic() - last >= rt.tuning.keepalive_s:
                    last = time.monotonic()
                    yield KEEPALIVE
                continue
            observer.see(event)
            last = time.monotonic()
            yield sse(event)
    finally:
        rt.metrics.active_streams.dec()


def event_stream(rt: Runtime, started: Started, body: AsyncIterator[bytes],
                 response_headers: dict[str, str]) -> EventStream:
    """A streaming response whose end (or the client's leaving) releases the turn."""

    async def on_close(disconnected: bool) -> None:
        await release(rt, started, disconnected=disconnected,
                      grace_s=rt.tuning.disconnect_grace_s)

    return EventStream(body, headers=response_headers, on_close=on_close)


async def collect(rt: Runtime, started: Started) -> Collected:
    """Every event of the turn, until the terminal one."""
    observer = Observer(rt, started)
    collected = Collected(route=dict(started.route))
    async for event in started.relay:
        if event is None:
            continue
        observer.see(event)
        collected.add(event)
    return collected


async def collect_whole(receive: Receive, rt: Runtime, started: Started) -> Collected | None:
    """The whole turn for a non-streamed answer, or None when the client left first.

    A client gone before the end cancels the turn (no grace: nothing can resume a
    non-streamed request); either way the turn's relay is released.
    """
    finished, collected = await unless_disconnected(
        receive, collect(rt, started),
        lambda: release(rt, started, disconnected=True, grace_s=0),
    )
    if not finished or collected is None:
        return None
    await release(rt, started, disconnected=False, grace_s=0)
    return collected
