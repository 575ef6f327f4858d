"""Moving the bytes: paced streams, delayed whole answers, hangs, cuts, disconnects.

Each response runs its writer in a task next to a watcher of ``receive()``: when the
client goes away the writer is cancelled at once, whatever it is waiting for, and the
call counts as cancelled. The per-token path is a sleep and one ``send`` per event of
pre-encoded bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from dispatcher.sim.state import CallRecord, Fault
from dispatcher.sim.wire import Reply, Script

#: The longest a "hang" fault keeps a request open.
HANG_CAP_S = 3600.0


class StreamCut(Exception):
    """Raised inside a response to drop the connection on purpose (a simulated cut)."""


def _is_not_a_cut(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, StreamCut)


def quiet_cut_logs() -> None:
    """Keep uvicorn from logging our deliberate cuts as application errors.

    A cut is done by raising :class:`StreamCut` after the response started, which makes
    uvicorn close the connection without the final chunk: the client sees an
    incomplete body, as when a provider's connection drops.
    """
    logger = logging.getLogger("uvicorn.error")
    if _is_not_a_cut not in logger.filters:
        logger.addFilter(_is_not_a_cut)


def _chunk(body: bytes) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": True}


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


Writer = Callable[[Send], Awaitable[None]]


class GuardedResponse(Response):
    """A response whose writer is cancelled as soon as the client disconnects."""

    def __init__(self, writer: Writer, record: CallRecord) -> None:
        # Response.__init__ is skipped on purpose: the writer sends its own headers.
        self.status_code = 200
        self.background = None
        self._writer = writer
        self._record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = asyncio.ensure_future(self._writer(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((writer, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not writer.done():
                writer.cancel()
                # Let the writer record the cancellation before the request ends.
                await asyncio.gather(writer, return_exceptions=True)
                self._record.finish("cancelled")
        if not writer.cancelled():
            writer.result()  # re-raises StreamCut (a deliberate cut) or a bug


def stream_writer(
    script: Script,
    *,
    start: float,
    ttft_s: float,
    itl_s: float,
    fault: Fault,
    record: CallRecord,
    input_tokens: int,
) -> Writer:
    """Return the writer of a streamed answer, honouring cut and mid-stream error faults.

    Unit ``i`` goes out at ``start + ttft_s + i * itl_s`` (loop time), so pacing does not
    drift when the loop is busy.
    """

    async def write(send: Send) -> None:
        loop = asyncio.get_running_loop()
        stats = record.stats
        with _settles(record):
            await send({"type": "http.response.start", "status": 200, "headers": script.headers})
            record.add_input(input_tokens)
            for event in script.head:
                await send(_chunk(event))
            units = script.units
            n = len(units)
            stops = fault.kind in ("cut_after", "error_event_after")
            stop = min(fault.arg, n) if stops else n
            pending = 0
            for i in range(stop):
                delay = start + ttft_s + i * itl_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                unit = units[i]
                if stops and i == n - 1 and script.open_last is not None:
                    unit = script.open_last
                pending += 1
                if unit:
                    for event in unit:
                        await send(_chunk(event))
                    stats.output_tokens += pending
                    pending = 0
            if n == 0:
                # An answer without tokens (a content filter) still takes its ttft.
                delay = start + ttft_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if fault.kind == "cut_after":
                record.finish("failed")
                raise StreamCut(f"cut after {stop} tokens")
            if fault.kind == "error_event_after":
                await send({"type": "http.response.body", "body": script.error})
                record.finish("failed")
                return
            tail = script.tail
            for event in tail[:-1]:
                await send(_chunk(event))
            await send({"type": "http.response.body", "body": tail[-1] if tail else b""})
            record.finish("completed")

    return write


def complete_writer(
    reply: Reply,
    *,
    start: float,
    delay_s: float,
    fault: Fault,
    error: Reply,
    record: CallRecord,
    input_tokens: int,
    output_tokens: int,
) -> Writer:
    """Return the writer of a whole (non-streamed) answer, sent ``delay_s`` after ``start``.

    ``cut_after`` sends the headers and half the body, then drops the connection;
    ``error_event_after`` sends ``error`` instead of the answer.
    """

    async def write(send: Send) -> None:
        loop = asyncio.get_running_loop()
        with _settles(record):
            delay = start + delay_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if fault.kind == "error_event_after":
                await error.send_to(send)
                record.finish("failed")
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status_code,
                    "headers": reply.raw_headers,
                }
            )
            record.add_input(input_tokens)
            if fault.kind == "cut_after":
                await send(_chunk(reply.body[: len(reply.body) // 2]))
                record.stats.output_tokens += output_tokens // 2
                record.finish("failed")
                raise StreamCut("cut a whole answer in half")
            await send({"type": "http.response.body", "body": reply.body})
            record.stats.output_tokens += output_tokens
            record.finish("completed")

    return write


@contextmanager
def _settles(record: CallRecord) -> Iterator[None]:
    """A call that ends by cancellation counts as cancelled, by any other exception as
    failed (``finish`` keeps the first outcome, so explicit ones stand)."""
    try:
        yield
    except asyncio.CancelledError:
        record.finish("cancelled")
        raise
    except BaseException:
        record.finish("failed")
        raise


def hang_writer(record: CallRecord) -> Writer:
    """Return a writer that never sends headers; after an hour it drops the connection."""

    async def write(send: Send) -> None:
        try:
            await asyncio.sleep(HANG_CAP_S)
        except asyncio.CancelledError:
            record.finish("cancelled")
            raise
        record.finish("failed")
        raise StreamCut("hang cap reached")

    return write
