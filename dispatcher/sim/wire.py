"""What the three provider formats share: a parsed call, the planned answer, the byte script.

A format module (:mod:`dispatcher.sim.formats`) turns a provider request into a
:class:`SimCall`; :func:`plan_answer` decides the :class:`Answer` (format-free); the format
renders it as a :class:`Script` of pre-encoded SSE events or as a whole body, and renders
errors as a :class:`Reply`. The engine (:mod:`dispatcher.sim.engine`) only moves bytes.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dispatcher.sim.answer import (
    answer_tokens,
    argument_fragments,
    count_tokens,
    tool_arguments_json,
)
from dispatcher.sim.state import Fault, Latency

Finish = Literal["stop", "length", "tool_calls", "content_filter"]
Headers = list[tuple[bytes, bytes]]


def random_id(length: int) -> str:
    """Return a random alphanumeric id of ``length`` characters, like the providers' ids."""
    # base64 of random bytes without "+" and "/": ten times cheaper than secrets.choice
    # per character, and ids are made several times per request.
    text = base64.b64encode(os.urandom(length)).translate(None, b"+/=").decode()
    return text[:length] if len(text) >= length else text + random_id(length - len(text))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """The tool the simulated model calls: its name and its parameters' JSON schema."""

    name: str
    schema: Mapping[str, Any]


@dataclass(slots=True)
class SimCall:
    """One provider request in the simulator's common form.

    ``prompt`` is the text of the last user message that has text; ``input_tokens`` is
    :func:`~dispatcher.sim.answer.count_tokens` summed over every text of the request.
    ``tool`` is set when the model should answer with a tool call. ``include_usage`` and
    ``obfuscate`` (OpenAI) and ``sse`` (Gemini) only matter to their own format.
    """

    model: str
    prompt: str
    input_tokens: int
    stream: bool
    max_tokens: int | None = None
    tool: ToolSpec | None = None
    include_usage: bool = False
    obfuscate: bool = False
    sse: bool = True


@dataclass(slots=True)
class Answer:
    """What the simulated model says: text tokens, or one tool call in argument fragments.

    ``units`` are the tokens streamed one per inter-token interval (text tokens, or
    pieces of the tool call's JSON arguments); ``len(units)`` is the output token count.
    """

    units: list[str]
    finish: Finish
    tool: ToolSpec | None = None
    tool_id: str = ""

    @property
    def text(self) -> str:
        """The whole answer text ("" for a tool call)."""
        return "" if self.tool else "".join(self.units)

    @property
    def arguments(self) -> str:
        """The tool call's JSON arguments as sent (partial if the answer was capped)."""
        return "".join(self.units) if self.tool else ""


def text_pieces_tokens(pieces: list[str]) -> int:
    """Return the input token count of a request whose texts are ``pieces``."""
    return sum(count_tokens(p) for p in pieces)


def plan_answer(call: SimCall, latency: Latency, fault: Fault) -> Answer:
    """Decide the answer to ``call``: content filter, tool call, or text.

    A text answer is ``answer_tokens(prompt, latency.tokens)``; ``max_tokens`` keeps only
    its first tokens (finish "length"), as a real model is cut mid-sentence. A tool call
    streams the fragments of :func:`~dispatcher.sim.answer.tool_arguments_json`, capped
    the same way.
    """
    if fault.kind == "content_filter":
        return Answer([], "content_filter")
    cap = call.max_tokens
    if call.tool is not None:
        units = argument_fragments(tool_arguments_json(call.tool.schema, call.prompt))
        finish: Finish = "tool_calls"
        tool_id = random_id(24)
        if cap is not None and cap < len(units):
            units, finish = units[:cap], "length"
        return Answer(units, finish, call.tool, tool_id)
    units = answer_tokens(call.prompt, latency.tokens)
    if cap is not None and cap < len(units):
        return Answer(units[:cap], "length")
    return Answer(units, "stop")


@dataclass(slots=True)
class Script:
    """A whole stream, pre-encoded: one ``bytes`` per SSE event (one write each).

    ``head`` goes out with the headers; unit ``i`` of ``units`` (one output token, zero
    or more events) at ttft + i * itl; ``tail`` right after the last unit. When a fault
    stops the stream after the last unit, ``open_last`` replaces it (Gemini marks its
    last chunk with finishReason). ``error`` is the provider's mid-stream error event.
    """

    headers: Headers
    head: list[bytes]
    units: list[tuple[bytes, ...]]
    tail: list[bytes]
    error: bytes
    open_last: tuple[bytes, ...] | None = None


class Reply(Response):
    """A whole response (status, raw headers, body) that is cheap to build and to send."""

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: Headers | None = None,
        content_type: bytes = b"application/json",
    ) -> None:
        # Response.__init__ is skipped on purpose: the headers are already raw bytes.
        self.status_code = status
        self.body: bytes = body
        self.background = None
        self.raw_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ]

    async def send_to(self, send: Send) -> None:
        """Send the whole response through an ASGI ``send``."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send_to(send)


class ApiError(Exception):
    """Raised while parsing a provider request; carries the provider's error reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status_code)
        self.reply = reply


@dataclass(slots=True)
class ParsedTools:
    """The tools of a request and which one a forced tool choice names."""

    tools: list[ToolSpec] = field(default_factory=list)
    forced: str | None = None
    disabled: bool = False

    def pick(self) -> ToolSpec | None:
        """Return the tool to call: the forced one, else the first; None if disabled."""
        if self.disabled or not self.tools:
            return None
        if self.forced is not None:
            return next((t for t in self.tools if t.name == self.forced), None)
        return self.tools[0]


#: The errors a fault can ask a format for; "overloaded" is the whole-response form of
#: the mid-stream error.
ErrorKind = Literal["rate_limited", "server_error", "unavailable", "context_too_long", "overloaded"]


class ProviderFormat(Protocol):
    """One provider's wire format: auth, request parsing, rendering of answers and errors."""

    name: str

    def authenticate(self, request: Request) -> Reply | None:
        """Return the provider's auth error if the key is missing or bad, else None."""
        ...

    def parse(self, request: Request, body: Any) -> SimCall:
        """Read the request; raise :class:`ApiError` with the provider's 400 if invalid."""
        ...

    def script(self, call: SimCall, answer: Answer) -> Script:
        """Render a streamed answer."""
        ...

    def body(self, call: SimCall, answer: Answer) -> Reply:
        """Render a whole (non-streamed) answer."""
        ...

    def error(self, kind: ErrorKind, call: SimCall, fault: Fault) -> Reply:
        """Render the provider's error reply for an injected fault."""
        ...


class Template:
    """A JSON document with one hole, split around it once so each fill is a concat.

    ``Template(prefix, doc, suffix)`` where ``doc`` holds :data:`HOLE` once;
    ``fill(value)`` returns ``prefix + json(doc with value) + suffix``.
    """

    __slots__ = ("_after", "_before")

    def __init__(self, prefix: bytes, doc: Any, suffix: bytes) -> None:
        raw = orjson.dumps(doc)
        before, sep, after = raw.partition(orjson.dumps(HOLE))
        if not sep:
            raise ValueError("the template document has no hole")
        self._before = prefix + before
        self._after = after + suffix

    def fill(self, value: Any) -> bytes:
        """Return the event with ``value`` (JSON-encoded) in the hole."""
        return self._before + orjson.dumps(value) + self._after


#: The placeholder of a :class:`Template`.
HOLE = "\x00sim-hole\x00"


def json_event(prefix: bytes, doc: Any, suffix: bytes) -> bytes:
    """Return one event: ``prefix + compact JSON of doc + suffix``."""
    return prefix + orjson.dumps(doc) + suffix
