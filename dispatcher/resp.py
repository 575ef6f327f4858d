"""A lean asyncio Redis wire (RESP2) for the per-token hot path: pipelined calls.

redis-py's asyncio client costs tens of microseconds of Python per command (pool
checkout, retry wrapper, encoder, a ``StreamWriter`` write and a parser round per
reply). A streamed turn issues one command per token on the worker, so that cost is paid
~20 times per turn. This module does the same work directly on an ``asyncio.Protocol``:

* :class:`Pipeline`: one connection per process; every :meth:`Pipeline.call` appends the
  encoded command to a buffer that is written once per event-loop iteration, so the
  commands of all concurrent turns share one ``write`` (auto-pipelining); replies are
  matched to calls in order. ``EVALSHA`` falls back to ``EVAL`` on ``NOSCRIPT``.
It connects lazily, authenticates and select the database of a ``redis://`` URL, and fail
the calls in flight with :class:`ConnectionError` when the connection drops (the next call
reconnects). TLS and Unix sockets are not handled here: :func:`supported` says whether a
URL can use this module, and callers keep redis-py for the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

Arg = bytes | str | int | float
#: a Lua script to call as ``script(keys=[...], args=[...])``: redis-py's ``AsyncScript`` or
#: :class:`Script`
ScriptCall = Callable[..., Awaitable[Any]]


class RespError(Exception):
    """Raised for (or returned as) an error reply of Redis; the message is Redis's."""


def supported(url: str) -> bool:
    """Whether ``url`` is a plain TCP ``redis://`` URL this module can connect to."""
    return urlsplit(url).scheme == "redis"


def _bulk(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        data = arg
    elif isinstance(arg, str):
        data = arg.encode()
    else:
        data = repr(arg).encode() if isinstance(arg, float) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


class Parser:
    """Incremental RESP2 parser: :meth:`feed` bytes, get the complete replies."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf[self._pos:] + data if self._pos < len(self._buf) else data
        self._buf, self._pos = buf, 0
        out = []
        while self._pos < len(buf):
            start = self._pos
            try:
                reply = self._one()
            except IndexError:  # incomplete: wait for more bytes
                self._pos = start
                break
            out.append(reply)
        return out

    def _line(self) -> bytes:
        end = self._buf.find(b"\r\n", self._pos)
        if end < 0:
            raise IndexError
        line = self._buf[self._pos:end]
        self._pos = end + 2
        return line

    def _one(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            end = self._pos + n
            if end + 2 > len(self._buf):
                raise IndexError
            data = self._buf[self._pos:end]
            self._pos = end + 2
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._one() for _ in range(n)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")


class _Endpoint:
    """Where to connect, and what to send first (AUTH, SELECT), from a ``redis://`` URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"only redis:// URLs are supported here, not {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.hello: list[list[Arg]] = []
        if parts.password:
            user = unquote(parts.username or "")
            password = unquote(parts.password)
            self.hello.append(["AUTH", user, password] if user else ["AUTH", password])
        db = parts.path.lstrip("/")
        if db and db != "0":
            self.hello.append(["SELECT", int(db)])


class _Protocol(asyncio.Protocol):
    def __init__(self, on_replies: Callable[[list[Any]], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = Parser()
        self._on_replies = on_replies
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except Exception as exc:  # a protocol error: this connection is unusable
            if self.transport is not None:
                self.transport.close()
            self._on_lost(ConnectionError(f"bad reply from Redis: {exc}"))
            return
        if replies:
            self._on_replies(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class Pipeline:
    """Auto-pipelined calls on one connection; safe to share by every task of a loop."""

    def __init__(self, url: str) -> None:
        self._endpoint = _Endpoint(url)
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._waiting: deque[asyncio.Future[Any] | None] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.calls = 0
        self.writes = 0

    async def call(self, *args: Arg) -> Any:
        """Send one command (batched with the others of this loop turn); its reply."""
        proto = self._proto or await self._connect()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(proto, encode_command(args), fut)
        reply = await fut
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def evalsha(self, script: bytes | str, sha: str, keys: Sequence[Arg],
                      args: Sequence[Arg]) -> Any:
        """Run a Lua script by its SHA1, loading it on the first ``NOSCRIPT``."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script, len(keys), *keys, *args)

    def script(self, source: str) -> Script:
        return Script(self, source)

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    # -- internals ------------------------------------------------------------------------

    def _queue(self, proto: _Protocol, data: bytes, fut: asyncio.Future[Any] | None) -> None:
        self._out.append(data)
        self._waiting.append(fut)
        self.calls += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, proto)

    def _flush(self, proto: _Protocol) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(b"".join(out))
            self.writes += 1

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        ep = self._endpoint
        _, proto = await loop.create_connection(
            lambda: _Protocol(self._on_replies, self._on_lost), ep.host, ep.port)
        hello = [loop.create_future() for _ in ep.hello]
        for command, fut in zip(ep.hello, hello, strict=True):
            self._queue(proto, encode_command(command), fut)
        for fut in hello:
            reply = await fut
            if isinstance(reply, RespError):
                if proto.transport is not None:
                    proto.transport.close()
                raise ConnectionError(f"Redis refused the connection setup: {reply}")
        self._proto = proto
        return proto

    def _on_replies(self, replies: list[Any]) -> None:
        waiting = self._waiting
        for reply in replies:
            fut = waiting.popleft() if waiting else None
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def _on_lost(self, exc: Exception | None) -> None:
        self._proto = None
        self._out = []
        waiting, self._waiting = self._waiting, deque()
        error = ConnectionError(f"the Redis connection was lost: {exc or 'closed'}")
        for fut in waiting:
            if fut is not None and not fut.done():
                fut.set_exception(error)


class Script:
    """A Lua script bound to a :class:`Pipeline`, called like redis-py's ``AsyncScript``."""

    def __init__(self, pipeline: Pipeline, source: str) -> None:
        self.pipeline = pipeline
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        return await self.pipeline.evalsha(self.source, self.sha, keys, args)
