"""Publishing a turn's events: sequence numbers, coalescing, one script per flush.

Events go out through :data:`dispatcher.streaming.APPEND_AND_PUBLISH` (one ``EVALSHA``
appends a batch to the turn's buffer and publishes it on the turn's channel, in order).

Coalescing: the first event starts a flush at once, so the first token pays no added
latency. After that a turn flushes at most once per ``interval_s`` (``coalesce_ms`` in the
settings, 20 ms by default): events queued meanwhile go in one call, and consecutive token
deltas merge into one ``token`` event. The terminal event never waits for the interval.
Every event costs a Redis call, a pub/sub message, an ingress wake-up and an SSE write,
and a 20-token answer at 10 ms per token would be 22 of each; a 20 ms window halves that
(``docs/performance.md``), while speech, which the events feed, needs tens of milliseconds
for a single syllable. With ``interval_s = 0`` coalescing is only natural: tokens merge
while a flush's round trip is in flight.

Sequence numbers are given when a batch is sent (after merging), so they stay contiguous:
the buffer index of an event is its ``seq``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dispatcher.resp import ScriptCall
from dispatcher.streaming import BUFFER_TTL_S, TERMINAL, buffer_key, channel, encode

log = logging.getLogger(__name__)

#: the events that open a coalescing window
_CONTENT = frozenset({"token", "sentence", "tool_call"})


class PublishError(Exception):
    """Raised by :meth:`Publisher.close` when a batch could not be written to Redis."""


class Publisher:
    """The event writer of one turn; only the turn's owner writes its buffer."""

    def __init__(self, script: ScriptCall, turn_id: str, next_seq: int,
                 interval_s: float = 0.0) -> None:
        self._script = script
        self._interval = interval_s
        self._last_flush: float | None = None
        self._hurry: asyncio.Future[None] | None = None
        self.turn_id = turn_id
        self._keys = [buffer_key(turn_id), channel(turn_id)]
        self._seq = next_seq
        self._pending: list[dict[str, Any]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.closed = False
        self.flushes = 0
        self.published = 0

    @property
    def next_seq(self) -> int:
        """The seq the next batch starts at (events still pending are not counted)."""
        return self._seq

    def emit(self, type_: str, **fields: Any) -> None:
        """Queue one event; a flush starts at once unless one is already in flight."""
        if self.closed:
            raise RuntimeError(f"turn {self.turn_id}: event {type_!r} after the terminal event")
        pending = self._pending
        if type_ == "token" and pending and pending[-1]["type"] == "token":
            pending[-1]["text"] += fields["text"]
        else:
            pending.append({"type": type_, **fields})
        if self._flusher is None and self._error is None:
            self._flusher = asyncio.create_task(self._flush(), name=f"publish:{self.turn_id}")

    def token(self, text: str) -> None:
        if text:
            self.emit("token", text=text)

    def sentence(self, text: str) -> None:
        self.emit("sentence", text=text)

    async def close(self, type_: str, **fields: Any) -> None:
        """Queue the terminal event (``done`` or ``error``) and wait until all is written."""
        if type_ not in TERMINAL:
            raise ValueError(f"{type_!r} is not a terminal event type")
        self.emit(type_, **fields)
        self.closed = True
        if self._hurry is not None and not self._hurry.done():
            self._hurry.set_result(None)  # the terminal event does not wait for the window
        await self.drain()

    async def drain(self) -> None:
        """Wait until every queued event is written; raise :class:`PublishError` if not."""
        while self._flusher is not None:
            # shield: a cancel of the caller must not abort a batch half-way through
            await asyncio.shield(self._flusher)
        if self._error is not None:
            raise PublishError(f"turn {self.turn_id}: events not written") from self._error

    async def _wait_for_window(self) -> None:
        loop = asyncio.get_running_loop()
        if self._last_flush is None or self.closed:
            return
        wait = self._last_flush + self._interval - loop.time()
        if wait <= 0:
            return
        hurry = self._hurry = loop.create_future()
        timer = loop.call_later(wait, _resolve, hurry)
        try:
            await hurry
        finally:
            timer.cancel()
            self._hurry = None

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending and self._error is None:
                if self._interval:
                    await self._wait_for_window()
                batch, self._pending = self._pending, []
                if self._interval and any(e["type"] in _CONTENT for e in batch):
                    # the window runs from the first content (a route event does not count)
                    self._last_flush = loop.time()
                encoded = []
                for event in batch:
                    encoded.append(encode({"seq": self._seq, **event}))
                    self._seq += 1
                await self._script(keys=self._keys, args=[BUFFER_TTL_S, *encoded])
                self.flushes += 1
                self.published += len(batch)
        except Exception as exc:  # Redis down: the terminal close reports it
            log.error("turn %s: publishing failed: %r", self.turn_id, exc)
            self._error = exc
        finally:
            self._flusher = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
