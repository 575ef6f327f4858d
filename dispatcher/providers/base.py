"""The common form every provider adapter speaks, whatever the API family.

An adapter turns one :class:`ChatRequest` (OpenAI-shaped messages and tools, the
dispatcher's lingua franca) into the provider's wire format, and the provider's stream
back into :data:`StreamEvent` values: text deltas, tool-call deltas (OpenAI form: an
``index``, then ``id`` and ``name`` once, then ``arguments`` fragments) and exactly one
final :class:`Finish` carrying the provider's own usage counts.

Adapters do not retry and do not fail over: that is ``workers/execute.py``'s job. They
raise only :class:`dispatcher.errors.ProviderError` subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dispatcher.domain import Usage


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One call: OpenAI-form ``messages`` (role, content, tool_calls, tool_call_id, name)."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    # OpenAI form: {"type": "function", "function": {...}}
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # "auto" | "none" | "required" | {function}
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of one tool call, OpenAI-style: ``id``/``name`` on the first piece only."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    """The last event of every successful stream."""

    reason: str  # "stop" | "length" | "tool_calls" | "content_filter"
    usage: Usage


StreamEvent = TextDelta | ToolCallDelta | Finish


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document, as OpenAI gives it


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-streamed) answer in the common form."""

    text: str
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage


class ProviderClient(Protocol):
    """What every adapter offers. ``name`` is the policy's provider name."""

    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]: ...

    async def complete(self, request: ChatRequest) -> Completion: ...
