"""Turn events as OpenAI chat completions: chunks for a stream, one object otherwise.

Pure: events in, JSON bytes or dicts out. ``model`` is always the model that answered,
which the worker names on the first ``token``/``tool_call`` event and on ``done``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from dispatcher.api.relay import Event
from dispatcher.api.sse import sse_data

DONE = b"data: [DONE]\n\n"
CONTENT_EVENTS = frozenset({"token", "tool_call"})


def completion_id(turn_id: str) -> str:
    return f"chatcmpl-{turn_id}"


def usage_of(done: Mapping[str, Any] | None) -> dict[str, int]:
    """OpenAI's usage object from a ``done`` event's ``usage``."""
    raw = (done or {}).get("usage") or {}
    prompt = int(raw.get("input_tokens") or 0)
    completion = int(raw.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def tool_call_delta(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``tool_call`` event as OpenAI's ``delta.tool_calls[0]``: id and name only first."""
    fn: dict[str, Any] = {}
    if data.get("name"):
        fn["name"] = data["name"]
    fn["arguments"] = data.get("arguments") or ""
    delta: dict[str, Any] = {"index": int(data.get("index") or 0)}
    if data.get("id"):
        delta["id"] = data["id"]
        delta["type"] = "function"
    delta["function"] = fn
    return delta


def answering_model(events: Iterable[Event], default: str) -> str:
    """The model named by these events (first content event, failover or done)."""
    model = default
    for event in events:
        named = event.data.get("to_model") if event.type == "failover" else event.data.get("model")
        if isinstance(named, str) and named:
            model = named
            if event.type in CONTENT_EVENTS:
                break
    return model


@dataclass(slots=True)
class ChunkWriter:
    """Encodes a turn's events as ``chat.completion.chunk`` SSE messages."""

    turn_id: str
    model: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    saw_tool_call: bool = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": completion_id(self.turn_id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if self.include_usage:
            body["usage"] = None
        return sse_data(orjson.dumps(body))

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: Event) -> bytes | None:
        """The chunk for one event, or None for events OpenAI has no place for."""
        if event.type == "token":
            text = event.data.get("text") or ""
            return self._chunk({"content": text}) if text else None
        if event.type == "tool_call":
            self.saw_tool_call = True
            return self._chunk({"tool_calls": [tool_call_delta(event.data)]})
        return None

    def finish(self, done: Mapping[str, Any]) -> bytes:
        return self._chunk({}, finish_reason(done, self.saw_tool_call))

    def usage(self, done: Mapping[str, Any]) -> bytes:
        body = {
            "id": completion_id(self.turn_id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage_of(done),
        }
        return sse_data(orjson.dumps(body))


def finish_reason(done: Mapping[str, Any], saw_tool_call: bool) -> str:
    reason = done.get("finish_reason")
    if isinstance(reason, str) and reason:
        return reason
    return "tool_calls" if saw_tool_call else "stop"


def error_chunk(error: Mapping[str, Any]) -> bytes:
    """A mid-stream error as OpenAI sends it: the SDK raises ``APIError`` on it."""
    body = {"error": {"message": str(error.get("message") or "the turn failed"),
                      "type": "server_error", "param": None,
                      "code": str(error.get("code") or "error")}}
    return sse_data(orjson.dumps(body))


@dataclass(slots=True)
class Collected:
    """A whole turn, gathered from its events."""

    route: dict[str, Any]
    tokens: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    model: str = ""
    terminal: Event | None = None

    def add(self, event: Event) -> None:
        data = event.data
        if event.type == "token":
            self.tokens.append(str(data.get("text") or ""))
        elif event.type == "tool_call":
            index = int(data.get("index") or 0)
            call = self.tool_calls.setdefault(
                index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if data.get("id"):
                call["id"] = data["id"]
            if data.get("name"):
                call["function"]["name"] = data["name"]
            call["function"]["arguments"] += data.get("arguments") or ""
        elif event.type == "failover" and data.get("to_model"):
            self.model = str(data["to_model"])
        if event.type in CONTENT_EVENTS and not self.model and data.get("model"):
            self.model = str(data["model"])
        if event.terminal:
            self.terminal = event
            if data.get("model"):
                self.model = str(data["model"])

    @property
    def text(self) -> str:
        done = self.terminal.data if self.terminal is not None else {}
        text = done.get("text")
        return text if isinstance(text, str) else "".join(self.tokens)

    @property
    def failed(self) -> bool:
        return self.terminal is None or self.terminal.type != "done"

    def completion(self, turn_id: str, created: int) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        done = self.terminal.data if self.terminal is not None else {}
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None,
                                   "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {
            "id": completion_id(turn_id),
            "object": "chat.completion",
            "created": created,
            "model": self.model or str(self.route.get("model", "")),
            "system_fingerprint": None,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(done, bool(self.tool_calls)),
            }],
            "usage": usage_of(done),
        }

    def turn_body(self) -> dict[str, Any]:
        """The native non-streamed body: route fields, done (or error) fields, full text."""
        body: dict[str, Any] = {k: v for k, v in self.route.items() if k not in ("seq", "type")}
        terminal = self.terminal.data if self.terminal is not None else {}
        for key, value in terminal.items():
            if key not in ("seq", "type", "text", "code", "message"):
                body[key] = value
        body["status"] = "failed" if self.failed else "completed"
        body["text"] = self.text
        if self.tool_calls:
            body["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.failed:
            body["error"] = {"code": terminal.get("code", "error"),
                             "message": terminal.get("message", "the turn failed")}
        return body
