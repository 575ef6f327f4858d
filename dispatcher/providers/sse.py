"""An incremental Server-Sent Events decoder (the WHATWG ``text/event-stream`` format).

Bytes go in as they arrive (any chunking: a line, an event or a UTF-8 character may be
split across chunks); whole events come out. Lines may end in LF, CRLF or CR; lines
starting with ``:`` are comments (keep-alives) and are skipped; several ``data:`` lines
are joined with ``\\n``; an event with no ``data`` is not dispatched.

One deliberate leniency: at the end of the body a last event whose lines are complete but
which lacks the closing blank line is still dispatched (some servers end the body right
after ``data: [DONE]\\n``). A half-received line is dropped, as the standard says.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEEvent", "aiter_sse", "iter_sse"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. ``event`` is ``"message"`` when the server named none."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes with :meth:`feed`, collect events; call :meth:`flush` at end of body."""

    __slots__ = ("_data", "_event", "_has_data", "_pending", "_retry", "last_event_id")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[str] = []
        self._has_data = False
        self._event = ""
        self._retry: int | None = None
        #: the ``id`` in force, kept across events as the standard requires
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk`` and return the events it completes (often none or one)."""
        buf = self._pending + chunk if self._pending else chunk
        if not buf:
            return []
        lines = buf.splitlines(keepends=True)
        last = lines[-1]
        # An unterminated last line waits for more bytes; so does a trailing CR, which may
        # be the first half of a CRLF split across two chunks.
        if last.endswith(b"\n"):
            self._pending = b""
        else:
            self._pending = lines.pop()
        out: list[SSEEvent] = []
        for raw in lines:
            self._line(raw.rstrip(b"\r\n"), out)
        return out

    def flush(self) -> list[SSEEvent]:
        """End of body: dispatch a complete but unclosed last event, drop a partial line."""
        out: list[SSEEvent] = []
        pending, self._pending = self._pending, b""
        if pending.endswith(b"\r"):
            self._line(pending.rstrip(b"\r"), out)
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            if self._has_data:
                out.append(
                    SSEEvent(
                        data="\n".join(self._data),
                        event=self._event or "message",
                        id=self.last_event_id,
                        retry=self._retry,
                    )
                )
            self._data = []
            self._has_data = False
            self._event = ""
            self._retry = None
            return
        if line[0] == 0x3A:  # ":" starts a comment
            return
        text = line.decode("utf-8", errors="replace")
        name, sep, value = text.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncGenerator[SSEEvent, None]:
    """Decode an async byte stream (e.g. ``httpx.Response.aiter_bytes()``) into events."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.flush():
        yield event


def iter_sse(chunks: Iterable[bytes]) -> list[SSEEvent]:
    """Decode a whole byte sequence at once (tests and recorded payloads)."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events
