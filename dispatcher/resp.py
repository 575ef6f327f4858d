"""A lean asyncio Redis wire (RESP2) for the per-token hot path: pipelined calls.

redis-py's asyncio client costs tens of microseconds of Python per command (pool
checkout, retry wrapper, encoder, a ``StreamWriter`` write and a parser round per
reply). A streamed turn issues one command per token on the worker, so that cost is paid
~20 times per turn. This module does the same work directly on an ``asyncio.Protocol``:

* :class:`Pipeline`: one connection per process; every :meth:`Pipeline.call` appends the
  encoded command to a buffer that is written once per event-loop iteration, so the
  commands of all concurrent turns share one ``write`` (auto-pipelining); replies are
  matched to calls in order. ``EVALSHA`` falls back to ``EVAL`` on ``NOSCRIPT``.
  It connects lazily and fails the calls in flight with :class:`Unavailable` when the
  connection drops (the next call reconnects).
* :class:`Subscriber`: one pub/sub connection whose messages are parsed in
  ``data_received`` and handed to a callback, with no task and no queue per message; it
  reconnects on its own and subscribes again to every channel still wanted.

Both authenticate and select the database given by the URL (``redis://``, ``rediss://``
or ``unix://``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

Arg = bytes | str | int | float
P = TypeVar("P", bound=asyncio.Protocol)
#: a Lua script to call as ``script(keys=[...], args=[...])``: redis-py's ``AsyncScript`` or
#: :class:`Script`
ScriptCall = Callable[..., Awaitable[Any]]


class RespError(Exception):
    """Raised for (or returned as) an error reply of Redis; the message is Redis's."""


class Unavailable(ConnectionError):
    """Redis could not be reached, or the connection broke with calls in flight."""


#: the URL schemes this module connects to
SCHEMES = ("redis", "rediss", "unix")


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
        raise Unavailable(f"unexpected reply from Redis: {line[:40]!r}")


class _Endpoint:
    """Where to connect, and what to send first (AUTH, SELECT), from a Redis URL.

    ``redis://`` (TCP), ``rediss://`` (TLS, the system's trusted CAs) and ``unix://``
    (a socket path; ``?db=N`` selects the database).
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.path = parts.path
        self.hello: list[list[Arg]] = []
        if parts.password:
            user = unquote(parts.username or "")
            password = unquote(parts.password)
            self.hello.append(["AUTH", user, password] if user else ["AUTH", password])
        if parts.scheme == "unix":
            db = dict(parse_qsl(parts.query)).get("db", "")
        else:
            db = parts.path.lstrip("/")
        if db and db != "0":
            self.hello.append(["SELECT", int(db)])

    async def connect(self, factory: Callable[[], P]) -> P:
        loop = asyncio.get_running_loop()
        if self.scheme == "unix":
            _, proto = await loop.create_unix_connection(factory, self.path)
        elif self.scheme == "rediss":
            context = ssl.create_default_context()
            _, proto = await loop.create_connection(
                factory, self.host, self.port, ssl=context, server_hostname=self.host)
        else:
            _, proto = await loop.create_connection(factory, self.host, self.port)
        return proto


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
            self._on_lost(Unavailable(f"bad reply from Redis: {exc}"))
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
        try:
            proto = await ep.connect(lambda: _Protocol(self._on_replies, self._on_lost))
        except OSError as exc:
            raise Unavailable(f"cannot connect to Redis: {exc}") from exc
        hello = [loop.create_future() for _ in ep.hello]
        for command, fut in zip(ep.hello, hello, strict=True):
            self._queue(proto, encode_command(command), fut)
        for fut in hello:
            reply = await fut
            if isinstance(reply, RespError):
                if proto.transport is not None:
                    proto.transport.close()
                raise Unavailable(f"Redis refused the connection setup: {reply}")
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
        error = Unavailable(f"the Redis connection was lost: {exc or 'closed'}")
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


class Subscriber:
    """One pub/sub connection shared by a process: ``SUBSCRIBE`` by channel, a callback.

    ``on_message(channel, data)`` runs inside ``data_received`` for every message, so it
    must not block. :meth:`subscribe` returns once Redis confirmed the subscription. The
    connection is kept by a background task (:meth:`start`) and always subscribed to
    ``home`` besides the wanted channels; after a drop it reconnects with a growing pause,
    subscribes again to every wanted channel in one write and, once Redis confirmed them
    all, calls ``on_reconnect()`` (what was published meanwhile is lost: pub/sub is
    at-most-once, so the caller re-reads whatever it keeps elsewhere).
    """

    def __init__(self, url: str, home: str, on_message: Callable[[bytes, bytes], None],
                 on_reconnect: Callable[[], None] | None = None,
                 client_name: str | None = None) -> None:
        self._endpoint = _Endpoint(url)
        if client_name:  # CLIENT LIST shows it; operators (and tests) can find the connection
            self._endpoint.hello.append(["CLIENT", "SETNAME", client_name])
        self._home = home.encode()
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._wanted: set[bytes] = set()
        self._pending: dict[bytes, list[asyncio.Future[None]]] = {}
        self._proto: _Protocol | None = None
        self._lost: asyncio.Future[None] | None = None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._hello_left = 0
        self._batch_last: bytes | None = None  # the last channel of the (re)subscribe write
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def start(self, wait_s: float = 2.0) -> bool:
        """Start keeping the connection; whether it is up within ``wait_s`` seconds."""
        self._task = asyncio.create_task(self._keep(), name="resp-subscriber")
        try:
            await asyncio.wait_for(self._up.wait(), wait_s)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop()
        for futures in self._pending.values():
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)
        self._pending.clear()

    async def subscribe(self, channel: bytes) -> None:
        """Subscribe (if not already) and wait for Redis's confirmation."""
        if channel in self._wanted and channel not in self._pending and self.connected:
            return  # subscribed and confirmed already
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, []).append(fut)
        if channel not in self._wanted:
            self._wanted.add(channel)
            # on the connection now (behind any resubscribe batch), or in the next batch
            self._send(["SUBSCRIBE", channel])
        try:
            await fut
        finally:
            waiters = self._pending.get(channel)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._pending[channel]

    def unsubscribe(self, channel: bytes) -> None:
        """Leave ``channel`` (no wait: messages still in flight for it are dropped)."""
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._send(["UNSUBSCRIBE", channel])

    # -- internals ------------------------------------------------------------------------

    def _send(self, command: Sequence[Arg]) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.write(encode_command(command))

    def _drop(self) -> None:
        proto, self._proto = self._proto, None
        self._up.clear()
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.05
        while True:
            self._lost = loop.create_future()
            try:
                proto = await self._endpoint.connect(
                    lambda: _Protocol(self._on_replies, self._on_lost))
            except OSError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self._proto = proto
            self._hello_left = len(self._endpoint.hello)
            channels = [self._home, *sorted(self._wanted)]
            self._batch_last = channels[-1]
            out = [encode_command(c) for c in self._endpoint.hello]
            out.append(encode_command(["SUBSCRIBE", *channels]))
            assert proto.transport is not None
            proto.transport.write(b"".join(out))
            was = self.connects
            await self._lost
            self._drop()
            backoff = 0.05 if self.connects > was else min(backoff * 2, 2.0)
            await asyncio.sleep(backoff)

    def _on_replies(self, replies: list[Any]) -> None:
        on_message = self._on_message
        for reply in replies:
            if type(reply) is list and len(reply) == 3:
                kind = reply[0]
                if kind == b"message":
                    on_message(reply[1], reply[2])
                elif kind == b"subscribe":
                    self._confirmed(reply[1])
            elif self._hello_left:
                self._hello_left -= 1
                if isinstance(reply, RespError):  # AUTH or SELECT refused
                    self._drop()
                    return

    def _confirmed(self, channel: bytes) -> None:
        for fut in self._pending.get(channel, ()):
            if not fut.done():
                fut.set_result(None)
        if channel == self._batch_last:
            # the whole (re)subscribe write is confirmed: the connection is up
            self._batch_last = None
            self.connects += 1
            self._up.set()
            if self.connects > 1 and self._on_reconnect is not None:
                self._on_reconnect()

    def _on_lost(self, exc: Exception | None) -> None:
        self._proto = None
        self._up.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
