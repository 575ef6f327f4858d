"""A lean HTTP/1.1 transport for httpx: keep-alive connections on ``asyncio.Protocol``.

The adapters speak httpx (its client API, its errors, ``MockTransport`` in the tests); only
the bytes on the wire go through this transport instead of httpcore. Why: a streamed turn
is one request and ~20 small chunks, and under load httpcore's path (an anyio stream, h11's
state machine, a ``Timeout`` and a checkpoint per chunk, the pool's scan on every request
and release) was half of a worker's CPU (``docs/performance.md``). Here a chunk costs one
call of httptools' C parser (the one uvicorn uses) and one wake-up of the reader.

What it does:

* one pool per (scheme, host, port), most recently used connection first, at most
  ``max_connections`` open in all (waiting up to the request's ``pool`` timeout for a
  free one), idle ones closed after ``keepalive_expiry``;
* TLS with httpx's default SSL context (certifi) for ``https``;
* the request's ``connect`` timeout on connecting and its ``read`` timeout on every wait
  for bytes (None: no limit; the adapters bound reads with their own deadlines);
* a response closed before its end closes its connection at once (that is how a cancelled
  turn stops the provider's generation), unless the reader called the response's
  :data:`REUSE` extension first, saying it has read all it wanted (an adapter that stopped
  at ``data: [DONE]``, just before the chunked terminator): then the connection *drains*
  and goes back to the pool when the rest of the message arrives, or is closed if more than
  :data:`DRAIN_LIMIT` bytes come instead;
* a reused connection that the server had closed (no byte of an answer) is retried once on
  a new connection, as browsers and urllib3 do;
* httpx's exceptions: ``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``,
  ``ReadTimeout``, ``ReadError``, ``RemoteProtocolError``, ``WriteError``.

Not handled (not needed by the adapters): HTTP/2, ``Expect: 100-continue``, upgrades,
request bodies streamed without a length (they are read whole first), HEAD requests.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any

import httptools
import httpx

#: The response extension to call (no arguments) before closing a response whose rest is
#: not wanted but whose connection may be kept.
REUSE = "dispatcher.reuse_connection"
#: Bytes a response closed early may still bring before its connection is given up.
DRAIN_LIMIT = 64 * 1024
#: Buffered body bytes above which reading pauses until the consumer catches up.
HIGH_WATER = 1024 * 1024

Key = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: LeanTransport, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._parser: Any = None
        self._status = 0
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._paused = False
        self._wake: asyncio.Future[None] | None = None
        self._keep_alive = True
        self._reset()

    def _reset(self) -> None:
        """Forget the previous exchange (a new request is about to be sent)."""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks.clear()
        self._buffered = 0
        self._error: Exception | None = None
        self._complete = False
        self._got_bytes = False
        self._draining = False
        self._drained = 0
        self.reusable = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._parser is None:  # bytes while idle: the connection is not usable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self._complete:
            if self._head is not None and not self._head.done():
                self._fail(httpx.RemoteProtocolError(
                    "Server disconnected without sending a response."))
            else:
                self._fail(httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"))
        self.pool._forget(self)

    def pause_writing(self) -> None:  # pragma: no cover - request bodies are small
        pass

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._draining:
            self._drained += len(body)
            if self._drained > DRAIN_LIMIT:
                self.close()
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._notify()

    def on_message_complete(self) -> None:
        self._complete = True
        self._notify()
        if self._draining:
            self._release()

    # -- one exchange ---------------------------------------------------------------------

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved: the caller may be gone
        self._notify()

    async def exchange(self, head: bytes, body: bytes, read_timeout: float | None
                       ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send the request; wait for the response's status and headers."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._reset()
        self._parser = httptools.HttpResponseParser(self)
        self._head = loop.create_future()
        try:
            self.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                self.transport.write(body)
        except (OSError, RuntimeError) as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
        try:
            async with asyncio.timeout(read_timeout):
                await self._head
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("no response headers within the read timeout") from None
        return self._status, self._headers

    async def read(self, read_timeout: float | None) -> bytes | None:
        """The next body bytes, or None at the end of the message."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._paused and self._buffered < HIGH_WATER // 2:
                    self._paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                return data
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(read_timeout):
                    await self._wake
            except TimeoutError:
                self.close()
                raise httpx.ReadTimeout("no body bytes within the read timeout") from None
            finally:
                self._wake = None

    def finish(self) -> None:
        """The response is closed: keep the connection for the next request if possible."""
        if self.closed:
            return
        if self._complete:
            self._release()
        elif self.reusable and self._error is None:
            self._draining = True  # released by on_message_complete
            self._chunks.clear()
            self._buffered = 0
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
        else:
            self.close()

    def allow_reuse(self) -> None:
        """The reader wants no more of this response; keep the connection if it ends soon."""
        self.reusable = True

    def _release(self) -> None:
        self._parser = None
        self._draining = False
        if not self._keep_alive or self.closed:
            self.close()
            return
        self.pool._put_back(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.pool._forget(self)


class _Body(httpx.AsyncByteStream):
    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn = conn
        self._timeout = read_timeout
        self._closed = False

    async def __aiter__(self) -> Any:
        conn, timeout = self._conn, self._timeout
        while True:
            data = await conn.read(timeout)
            if data is None:
                return
            yield data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.finish()


class LeanTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` over pooled keep-alive HTTP/1.1 connections."""

    def __init__(self, max_connections: int = 1000, keepalive_expiry: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[Key, deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self.connects = 0

    # -- the pool -------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def _put_back(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        conn.reused = True
        self._idle.setdefault(conn.key, deque()).append(conn)
        self._wake_slot_waiter()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.key)
            if idle is not None and conn in idle:
                idle.remove(conn)
            self._wake_slot_waiter()

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _take_idle(self, key: Key) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        horizon = time.monotonic() - self.keepalive_expiry
        while idle:
            conn = idle.pop()  # most recently used first
            if conn.closed:
                continue
            if conn.idle_since < horizon:
                conn.close()
                continue
            return conn
        return None

    async def _connection(self, key: Key, timeouts: dict[str, float | None]) -> _Connection:
        conn = self._take_idle(key)
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        pool_timeout = timeouts.get("pool")
        deadline = None if pool_timeout is None else loop.time() + pool_timeout
        while len(self._open) >= self.max_connections:
            # over the limit: close an idle connection of another host, or wait for one
            victim = next((c for q in self._idle.values() for c in q), None)
            if victim is not None:
                victim.close()
                continue
            waiter = loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection within the pool timeout") from None
            conn = self._take_idle(key)
            if conn is not None:
                return conn
        scheme, host, port = key
        conn = _Connection(self, key)
        self._open.add(conn)
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                if scheme == "https":
                    await loop.create_connection(lambda: conn, host, port,
                                                 ssl=self._ssl_context(), server_hostname=host)
                else:
                    await loop.create_connection(lambda: conn, host, port)
        except TimeoutError:
            self._forget(conn)
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            self._forget(conn)
            raise httpx.ConnectError(f"{host}:{port}: {exc.strerror or exc}") from exc
        self.connects += 1
        return conn

    # -- httpx ----------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.host, port)
        timeouts: dict[str, float | None] = request.extensions.get("timeout") or {}
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        head = _request_head(request, body)
        read_timeout = timeouts.get("read")
        for attempt in (1, 2):
            conn = await self._connection(key, timeouts)
            try:
                status, headers = await conn.exchange(head, body, read_timeout)
            except httpx.RemoteProtocolError:
                # a kept-alive connection the server had already closed: once more, fresh
                if attempt == 1 and conn.reused and not conn._got_bytes:
                    conn.close()
                    continue
                conn.close()
                raise
            except BaseException:
                conn.close()
                raise
            return httpx.Response(
                status,
                headers=headers,
                stream=_Body(conn, read_timeout),
                extensions={"http_version": b"HTTP/1.1", REUSE: conn.allow_reuse},
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


def _request_head(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), target)]
    has_length = False
    for name, value in request.headers.raw:
        low = name.lower()
        if low == b"transfer-encoding":
            continue  # the body is sent whole, with its length
        if low == b"content-length":
            has_length = True
        lines.append(name + b": " + value)
    if not has_length and (body or request.method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n"
