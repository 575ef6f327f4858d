"""Google Gemini API (``generativelanguage``), v1beta.

``POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`` (streamed) or
``:generateContent``, with the key in ``x-goog-api-key`` (never in the URL).

Request translation from our OpenAI form: ``system`` messages -> ``systemInstruction``;
user / assistant -> ``contents`` with roles ``user`` / ``model``; an assistant's
``tool_calls`` -> ``functionCall`` parts; a ``tool`` message -> a ``functionResponse``
part (its ``name`` from the call it answers; ``response`` is the JSON object the tool
returned, else ``{"result": text}``); consecutive messages of one role are merged.
``tools`` -> one ``functionDeclarations`` list (JSON-Schema keys Gemini rejects are
dropped); ``tool_choice`` -> ``toolConfig.functionCallingConfig`` mode AUTO / ANY / NONE,
plus ``allowedFunctionNames`` for a named tool.

Stream: each ``data:`` is a whole ``GenerateContentResponse``: ``candidates[0].content.parts``
(``text``; ``functionCall`` with ``name`` and the whole ``args``, emitted as one
``ToolCallDelta`` with a generated id; ``thought`` parts skipped), ``finishReason`` on
the last chunk (the end marker: a body that ends without one is a ``ProviderStreamError``)
and ``usageMetadata``. ``SAFETY``, ``RECITATION``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``,
``SPII`` and ``IMAGE_SAFETY``, or ``promptFeedback.blockReason``, raise ``ContentFiltered``.
Usage: ``promptTokenCount`` (+ ``toolUsePromptTokenCount``) in, ``candidatesTokenCount``
+ ``thoughtsTokenCount`` out (Gemini counts thoughts apart; we count them as output, and
as reasoning), ``cachedContentTokenCount`` cached.
"""

from __future__ import annotations

import uuid
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
    "GeminiClient",
    "build_body",
    "parse_response",
    "parse_stream",
    "parse_usage",
    "translate_messages",
    "translate_tool_choice",
    "translate_tools",
]

BLOCKED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
# JSON-Schema keywords Gemini's OpenAPI-subset Schema refuses ("Unknown name ...").
_UNSUPPORTED_SCHEMA_KEYS = frozenset({"$schema", "$id", "additionalProperties", "strict"})


def new_call_id() -> str:
    """An OpenAI-looking id for a call Gemini gave none."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            if url.startswith("data:") and ";base64," in url:
                mime, _, data = url[5:].partition(";base64,")
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            else:
                parts.append({"fileData": {"fileUri": url}})
    return parts


def _text_of(content: Any) -> str:
    return "".join(p.get("text", "") for p in _parts(content))


def _args(arguments: Any, name: str) -> Any:
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


def _tool_response(content: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else _text_of(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"result": text}


def translate_messages(
    messages: list[dict[str, Any]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """OpenAI messages -> (Gemini ``systemInstruction``, Gemini ``contents``)."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "assistant":
            parts = _parts(message.get("content"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                name = function.get("name", "")
                names[call.get("id", "")] = name
                parts.append(
                    {"functionCall": {"name": name, "args": _args(function.get("arguments"), name)}}
                )
            role_out = "model"
        elif role == "tool":
            name = names.get(message.get("tool_call_id", "")) or message.get("name") or ""
            parts = [
                {
                    "functionResponse": {
                        "name": name,
                        "response": _tool_response(message.get("content")),
                    }
                }
            ]
            role_out = "user"
        else:
            parts = _parts(message.get("content"))
            role_out = "user"
        if not parts:
            continue
        if contents and contents[-1]["role"] == role_out:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role_out, "parts": parts})
    instruction = {"parts": [{"text": "\n\n".join(system)}]} if system else None
    return instruction, contents


def _clean_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _clean_schema(v) for k, v in schema.items() if k not in _UNSUPPORTED_SCHEMA_KEYS}
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema


def translate_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI ``tools`` -> Gemini ``tools`` (one ``functionDeclarations`` list)."""
    declarations = []
    for tool in tools:
        function = tool.get("function", tool)
        entry: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        parameters = function.get("parameters")
        # Gemini refuses an OBJECT schema without properties: a tool without arguments
        # simply has no parameters.
        if isinstance(parameters, dict) and parameters.get("properties"):
            entry["parameters"] = _clean_schema(parameters)
        declarations.append(entry)
    return [{"functionDeclarations": declarations}]


def translate_tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    """OpenAI ``tool_choice`` -> Gemini ``toolConfig``."""
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        config: dict[str, Any] = {"mode": "ANY", "allowedFunctionNames": [name]}
    else:
        config = {"mode": {"required": "ANY", "none": "NONE"}.get(choice, "AUTO")}
    return {"functionCallingConfig": config}


def build_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body of a generateContent / streamGenerateContent call."""
    instruction, contents = translate_messages(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if instruction:
        body["systemInstruction"] = instruction
    generation: dict[str, Any] = {}
    if request.max_tokens is not None:
        generation["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    if request.stop:
        generation["stopSequences"] = request.stop
    if generation:
        body["generationConfig"] = generation
    if request.tools:
        body["tools"] = translate_tools(request.tools)
        if request.tool_choice is not None:
            body["toolConfig"] = translate_tool_choice(request.tool_choice)
    return body


def parse_usage(meta: Any) -> Usage:
    """Our :class:`Usage` from Gemini ``usageMetadata``."""
    if not isinstance(meta, dict):
        return Usage()

    def n(key: str) -> int:
        value = meta.get(key)
        return value if isinstance(value, int) else 0

    thoughts = n("thoughtsTokenCount")
    return usage_of(
        n("promptTokenCount") + n("toolUsePromptTokenCount"),
        n("candidatesTokenCount") + thoughts,
        n("cachedContentTokenCount"),
        thoughts,
    )


class _Reader:
    """Turns successive ``GenerateContentResponse`` objects into events."""

    __slots__ = ("api_key", "finish", "model", "provider", "tools", "usage")

    def __init__(self, provider: str, model: str, api_key: str | None) -> None:
        self.provider = provider
        self.model = model
        self.api_key = api_key
        self.finish: str | None = None
        self.tools = 0
        self.usage = Usage()

    def feed(self, chunk: Any) -> list[StreamEvent]:
        if isinstance(chunk, list):  # a JSON array body (no alt=sse)
            return [event for item in chunk for event in self.feed(item)]
        if not isinstance(chunk, dict):
            return []
        where = {"provider": self.provider, "model": self.model}
        if isinstance(chunk.get("error"), dict):
            raise error_from_stream_payload(chunk["error"], api_key=self.api_key, **where)
        if chunk.get("usageMetadata"):
            self.usage = parse_usage(chunk["usageMetadata"])
        feedback = chunk.get("promptFeedback") or {}
        if feedback.get("blockReason"):
            raise ContentFiltered(f"prompt blocked ({feedback['blockReason']})", **where)
        out: list[StreamEvent] = []
        for candidate in chunk.get("candidates") or ():
            if candidate.get("index", 0) != 0:
                continue
            for part in (candidate.get("content") or {}).get("parts") or ():
                if part.get("thought"):
                    continue
                if part.get("text"):
                    out.append(TextDelta(part["text"]))
                call = part.get("functionCall")
                if isinstance(call, dict):
                    out.append(
                        ToolCallDelta(
                            index=self.tools,
                            id=call.get("id") or new_call_id(),
                            name=call.get("name", ""),
                            arguments=orjson.dumps(call.get("args") or {}).decode(),
                        )
                    )
                    self.tools += 1
            reason = candidate.get("finishReason")
            if reason and reason != "FINISH_REASON_UNSPECIFIED":
                self.finish = reason
        return out

    def end(self) -> Finish:
        where = {"provider": self.provider, "model": self.model}
        reason = self.finish
        if reason is None:
            raise ProviderStreamError("stream ended without a finishReason", **where)
        if reason in BLOCKED:
            raise ContentFiltered(f"answer blocked (finishReason {reason})", **where)
        if reason == "MALFORMED_FUNCTION_CALL":
            raise ProviderStreamError("the model produced a malformed function call", **where)
        if reason == "MAX_TOKENS":
            return Finish("length", self.usage)
        return Finish("tool_calls" if self.tools else "stop", self.usage)


async def parse_stream(
    events: AsyncIterator[SSEEvent],
    *,
    provider: str = "",
    model: str = "",
    api_key: str | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """Gemini SSE chunks -> deltas, then one ``Finish`` once the body ends after a finishReason."""
    reader = _Reader(provider, model, api_key)
    async for sse in events:
        for event in reader.feed(loads_or_stream_error(sse.data, provider=provider, model=model)):
            yield event
    yield reader.end()


def parse_response(
    payload: Any, *, provider: str = "", model: str = "", api_key: str | None = None
) -> Completion:
    """A non-streamed ``GenerateContentResponse`` in the common form."""
    reader = _Reader(provider, model, api_key)
    text: list[str] = []
    calls: list[ToolCall] = []
    for event in reader.feed(payload):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            calls.append(
                ToolCall(id=event.id or "", name=event.name or "", arguments=event.arguments)
            )
    finish = reader.end()
    return Completion(
        text="".join(text), tool_calls=calls, finish_reason=finish.reason, usage=finish.usage
    )


class GeminiClient(HttpAdapter):
    """Gemini ``generateContent``: the key in ``x-goog-api-key``."""

    family = "gemini"

    def _model_url(self, model: str) -> str:
        prefix = self.base_url
        if not prefix.endswith(("/v1beta", "/v1")):
            prefix += "/v1beta"
        return f"{prefix}/models/{model.removeprefix('models/')}"

    def build(self, request: ChatRequest, *, stream: bool) -> Built:
        own = {"x-goog-api-key": self._api_key} if self._api_key else {}
        method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        return (
            f"{self._model_url(request.model)}{method}",
            self._headers(request, own, stream=stream),
            build_body(request),
        )

    def parse_stream(
        self, events: AsyncIterator[SSEEvent], model: str
    ) -> AsyncGenerator[StreamEvent, None]:
        return parse_stream(events, provider=self.name, model=model, api_key=self._api_key)

    def parse_response(self, payload: Any, model: str) -> Completion:
        return parse_response(payload, provider=self.name, model=model, api_key=self._api_key)
