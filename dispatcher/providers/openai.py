"""OpenAI chat completions and its compatibles (Groq, Together, vLLM, Ollama).

``POST {base_url}/chat/completions`` with ``base_url`` ending in ``/v1`` (or
``/openai/v1``). The request is our own form, nearly as is; streaming always asks for
``stream_options.include_usage`` so the last chunk (``choices: []``) carries ``usage``.

Stream: ``data: {chunk}`` lines, then ``data: [DONE]``, the end marker. Each chunk's
``choices[0].delta`` holds ``content`` and ``tool_calls`` pieces (``index``; ``id`` and
``function.name`` on the first piece; ``function.arguments`` fragments), and
``finish_reason`` arrives on the last content chunk. ``usage``: ``prompt_tokens``,
``completion_tokens``, ``prompt_tokens_details.cached_tokens``,
``completion_tokens_details.reasoning_tokens``. A ``data: {"error": ...}`` chunk is an
error event. ``finish_reason: content_filter`` raises ``ContentFiltered``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from dispatcher.domain import Usage
from dispatcher.errors import ContentFiltered, ProviderStreamError
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

__all__ = ["OpenAIClient", "build_body", "parse_response", "parse_stream", "parse_usage"]

_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


def build_body(
    request: ChatRequest, *, stream: bool, max_tokens_field: str = "max_tokens"
) -> dict[str, Any]:
    """The JSON body of a chat completions call."""
    body: dict[str, Any] = {"model": request.model, "messages": request.messages}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        body[max_tokens_field] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop"] = request.stop
    if request.tools:
        body["tools"] = request.tools
    if request.tool_choice is not None and (request.tools or request.tool_choice == "none"):
        body["tool_choice"] = request.tool_choice
    return body


def parse_usage(usage: Any) -> Usage:
    """Our :class:`Usage` from an OpenAI ``usage`` object (None gives zeros)."""
    if not isinstance(usage, dict):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return usage_of(
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0,
        completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else 0,
    )


def _finish_reason(raw: str | None, *, provider: str, model: str) -> str:
    if raw == "content_filter":
        raise ContentFiltered(
            "the provider's content filter stopped the answer", provider=provider, model=model
        )
    return _FINISH.get(raw or "stop", "stop")


async def parse_stream(
    events: AsyncIterator[SSEEvent],
    *,
    provider: str = "",
    model: str = "",
    api_key: str | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """OpenAI chunks -> text and tool-call deltas, then one ``Finish`` at ``[DONE]``."""
    reason: str | None = None
    usage = Usage()
    async for sse in events:
        data = sse.data
        if data == "[DONE]":
            yield Finish(_finish_reason(reason, provider=provider, model=model), usage)
            return
        chunk = loads_or_stream_error(data, provider=provider, model=model)
        if not isinstance(chunk, dict):
            continue
        error = chunk.get("error")
        if error or chunk.get("object") == "error":  # vLLM: the error fields at top level
            err = error if isinstance(error, dict) else chunk if not error else {"message": error}
            raise error_from_stream_payload(err, provider=provider, model=model, api_key=api_key)
        if chunk.get("usage"):
            usage = parse_usage(chunk["usage"])
        elif isinstance(chunk.get("x_groq"), dict) and chunk["x_groq"].get("usage"):
            usage = parse_usage(chunk["x_groq"]["usage"])  # Groq before include_usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                yield TextDelta(content)
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                yield ToolCallDelta(
                    index=call.get("index", 0),
                    id=call.get("id") or None,
                    name=function.get("name") or None,
                    arguments=function.get("arguments") or "",
                )
            if choice.get("finish_reason"):
                reason = choice["finish_reason"]
    if reason == "content_filter":
        _finish_reason(reason, provider=provider, model=model)
    raise ProviderStreamError("stream ended without data: [DONE]", provider=provider, model=model)


def parse_response(payload: Any, *, provider: str = "", model: str = "") -> Completion:
    """A non-streamed chat completion in the common form."""
    if not isinstance(payload, dict) or not payload.get("choices"):
        raise ProviderStreamError("answer has no choices", provider=provider, model=model)
    choice = payload["choices"][0]
    message = choice.get("message") or {}
    content = message.get("content")
    if isinstance(content, list):  # some compatibles answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = [
        ToolCall(
            id=call.get("id", ""),
            name=(call.get("function") or {}).get("name", ""),
            arguments=(call.get("function") or {}).get("arguments") or "{}",
        )
        for call in message.get("tool_calls") or ()
    ]
    return Completion(
        text=content or "",
        tool_calls=calls,
        finish_reason=_finish_reason(choice.get("finish_reason"), provider=provider, model=model),
        usage=parse_usage(payload.get("usage")),
    )


class OpenAIClient(HttpAdapter):
    """OpenAI-compatible chat completions: ``Authorization: Bearer <key>`` when a key is set."""

    family = "openai"

    def build(self, request: ChatRequest, *, stream: bool) -> Built:
        # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens);
        # the compatible servers all read max_tokens.
        field = "max_completion_tokens" if "api.openai.com" in self.base_url else "max_tokens"
        own = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return (
            f"{self.base_url}/chat/completions",
            self._headers(request, own, stream=stream),
            build_body(request, stream=stream, max_tokens_field=field),
        )

    def parse_stream(
        self, events: AsyncIterator[SSEEvent], model: str
    ) -> AsyncGenerator[StreamEvent, None]:
        return parse_stream(events, provider=self.name, model=model, api_key=self._api_key)

    def parse_response(self, payload: Any, model: str) -> Completion:
        return parse_response(payload, provider=self.name, model=model)
