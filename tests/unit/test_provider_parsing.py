"""Provider adapters without a network: recorded payloads, error tables, translation.

The payloads in ``payloads/`` are written by hand in the shapes the providers document
(OpenAI chat completion chunks, Anthropic Messages stream events, Gemini
``GenerateContentResponse`` frames). They are fed to the parsers in chunks of several
sizes, down to one byte, so the SSE decoder's buffering is exercised too. The adapters'
HTTP side (URL, headers, timeouts, closing) runs over ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.domain import Usage
from dispatcher.errors import (
    ContentFiltered,
    ContextTooLong,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderStreamError,
    ProviderTimeout,
    ProviderUnavailable,
)
from dispatcher.policy.models import Provider, Timeouts
from dispatcher.providers import (
    SIM_KEY,
    AnthropicClient,
    ChatRequest,
    Finish,
    GeminiClient,
    HttpAdapter,
    OpenAIClient,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    anthropic,
    collect,
    gemini,
    make_client,
    new_http_client,
    openai,
)
from dispatcher.providers.errors import (
    error_from_response,
    error_from_stream_payload,
    error_from_transport,
    excerpt,
    parse_go_duration,
    retry_after_from,
)
from dispatcher.providers.sse import SSEDecoder, SSEEvent, aiter_sse, iter_sse

PAYLOADS = Path(__file__).parent / "payloads"
KEY = "sk-proj-secretsecretsecret0123"

Parser = Callable[..., AsyncGenerator[StreamEvent, None]]
PARSERS: dict[str, Parser] = {
    "openai": openai.parse_stream,
    "anthropic": anthropic.parse_stream,
    "gemini": gemini.parse_stream,
}


def _chunks(data: bytes, size: int | None) -> list[bytes]:
    if size is None:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


async def _agen(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def _parse(name: str, size: int | None = None) -> list[StreamEvent]:
    family = name.split("_", 1)[0]
    data = (PAYLOADS / name).read_bytes()
    events = aiter_sse(_agen(_chunks(data, size)))
    return [e async for e in PARSERS[family](events, provider="p", model="m", api_key=KEY)]


def _text(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def _payload(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text())


async def _collect_list(events: list[StreamEvent]) -> Any:
    return await collect(_events(events))


async def _events(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


# --- SSE decoder ------------------------------------------------------------------------


def test_sse_fields_comments_and_multiline_data() -> None:
    body = (
        b": keep-alive comment\n"
        b"event: update\nid: 7\nretry: 1500\ndata: line one\ndata:line two\n\n"
        b"data\n\n"  # a field name alone: empty data, still an event
        b"event: nodata\n\n"  # no data: not dispatched
        b"data: last\n\n"
    )
    events = iter_sse([body])
    assert events == [
        SSEEvent(data="line one\nline two", event="update", id="7", retry=1500),
        SSEEvent(data="", event="message", id="7"),
        SSEEvent(data="last", event="message", id="7"),
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_any_line_ending_split_anywhere(newline: bytes) -> None:
    body = newline.join([b"event: a", b"data: h\xc3\xa9llo", b"", b"data: x", b"", b""])
    whole = iter_sse([body])
    assert [e.data for e in whole] == ["héllo", "x"]
    for size in (1, 2, 3, 5):
        assert iter_sse(_chunks(body, size)) == whole


def test_sse_unclosed_last_event_is_kept_partial_line_dropped() -> None:
    assert [e.data for e in iter_sse([b"data: [DONE]\n"])] == ["[DONE]"]
    assert iter_sse([b'data: {"half']) == []
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [SSEEvent("a")]
    assert decoder.flush() == []


# --- OpenAI -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 1, 7, 64])
async def test_openai_text_stream(size: int | None) -> None:
    events = await _parse("openai_stream_text.sse", size)
    assert _text(events) == "We open at 9 — every day."
    assert events[-1] == Finish("stop", Usage(1200, 40, 1024, 32))
    assert sum(isinstance(e, Finish) for e in events) == 1
    assert all(not isinstance(e, TextDelta) or e.text for e in events)  # no empty deltas


async def test_openai_tool_call_stream() -> None:
    events = await _parse("openai_stream_tools.sse", 13)
    completion = await _collect_list(events)
    assert completion.tool_calls == [
        ToolCall("call_abc123", "get_weather", '{"location": "Paris"}'),
        ToolCall("call_def456", "get_time", '{"tz": "CET"}'),
    ]
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(82, 35, 0, 0)
    assert events[0] == ToolCallDelta(index=0, id="call_abc123", name="get_weather")


async def test_openai_refusal_cut_and_error_event() -> None:
    with pytest.raises(ContentFiltered):
        await _parse("openai_stream_content_filter.sse")
    with pytest.raises(ProviderStreamError, match=r"\[DONE\]"):
        await _parse("openai_stream_cut.sse")
    with pytest.raises(ProviderStreamError, match="server_error"):
        await _parse("openai_stream_error.sse")


async def test_openai_malformed_chunk_is_a_stream_error() -> None:
    events = aiter_sse(_agen([b"data: {not json\n\n"]))
    with pytest.raises(ProviderStreamError, match="malformed"):
        [e async for e in openai.parse_stream(events)]


def test_openai_response() -> None:
    completion = openai.parse_response(_payload("openai_response.json"))
    assert completion.text == ""
    assert completion.tool_calls == [
        ToolCall("call_abc123", "get_weather", '{"location": "Paris"}')
    ]
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(2006, 300, 1920, 128)


def test_openai_body_always_asks_for_usage_when_streaming() -> None:
    request = ChatRequest(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=50,
        temperature=0.2,
        stop=["\n"],
    )
    body = openai.build_body(request, stream=True)
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.2,
        "stop": ["\n"],
    }
    assert "stream" not in openai.build_body(request, stream=False)


# --- Anthropic --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 1, 9])
async def test_anthropic_text_stream_with_cache_usage(size: int | None) -> None:
    events = await _parse("anthropic_stream_text.sse", size)
    assert _text(events) == "Hello! How can I help?"
    # input = 25 uncached + 2000 cache reads + 100 cache writes; 2000 of them cached
    assert events[-1] == Finish("stop", Usage(2125, 15, 2000, 0))


async def test_anthropic_tool_use_stream_maps_to_openai_form() -> None:
    events = await _parse("anthropic_stream_tools.sse", 11)
    completion = await _collect_list(events)
    assert completion.text == "Let me check."
    assert completion.tool_calls == [
        ToolCall("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", '{"location": "Paris"}'),
        ToolCall("toolu_02", "get_time", "{}"),  # no input deltas: "{}" as OpenAI gives
    ]
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(472, 89, 0, 0)
    # tool indexes count tool calls only, not Anthropic's content blocks
    assert {e.index for e in events if isinstance(e, ToolCallDelta)} == {0, 1}


async def test_anthropic_error_events_after_200() -> None:
    # Overloaded mid-stream is treated exactly as an HTTP 529 would be.
    with pytest.raises(ProviderServerError) as overloaded:
        await _parse("anthropic_stream_overloaded.sse")
    assert overloaded.value.status == 529
    with pytest.raises(ProviderStreamError, match="api_error"):
        await _parse("anthropic_stream_api_error.sse")


async def test_anthropic_refusal_and_cut() -> None:
    with pytest.raises(ContentFiltered, match="refus"):
        await _parse("anthropic_stream_refusal.sse")
    with pytest.raises(ProviderStreamError, match="message_stop"):
        await _parse("anthropic_stream_cut.sse")


def test_anthropic_response() -> None:
    completion = anthropic.parse_response(_payload("anthropic_response.json"))
    assert completion.text == "I'll check the weather."
    [call] = completion.tool_calls
    assert (call.id, call.name) == ("toolu_01A09q90qw90lq917835lq9", "get_weather")
    assert json.loads(call.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(1550, 70, 1500, 0)


CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a concise voice agent."},
    {"role": "user", "content": "Weather and time in Paris?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
    {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
    {"role": "user", "content": "And tomorrow?"},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather at a place",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


def test_anthropic_translates_messages_and_tools() -> None:
    request = ChatRequest(
        model="claude-sonnet-4-5", messages=CONVERSATION, tools=TOOLS, tool_choice="required"
    )
    body = anthropic.build_body(request, stream=True)
    assert body["system"] == "You are a concise voice agent."
    assert body["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",  # both results and the two user turns merged into one message
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp_c": 21}'},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "14:05"},
                {"type": "text", "text": "Thanks."},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    assert body["tools"][0] == {
        "name": "get_weather",
        "description": "Weather at a place",
        "input_schema": TOOLS[0]["function"]["parameters"],
    }
    assert body["tools"][1] == {"name": "get_time", "input_schema": {"type": "object"}}
    assert body["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    ("choice", "anthropic_form", "gemini_form"),
    [
        ("auto", {"type": "auto"}, {"mode": "AUTO"}),
        ("required", {"type": "any"}, {"mode": "ANY"}),
        ("none", {"type": "none"}, {"mode": "NONE"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
    ],
)
def test_tool_choice(choice: Any, anthropic_form: Any, gemini_form: Any) -> None:
    assert anthropic.translate_tool_choice(choice) == anthropic_form
    assert gemini.translate_tool_choice(choice) == {"functionCallingConfig": gemini_form}


def test_bad_tool_arguments_are_a_bad_request() -> None:
    messages = [
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
        }
    ]
    with pytest.raises(ProviderBadRequest):
        anthropic.translate_messages(messages)
    with pytest.raises(ProviderBadRequest):
        gemini.translate_messages(messages)


# --- Gemini -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 1, 17])
async def test_gemini_text_stream_with_thoughts_and_cache(size: int | None) -> None:
    events = await _parse("gemini_stream_text.sse", size)
    assert _text(events) == "The capital of France is Paris. ☕"  # the thought part is left out
    # output = 12 candidates + 100 thoughts; 100 reasoning; 4096 of 5000 input cached
    assert events[-1] == Finish("stop", Usage(5000, 112, 4096, 100))


async def test_gemini_function_calls_get_ids_and_whole_arguments() -> None:
    events = await _parse("gemini_stream_tools.sse")
    completion = await _collect_list(events)
    assert [(c.name, json.loads(c.arguments)) for c in completion.tool_calls] == [
        ("get_weather", {"location": "Paris", "unit": "celsius"}),
        ("get_time", {}),
    ]
    ids = [c.id for c in completion.tool_calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(80, 20, 0, 0)


async def test_gemini_refusals_limits_cuts_and_errors() -> None:
    with pytest.raises(ContentFiltered, match="SAFETY"):
        await _parse("gemini_stream_safety.sse")
    with pytest.raises(ContentFiltered, match="PROHIBITED_CONTENT"):
        await _parse("gemini_stream_blocked_prompt.sse")
    with pytest.raises(ProviderStreamError, match="finishReason"):
        await _parse("gemini_stream_cut.sse")
    with pytest.raises(ProviderServerError):
        await _parse("gemini_stream_error.sse")
    events = await _parse("gemini_stream_max_tokens.sse", 5)
    assert _text(events) == "One two three"
    assert events[-1] == Finish("length", Usage(4, 3, 0, 0))


def test_gemini_response() -> None:
    completion = gemini.parse_response(_payload("gemini_response.json"))
    assert completion.text == "Sure, checking."
    [call] = completion.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"location": "Boston"}
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(300, 75, 200, 50)


def test_gemini_translates_messages_and_tools() -> None:
    request = ChatRequest(
        model="gemini-2.5-flash",
        messages=CONVERSATION,
        tools=TOOLS,
        tool_choice="auto",
        max_tokens=64,
        temperature=0.5,
        stop=["END"],
    )
    body = gemini.build_body(request)
    assert body["systemInstruction"] == {"parts": [{"text": "You are a concise voice agent."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "14:05"}}},
                {"text": "Thanks."},
                {"text": "And tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather at a place",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string"}},
                        "required": ["location"],
                    },
                },
                {"name": "get_time"},
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    assert body["generationConfig"] == {
        "maxOutputTokens": 64,
        "temperature": 0.5,
        "stopSequences": ["END"],
    }


# --- HTTP errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "payload", "headers", "expected"),
    [
        (400, "openai_error_context.json", {}, ContextTooLong),
        (400, "anthropic_error_context.json", {}, ContextTooLong),
        (400, "gemini_error_context.json", {}, ContextTooLong),
        (400, "openai_error_400.json", {}, ProviderBadRequest),
        (400, "gemini_error_400.json", {}, ProviderBadRequest),
        (404, "anthropic_error_404.json", {}, ProviderBadRequest),
        (422, None, {}, ProviderBadRequest),
        (401, "openai_error_401.json", {}, ProviderAuthError),
        (401, "anthropic_error_auth.json", {}, ProviderAuthError),
        (403, None, {}, ProviderAuthError),
        (400, "gemini_error_key.json", {}, ProviderAuthError),
        (429, "openai_error_429.json", {"x-ratelimit-reset-tokens": "1.5s"}, ProviderRateLimited),
        (429, "anthropic_error_429.json", {"retry-after": "12"}, ProviderRateLimited),
        (429, "gemini_error_429.json", {}, ProviderRateLimited),
        (500, None, {}, ProviderServerError),
        (502, None, {}, ProviderServerError),
        (503, "gemini_error_503.json", {}, ProviderServerError),
        (504, None, {}, ProviderServerError),
        (529, "anthropic_error_overloaded.json", {}, ProviderServerError),
        (408, None, {}, ProviderTimeout),
    ],
)
def test_error_from_response(
    status: int, payload: str | None, headers: dict[str, str], expected: type[ProviderError]
) -> None:
    body = (PAYLOADS / payload).read_bytes() if payload else b"<html>oops</html>"
    error = error_from_response(
        status, body, httpx.Headers(headers), provider="acme", model="m-1", api_key=KEY
    )
    assert type(error) is expected
    assert str(error).startswith("acme/m-1: ")
    assert KEY not in str(error)
    if isinstance(error, ProviderBadRequest):
        assert error.status == status and error.excerpt and KEY not in error.excerpt
    if isinstance(error, ProviderServerError):
        assert error.status == status


def test_retry_after_read_from_each_provider_dialect() -> None:
    def hint(name: str, headers: dict[str, str]) -> float | None:
        error = error_from_response(429, (PAYLOADS / name).read_bytes(), httpx.Headers(headers))
        assert isinstance(error, ProviderRateLimited)
        return error.retry_after

    assert hint("anthropic_error_429.json", {"retry-after": "12"}) == 12.0
    assert hint("gemini_error_429.json", {}) == 37.0
    assert hint("openai_error_429.json", {"x-ratelimit-reset-tokens": "1.5s"}) == 1.5
    assert hint("openai_error_429.json", {}) is None


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": format_datetime(NOW + timedelta(seconds=30), usegmt=True)}, 30.0),
        ({"retry-after": format_datetime(NOW - timedelta(seconds=30), usegmt=True)}, 0.0),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        # the exhausted budget decides; with none marked exhausted, the sooner reset
        (
            {
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-tokens": "1s",
                "x-ratelimit-remaining-tokens": "5000",
            },
            360.0,
        ),
        ({"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "1s"}, 1.0),
        ({}, None),
    ],
)
def test_retry_after_variants(headers: dict[str, str], expected: float | None) -> None:
    got = retry_after_from(httpx.Headers(headers), now=NOW.timestamp())
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("850us", 0.00085),
        ("2", 2.0),
        ("", None),
        ("abc", None),
        ("5x", None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    assert parse_go_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_excerpts_are_short_one_line_and_key_free() -> None:
    body = json.dumps({"error": {"message": f"bad key {KEY}\n" + "x" * 1000}})
    text = excerpt(body, KEY)
    assert KEY not in text and "\n" not in text and len(text) <= 300
    assert "AIza" not in excerpt("key AIzaSyA-1234567890abcdefghijklmnop rejected", None)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, ProviderServerError),
        ({"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}, ProviderServerError),
        ({"type": "rate_limit_error", "message": "slow down"}, ProviderRateLimited),
        ({"code": 429, "status": "RESOURCE_EXHAUSTED"}, ProviderRateLimited),
        ({"type": "invalid_request_error", "message": "prompt is too long"}, ContextTooLong),
        ({"type": "api_error", "message": "Internal server error"}, ProviderStreamError),
        ({}, ProviderStreamError),
    ],
)
def test_error_events_inside_streams(err: dict[str, Any], expected: type[Exception]) -> None:
    assert type(error_from_stream_payload(err)) is expected


def test_transport_errors() -> None:
    request = httpx.Request("POST", "http://x")

    def mapped(exc: httpx.HTTPError, mid: bool) -> ProviderError:
        return error_from_transport(exc, mid_stream=mid, api_key=KEY)

    timeout = mapped(httpx.ConnectTimeout("t", request=request), False)
    assert isinstance(timeout, ProviderTimeout) and timeout.phase == "connect"
    assert type(mapped(httpx.ConnectError("refused", request=request), False)) is (
        ProviderUnavailable
    )
    assert type(mapped(httpx.RemoteProtocolError("eof", request=request), False)) is (
        ProviderUnavailable
    )
    assert type(mapped(httpx.RemoteProtocolError("eof", request=request), True)) is (
        ProviderStreamError
    )
    assert type(mapped(httpx.ReadError("reset", request=request), True)) is ProviderStreamError
    assert KEY not in str(mapped(httpx.ConnectError(f"no {KEY}", request=request), False))


# --- adapters over a mock transport -------------------------------------------------------


class Feed(httpx.AsyncByteStream):
    """A response body: bytes, pauses (floats, seconds) and exceptions, in order."""

    def __init__(self, *parts: bytes | float | Exception) -> None:
        self.parts = parts
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, float):
                await asyncio.sleep(part)
            elif isinstance(part, Exception):
                raise part
            else:
                yield part

    async def aclose(self) -> None:
        self.closed = True


SSE = {"content-type": "text/event-stream"}
FAMILY_CLIENTS = {"openai": OpenAIClient, "anthropic": AnthropicClient, "gemini": GeminiClient}
BASES = {"openai": "http://p.test/v1", "anthropic": "http://p.test", "gemini": "http://p.test"}


def _client(
    family: str,
    handler: Callable[[httpx.Request], Any],
    *,
    first_token_s: float = 2.0,
    total_s: float = 5.0,
    key: str | None = KEY,
) -> HttpAdapter:
    config = Provider(
        family=family,  # type: ignore[arg-type]
        base_url=BASES[family],
        timeouts=Timeouts(connect_s=1.0, first_token_s=first_token_s, total_s=total_s),
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return FAMILY_CLIENTS[family]("acme", config, http, key)


def _recorded(family: str) -> bytes:
    return (PAYLOADS / f"{family}_stream_text.sse").read_bytes()


REQUEST = ChatRequest(model="m-1", messages=[{"role": "user", "content": "hi"}], max_tokens=20)


@pytest.mark.parametrize(
    ("family", "url", "auth"),
    [
        ("openai", "http://p.test/v1/chat/completions", ("authorization", f"Bearer {KEY}")),
        ("anthropic", "http://p.test/v1/messages", ("x-api-key", KEY)),
        (
            "gemini",
            "http://p.test/v1beta/models/m-1:streamGenerateContent?alt=sse",
            ("x-goog-api-key", KEY),
        ),
    ],
)
async def test_adapter_sends_the_documented_request(
    family: str, url: str, auth: tuple[str, str]
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=SSE, content=_recorded(family))

    client = _client(family, handler)
    completion = await collect(client.stream(REQUEST))
    assert completion.text and completion.finish_reason == "stop"
    [request] = seen
    assert str(request.url) == url
    assert request.headers[auth[0]] == auth[1]
    assert KEY not in str(request.url)
    if family == "anthropic":
        assert request.headers["anthropic-version"] == "2023-06-01"
        assert json.loads(request.content)["max_tokens"] == 20


@pytest.mark.parametrize("family", ["openai", "anthropic", "gemini"])
async def test_adapter_complete_uses_the_non_streaming_endpoint(family: str) -> None:
    responses = {
        "openai": "openai_response.json",
        "anthropic": "anthropic_response.json",
        "gemini": "gemini_response.json",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert "stream" not in json.loads(request.content)
        assert "streamGenerateContent" not in str(request.url)
        return httpx.Response(200, content=(PAYLOADS / responses[family]).read_bytes())

    completion = await _client(family, handler).complete(REQUEST)
    assert completion.finish_reason == "tool_calls" and len(completion.tool_calls) == 1


@pytest.mark.parametrize("family", ["openai", "anthropic", "gemini"])
async def test_adapter_maps_http_errors_without_the_key(family: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
        return httpx.Response(401, json=body)

    client = _client(family, handler)
    with pytest.raises(ProviderAuthError) as streamed:
        await collect(client.stream(REQUEST))
    with pytest.raises(ProviderAuthError) as completed:
        await client.complete(REQUEST)
    for error in (streamed.value, completed.value):
        assert KEY not in str(error) and error.provider == "acme" and error.model == "m-1"
    assert KEY not in repr(client)


async def test_rate_limit_from_the_adapter_carries_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "3"}, json={"error": {}})

    with pytest.raises(ProviderRateLimited) as caught:
        await collect(_client("anthropic", handler).stream(REQUEST))
    assert caught.value.retry_after == 3.0


async def test_first_token_timeout_when_headers_never_come() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    with pytest.raises(ProviderTimeout) as caught:
        await collect(_client("openai", handler, first_token_s=0.1).stream(REQUEST))
    assert caught.value.phase == "first_token"


async def test_first_token_timeout_counts_content_not_pings() -> None:
    body = Feed(b"event: ping\ndata: {}\n\n", 0.05, b": keep-alive\n\n", 5.0, b"")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, stream=body)

    with pytest.raises(ProviderTimeout) as caught:
        await collect(_client("anthropic", handler, first_token_s=0.2).stream(REQUEST))
    assert caught.value.phase == "first_token"
    assert body.closed


async def test_total_timeout_after_the_first_token() -> None:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    body = Feed(first, 5.0, b"data: [DONE]\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, stream=body)

    stream = _client("openai", handler, first_token_s=1.0, total_s=0.3).stream(REQUEST)
    assert await anext(stream) == TextDelta("Hi")
    with pytest.raises(ProviderTimeout) as caught:
        await anext(stream)
    assert caught.value.phase == "total"
    assert body.closed


async def test_connection_failures() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow_connect(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    with pytest.raises(ProviderUnavailable):
        await collect(_client("gemini", refuse).stream(REQUEST))
    with pytest.raises(ProviderUnavailable):
        await _client("gemini", refuse).complete(REQUEST)
    with pytest.raises(ProviderTimeout) as caught:
        await collect(_client("gemini", slow_connect).stream(REQUEST))
    assert caught.value.phase == "connect"


async def test_a_connection_reset_mid_stream_is_a_stream_error() -> None:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    body = Feed(first, httpx.ReadError("connection reset"))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, stream=body)

    with pytest.raises(ProviderStreamError, match="ReadError"):
        await collect(_client("openai", handler).stream(REQUEST))
    assert body.closed


async def test_cancelling_the_consumer_closes_the_response_at_once() -> None:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    body = Feed(first, 30.0, b"data: [DONE]\n\n")
    got_first = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, stream=body)

    async def consume() -> None:
        async for _ in _client("openai", handler, total_s=60).stream(REQUEST):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert body.closed


async def test_closing_the_stream_early_closes_the_response() -> None:
    body = Feed(_recorded("openai"))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, stream=body)

    stream = _client("openai", handler).stream(REQUEST)
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()
    assert body.closed


# --- make_client ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "cls", "sim_base"),
    [
        ("openai", OpenAIClient, "http://sim:9/v1"),
        ("anthropic", AnthropicClient, "http://sim:9"),
        ("gemini", GeminiClient, "http://sim:9"),
    ],
)
async def test_make_client(family: str, cls: type, sim_base: str) -> None:
    config = Provider(family=family, base_url="https://api.example.com/v1", api_key_env="K")  # type: ignore[arg-type]
    async with new_http_client() as http:
        real = make_client("acme", config, http, env={"K": KEY})
        assert isinstance(real, cls) and real.name == "acme"
        assert real.base_url == "https://api.example.com/v1"
        assert real._api_key == KEY
        assert make_client("acme", config, http, env={})._api_key is None
        sim = make_client("acme", config, http, env={}, sim_url="http://sim:9/")
        assert sim.base_url == sim_base and sim._api_key == SIM_KEY
        assert (
            make_client("acme", config, http, env={"K": KEY}, sim_url="http://sim:9")._api_key
            == KEY
        )


async def test_a_missing_key_fails_before_any_request_naming_the_variable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent without a key")

    config = Provider(family="anthropic", base_url="http://p.test", api_key_env="ANTHROPIC_KEY")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = make_client("acme", config, http, env={})
        with pytest.raises(ProviderAuthError, match="ANTHROPIC_KEY"):
            await collect(client.stream(REQUEST))
        with pytest.raises(ProviderAuthError, match="ANTHROPIC_KEY"):
            await client.complete(REQUEST)


@pytest.mark.parametrize(
    ("status", "body", "expected", "text"),
    [
        # vLLM: the error fields at the top level
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens. However, you "
                "requested 5000 tokens (4000 in the messages, 1000 in the completion).",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            ContextTooLong,
            "maximum context length is 4096",
        ),
        # Ollama: the error is a bare string
        (
            404,
            {"error": 'model "llama9" not found, try pulling it first'},
            ProviderBadRequest,
            "llama9",
        ),
        # Azure OpenAI refuses a prompt with 400 and code content_filter
        (
            400,
            {
                "error": {
                    "message": "The response was filtered due to the prompt triggering Azure "
                    "OpenAI's content management policy.",
                    "type": None,
                    "param": "prompt",
                    "code": "content_filter",
                    "status": 400,
                }
            },
            ContentFiltered,
            "content management policy",
        ),
    ],
)
def test_error_bodies_of_openai_compatible_servers(
    status: int, body: dict[str, Any], expected: type[ProviderError], text: str
) -> None:
    error = error_from_response(status, json.dumps(body), httpx.Headers())
    assert type(error) is expected
    assert text in str(error)


async def test_vllm_error_chunk_mid_stream() -> None:
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"object":"error","message":"engine dead","type":"InternalServerError",'
        b'"param":null,"code":500}\n\n'
    )
    with pytest.raises(ProviderStreamError, match="engine dead"):
        [e async for e in openai.parse_stream(aiter_sse(_agen([body])))]
