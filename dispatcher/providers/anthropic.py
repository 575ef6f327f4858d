"""Anthropic Messages API.

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version: 2023-06-01``.

Request translation from our OpenAI form: ``system`` (and ``developer``) messages become
the top-level ``system``; content parts become ``text`` / ``image`` blocks; an assistant's
``tool_calls`` become ``tool_use`` blocks; each ``tool`` message becomes a ``tool_result``
block of a user message; consecutive messages of one role are merged (the API wants
alternation) with ``tool_result`` blocks first. ``tools`` -> ``{name, description,
input_schema}``; ``tool_choice`` auto / required (``any``) / none / named (``tool``).
``max_tokens`` is required: the request's, else 1024.

Stream: ``message_start`` (input usage, incl. ``cache_read_input_tokens`` and
``cache_creation_input_tokens``), ``content_block_start`` (``text`` or ``tool_use`` with
``id`` and ``name``), ``content_block_delta`` (``text_delta``, ``input_json_delta``),
``content_block_stop``, ``message_delta`` (``stop_reason``, cumulative ``usage``),
``message_stop`` (the end marker), ``ping``, and ``error`` (see
:func:`dispatcher.providers.errors.error_from_stream_payload`: ``overloaded_error`` is a
``ProviderServerError(529)``, others a ``ProviderStreamError``). ``stop_reason: refusal``
raises ``ContentFiltered``. Anthropic's ``input_tokens`` excludes cache reads and writes,
so our ``input_tokens`` is their sum.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from dispatcher.domain import Usage
from dispatcher.errors import ContentFiltered, ProviderBadRequest, ProviderStreamError
from dispatcher.providers._adapter import Built, HttpAdapter, loads_or_stream_error, usage_of
from dispatcher.providers.base import (
    ChatRequest,
    Completion,
    Finish,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from dispatcher.providers.errors import error_from_stream_payload
from dispatcher.providers.sse import SSEEvent

__all__ = [
    "API_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicClient",
    "build_body",
    "parse_response",
    "parse_stream",
    "translate_messages",
    "translate_tool_choice",
    "translate_tools",
]

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}


def _text_of(content: Any) -> str:
    """The text of an OpenAI ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "")
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    )


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url", "") if isinstance(image, dict) else str(image or "")
    if url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[5:].partition(";base64,")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI ``content`` -> Anthropic content blocks (empty text dropped: the API refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            blocks.append(_image_block(part))
    return blocks


def _tool_input(arguments: Any, name: str) -> Any:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise ProviderBadRequest(
            f"tool call {name!r} has arguments that are not JSON", status=400
        ) from None


def translate_messages(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages -> (Anthropic ``system``, Anthropic ``messages``)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "assistant":
            blocks = _content_blocks(message.get("content"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                name = function.get("name", "")
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": name,
                        "input": _tool_input(function.get("arguments"), name),
                    }
                )
            role_out = "assistant"
        elif role == "tool":
            content = message.get("content")
            result: Any = content if isinstance(content, str) else _content_blocks(content)
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id", ""),
                    "content": result,
                }
            ]
            role_out = "user"
        else:
            blocks = _content_blocks(message.get("content"))
            role_out = "user"
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role_out:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role_out, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            # Anthropic wants the tool_result blocks before any text of the same message.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return ("\n\n".join(system) if system else None), turns


def translate_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI ``tools`` -> Anthropic ``tools``."""
    out = []
    for tool in tools:
        function = tool.get("function", tool)
        entry: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def translate_tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    """OpenAI ``tool_choice`` -> Anthropic ``tool_choice``."""
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        return {"type": "tool", "name": name}
    return {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}.get(
        choice, {"type": "auto"}
    )


def build_body(request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of a Messages call."""
    system, messages = translate_messages(request.messages)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if stream:
        body["stream"] = True
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.tools:
        body["tools"] = translate_tools(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = translate_tool_choice(request.tool_choice)
    return body


class _UsageCounter:
    """Anthropic's counts, split over ``message_start`` and ``message_delta``."""

    __slots__ = ("cache_creation", "cache_read", "input", "output")

    def __init__(self) -> None:
        self.input = self.cache_read = self.cache_creation = self.output = 0

    def update(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        # message_delta's counts are cumulative; a missing or null one keeps what we had.
        for key, attr in (
            ("input_tokens", "input"),
            ("output_tokens", "output"),
            ("cache_read_input_tokens", "cache_read"),
            ("cache_creation_input_tokens", "cache_creation"),
        ):
            value = usage.get(key)
            if isinstance(value, int):
                setattr(self, attr, value)

    def usage(self) -> Usage:
        return usage_of(
            self.input + self.cache_read + self.cache_creation, self.output, self.cache_read
        )


def _stop_reason(raw: str | None, *, provider: str, model: str) -> str:
    if raw == "refusal":
        raise ContentFiltered(
            "the model refused (stop_reason refusal)", provider=provider, model=model
        )
    return _STOP.get(raw or "end_turn", "stop")


async def parse_stream(
    events: AsyncIterator[SSEEvent],
    *,
    provider: str = "",
    model: str = "",
    api_key: str | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """Anthropic stream events -> deltas, then one ``Finish`` at ``message_stop``."""
    counter = _UsageCounter()
    tools: dict[int, int] = {}  # content block index -> our tool-call index
    tools_with_input: set[int] = set()
    stop_reason: str | None = None
    async for sse in events:
        if sse.event == "ping":
            continue
        payload = loads_or_stream_error(sse.data, provider=provider, model=model)
        if not isinstance(payload, dict):
            continue
        kind = payload.get("type") or sse.event
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                if delta.get("text"):
                    yield TextDelta(delta["text"])
            elif dtype == "input_json_delta":
                index = tools.get(payload.get("index", -1))
                if index is not None and delta.get("partial_json"):
                    tools_with_input.add(index)
                    yield ToolCallDelta(index=index, arguments=delta["partial_json"])
            # thinking_delta and signature_delta are not part of the answer.
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(tools)
                tools[payload.get("index", index)] = index
                yield ToolCallDelta(index=index, id=block.get("id"), name=block.get("name"))
                if block.get("input"):
                    tools_with_input.add(index)
                    yield ToolCallDelta(
                        index=index, arguments=orjson.dumps(block["input"]).decode()
                    )
            elif block.get("type") == "text" and block.get("text"):
                yield TextDelta(block["text"])
        elif kind == "content_block_stop":
            index = tools.get(payload.get("index", -1))
            if index is not None and index not in tools_with_input:
                tools_with_input.add(index)
                yield ToolCallDelta(index=index, arguments="{}")
        elif kind == "message_start":
            counter.update((payload.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            stop_reason = (payload.get("delta") or {}).get("stop_reason") or stop_reason
            counter.update(payload.get("usage"))
        elif kind == "message_stop":
            yield Finish(_stop_reason(stop_reason, provider=provider, model=model), counter.usage())
            return
        elif kind == "error":
            raise error_from_stream_payload(
                payload.get("error") or {}, provider=provider, model=model, api_key=api_key
            )
    if stop_reason == "refusal":
        _stop_reason(stop_reason, provider=provider, model=model)
    raise ProviderStreamError("stream ended without message_stop", provider=provider, model=model)


def parse_response(payload: Any, *, provider: str = "", model: str = "") -> Completion:
    """A non-streamed Messages answer in the common form (``tool_use`` -> ``ToolCall``)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("content"), list):
        raise ProviderStreamError("answer has no content", provider=provider, model=model)
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in payload["content"]:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(
                    id=block.get("id", ""),
                    name=block.get("name", ""),
                    arguments=orjson.dumps(block.get("input") or {}).decode(),
                )
            )
    counter = _UsageCounter()
    counter.update(payload.get("usage"))
    return Completion(
        text="".join(text),
        tool_calls=calls,
        finish_reason=_stop_reason(payload.get("stop_reason"), provider=provider, model=model),
        usage=counter.usage(),
    )


class AnthropicClient(HttpAdapter):
    """Anthropic Messages: ``x-api-key`` and ``anthropic-version`` headers."""

    family = "anthropic"

    def build(self, request: ChatRequest, *, stream: bool) -> Built:
        own = {"anthropic-version": API_VERSION}
        if self._api_key:
            own["x-api-key"] = self._api_key
        path = "/messages" if self.base_url.endswith("/v1") else "/v1/messages"
        return (
            f"{self.base_url}{path}",
            self._headers(request, own, stream=stream),
            build_body(request, stream=stream),
        )

    def parse_stream(
        self, events: AsyncIterator[SSEEvent], model: str
    ) -> AsyncGenerator[StreamEvent, None]:
        return parse_stream(events, provider=self.name, model=model, api_key=self._api_key)

    def parse_response(self, payload: Any, model: str) -> Completion:
        return parse_response(payload, provider=self.name, model=model)
