"""The load generator's HTTP client: streamed POSTs over keep-alive HTTP/1.1, SSE parsed.

One client code path serves every target: the simulator's OpenAI-compatible endpoint
(direct), the ingress's ``/v1/chat/completions`` and its ``/v1/turns`` (through). Only the
path, the body and how a *token* is recognised differ (:class:`Target`).

Why not httpx: on a 2-core machine the load generator shares the CPU with what it
measures, and httpx spends several times more CPU per streamed chunk than this
``asyncio.Protocol`` with httptools' parser (the one uvicorn uses). A lean client leaves
the cores to the simulator, the ingress and the workers, for direct and through alike.

Each closed-loop user owns one :class:`Connection` and reuses it turn after turn; times are
taken with ``time.perf_counter()`` when bytes arrive.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httptools
import orjson

Kind = Literal["openai", "turns"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where and what to POST, and how its stream names tokens."""

    name: str  # "direct", "chat" or "turns"
    url: str  # base URL, "http://127.0.0.1:PORT"
    path: str
    kind: Kind
    body: bytes
    api_key: str | None = None

    def request_bytes(self) -> bytes:
        parts = urlsplit(self.url)
        head = [
            f"POST {self.path} HTTP/1.1",
            f"host: {parts.netloc}",
            "content-type: application/json",
            "accept: text/event-stream",
            f"content-length: {len(self.body)}",
        ]
        if self.api_key:
            head.append(f"authorization: Bearer {self.api_key}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


def openai_target(name: str, url: str, model: str, text: str,
                  api_key: str | None = None) -> Target:
    body = {"model": model, "stream": True,
            "messages": [{"role": "user", "content": text}]}
    return Target(name, url, "/v1/chat/completions", "openai", orjson.dumps(body), api_key)


def turns_target(url: str, text: str, api_key: str, session_id: str) -> Target:
    body: dict[str, Any] = {"session_id": session_id, "text": text}
    return Target("turns", url, "/v1/turns", "turns", orjson.dumps(body), api_key)


@dataclass(slots=True)
class TurnSample:
    """One turn as the client saw it."""

    ok: bool = False
    error: str | None = None
    ttft_ms: float | None = None
    total_ms: float = 0.0
    tokens: int = 0  # content chunks (token events) received
    gaps_ms: list[float] = field(default_factory=list)


class BenchError(Exception):
    """Raised when a stream fails at the HTTP level (status, parse error, closed socket)."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that streams one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser: Any = None
        self._done: asyncio.Future[None] | None = None
        self._kind: Kind = "openai"
        self._buf = b""
        self._sample = TurnSample()
        self._t0 = 0.0
        self._last = 0.0
        self._status = 0
        self._error_body = b""
        self._keep_alive = True
        self._ended = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            self._fail("unexpected upgrade")
        except httptools.HttpParserError as exc:
            self._fail(f"bad HTTP response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection closed by the server")

    # -- httptools callbacks --------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self._status != 200:
            self._error_body += body
            return
        buf = self._buf + body if self._buf else body
        if b"\n\n" not in buf:
            self._buf = buf
            return
        *events, self._buf = buf.split(b"\n\n")
        now = time.perf_counter()
        for raw in events:
            self._event(raw, now)

    def on_message_complete(self) -> None:
        sample = self._sample
        if self._status != 200:
            sample.error = f"HTTP {self._status}: {self._error_body[:200]!r}"
        elif not self._ended and sample.error is None:
            sample.error = "the stream ended without its terminal event"
        else:
            sample.ok = sample.error is None
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # -- SSE ------------------------------------------------------------------------------

    def _event(self, raw: bytes, now: float) -> None:
        name = b"message"
        data = b""
        for line in raw.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
            elif line.startswith(b"event: "):
                name = line[7:]
        if not data:
            return
        if self._kind == "turns":
            if name == b"token":
                self._token(now)
            elif name == b"done":
                self._ended = True
            elif name == b"error":
                self._ended = True
                self._sample.error = "error event: " + data[:200].decode(errors="replace")
            return
        if data == b"[DONE]":
            self._ended = True
            return
        chunk = orjson.loads(data)
        if "error" in chunk:
            self._sample.error = "error chunk: " + data[:200].decode(errors="replace")
            return
        for choice in chunk.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                self._token(now)

    def _token(self, now: float) -> None:
        sample = self._sample
        if sample.ttft_ms is None:
            sample.ttft_ms = (now - self._t0) * 1000
        else:
            sample.gaps_ms.append((now - self._last) * 1000)
        self._last = now
        sample.tokens += 1

    def _fail(self, why: str) -> None:
        if self._done is not None and not self._done.done():
            if self._sample.error is None:
                self._sample.error = why
            self._done.set_result(None)

    # -- one request ----------------------------------------------------------------------

    async def request(self, target: Target, raw: bytes, timeout: float) -> TurnSample:
        """Send one request and read its stream to the end; never raises on a bad stream."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._done = loop.create_future()
        self._kind = target.kind
        self._buf = b""
        self._status = 0
        self._error_body = b""
        self._ended = False
        self._sample = sample = TurnSample()
        self._t0 = time.perf_counter()
        self.transport.write(raw)
        try:
            await asyncio.wait_for(self._done, timeout)
        except TimeoutError:
            sample.error = f"no end of stream within {timeout:g}s"
            self.close()
        sample.total_ms = (time.perf_counter() - self._t0) * 1000
        if not sample.ok or not self._keep_alive:
            self.close()
        self._parser = None
        return sample

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


async def connect(url: str) -> Connection:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        Connection, parts.hostname or "127.0.0.1", parts.port or 80
    )
    return conn


class User:
    """One closed-loop user: a connection it reopens when the server closed it."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self._raw = target.request_bytes()
        self._conn: Connection | None = None

    async def turn(self) -> TurnSample:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await connect(self.target.url)
        except OSError as exc:
            return TurnSample(error=f"connect failed: {exc}")
        return await self._conn.request(self.target, self._raw, self.timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
