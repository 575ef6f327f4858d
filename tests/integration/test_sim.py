"""The provider simulator over real HTTP: wire formats, tool calls, faults, admin, stats.

Every test talks to the session's simulator (``tests/conftest.py``: 5 ms to the first
token, 1 ms between tokens, 12 tokens) through httpx or the ``openai`` SDK; no mocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from dispatcher.sim.answer import (
    answer_tokens,
    argument_fragments,
    count_tokens,
    tool_arguments,
    tool_arguments_json,
)

TOKENS = 12  # SIM_TEST_DEFAULTS.tokens in tests/conftest.py
PROMPT = "Where is my parcel from last Tuesday?"
SYSTEM = "You are a helpful voice agent."
ANSWER = "".join(answer_tokens(PROMPT, TOKENS))

OPENAI_KEY = {"authorization": "Bearer sk-sim-test"}
ANTHROPIC_KEY = {"x-api-key": "sk-ant-sim", "anthropic-version": "2023-06-01"}
GEMINI_KEY = {"x-goog-api-key": "AIza-sim"}

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "note": {"type": "string"},
    },
    "required": ["city", "days", "metric"],
}
TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
}


# --- requests of each format -------------------------------------------------------------


def openai_req(model: str = "gpt-sim", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return {"url": "/v1/chat/completions", "headers": OPENAI_KEY, "json": body | extra}


def anthropic_req(
    model: str = "claude-sim", *, stream: bool = False, **extra: Any
) -> dict[str, Any]:
    body = {
        "model": model,
        "system": SYSTEM,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        "stream": stream,
    }
    return {"url": "/v1/messages", "headers": ANTHROPIC_KEY, "json": body | extra}


def gemini_req(model: str = "gemini-sim", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    body = {
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
    }
    return {"url": f"/v1beta/models/{model}:{method}", "headers": GEMINI_KEY, "json": body | extra}


REQUESTS = {"openai": openai_req, "anthropic": anthropic_req, "gemini": gemini_req}
MODELS = {"openai": "gpt-sim", "anthropic": "claude-sim", "gemini": "gemini-sim"}
INPUT_TOKENS = count_tokens(SYSTEM) + count_tokens(PROMPT)


# --- reading responses -------------------------------------------------------------------


def sse(raw: bytes) -> list[tuple[str | None, str]]:
    """Split an SSE body into (event name, data) pairs; CRLF and LF both end lines."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def sse_json(raw: bytes) -> list[Any]:
    return [orjson.loads(data) for _, data in sse(raw) if data != "[DONE]"]


def _headers(req: dict[str, Any], fault: str | None) -> dict[str, str]:
    headers: dict[str, str] = req["headers"]
    return headers | ({"x-sim-fault": fault} if fault else {})


def post(client: httpx.Client, req: dict[str, Any], *, fault: str | None = None) -> httpx.Response:
    """POST a request built by ``openai_req`` & co., with an ``x-sim-fault`` if given."""
    return client.post(req["url"], json=req["json"], headers=_headers(req, fault))


def read_stream(
    client: httpx.Client, req: dict[str, Any], *, fault: str | None = None
) -> tuple[httpx.Response, bytes, Exception | None]:
    """POST and read the raw body; a dropped connection is returned, not raised."""
    chunks: list[bytes] = []
    error: Exception | None = None
    with client.stream(
        "POST", req["url"], json=req["json"], headers=_headers(req, fault)
    ) as response:
        try:
            for chunk in response.iter_raw():
                chunks.append(chunk)
        except httpx.RemoteProtocolError as exc:
            error = exc
    return response, b"".join(chunks), error


def openai_text(raw: bytes) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in sse_json(raw) if c.get("choices")
    )


def anthropic_text(raw: bytes) -> str:
    return "".join(
        e["delta"].get("text", "") for e in sse_json(raw) if e["type"] == "content_block_delta"
    )


def gemini_text(raw: bytes) -> str:
    return "".join(
        p.get("text", "")
        for c in sse_json(raw)
        if "candidates" in c
        for p in c["candidates"][0].get("content", {}).get("parts", [])
    )


STREAM_TEXT = {"openai": openai_text, "anthropic": anthropic_text, "gemini": gemini_text}


def ended(fmt: str, raw: bytes) -> bool:
    """Whether a stream carries its format's end marker."""
    if fmt == "openai":
        return raw.rstrip().endswith(b"data: [DONE]")
    if fmt == "anthropic":
        return b"event: message_stop" in raw
    return any("finishReason" in c["candidates"][0] for c in sse_json(raw) if "candidates" in c)


@pytest.fixture
def client(sim: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim, timeout=5) as c:
        yield c


def admin(client: httpx.Client, path: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/admin/{path}", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def stats(client: httpx.Client, model: str) -> dict[str, int]:
    models: dict[str, dict[str, int]] = client.get("/admin/stats").json()["models"]
    return models.get(model, {})


def wait_idle(client: httpx.Client, model: str, timeout: float = 2.0) -> dict[str, int]:
    """Poll the stats until no call of ``model`` is in progress."""
    deadline = time.monotonic() + timeout
    while True:
        current = stats(client, model)
        if current.get("active") == 0 or time.monotonic() > deadline:
            return current
        time.sleep(0.02)


# --- answers -----------------------------------------------------------------------------


def test_answer_tokens_are_deterministic_sentences() -> None:
    tokens = answer_tokens(PROMPT, 40)
    assert tokens == answer_tokens(PROMPT, 40)
    assert tokens != answer_tokens(PROMPT + "!", 40)
    assert not tokens[0].startswith(" ") and all(t.startswith(" ") for t in tokens[1:])
    assert tokens[-1].endswith(".")
    ends = [i for i, t in enumerate(tokens) if t.endswith(".")]
    gaps = [b - a for a, b in zip([-1, *ends[:-1]], ends, strict=True)]
    assert all(6 <= g <= 10 for g in gaps[:-1]) and gaps[-1] <= 10
    assert answer_tokens(PROMPT, 0) == []


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("Hello, world.", 4), ("a  b\nc", 3)])
def test_count_tokens(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


def test_tool_arguments_follow_the_required_properties() -> None:
    assert tool_arguments(WEATHER_SCHEMA, PROMPT) == {
        "city": "Where is my parcel from",
        "days": 1,
        "metric": True,
    }
    assert tool_arguments(
        {"type": "OBJECT", "properties": {"n": {"type": "NUMBER"}}, "required": ["n"]}, ""
    ) == {"n": 1}
    assert tool_arguments(TIME_SCHEMA, PROMPT) == {"zone": "UTC"}
    assert tool_arguments({}, PROMPT) == {}


# --- OpenAI ------------------------------------------------------------------------------


def test_openai_stream_chunks_text_usage_and_done(client: httpx.Client) -> None:
    response, raw, error = read_stream(client, openai_req(stream=True))

    assert error is None and response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_json(raw)
    assert raw.endswith(b"data: [DONE]\n\n")
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]] == answer_tokens(
        PROMPT, TOKENS
    )
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        INPUT_TOKENS,
        TOKENS,
        INPUT_TOKENS + TOKENS,
    )
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


def test_openai_stream_without_include_usage_has_no_usage(client: httpx.Client) -> None:
    req = openai_req(stream=True)
    del req["json"]["stream_options"]
    _, raw, _ = read_stream(client, req)
    chunks = sse_json(raw)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_whole_completion(client: httpx.Client) -> None:
    body = post(client, openai_req()).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == INPUT_TOKENS
    assert body["usage"]["completion_tokens"] == TOKENS


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_openai_max_tokens_cuts_the_answer_with_length(client: httpx.Client, field: str) -> None:
    req = openai_req(stream=True)
    req["json"][field] = 5
    _, raw, _ = read_stream(client, req)
    assert openai_text(raw) == "".join(answer_tokens(PROMPT, TOKENS)[:5])
    assert sse_json(raw)[-2]["choices"][0]["finish_reason"] == "length"
    assert sse_json(raw)[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("path", ["/openai/v1/chat/completions", "/v1beta/openai/chat/completions"])
def test_openai_compatible_base_urls(client: httpx.Client, path: str) -> None:
    req = openai_req() | {"url": path}
    assert post(client, req).json()["choices"][0]["message"]["content"] == ANSWER


def test_openai_sdk_reads_the_simulator(sim: str) -> None:
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="sk-sim", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="gpt-sim",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == ANSWER
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == TOKENS

        completion = sdk.chat.completions.create(
            model="gpt-sim",
            messages=[{"role": "user", "content": PROMPT}],
            tools=[
                {"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA}}
            ],
        )
        tool_calls = completion.choices[0].message.tool_calls or []
        call = tool_calls[0]
        assert call.type == "function"
        assert call.function.name == "weather"
        assert orjson.loads(call.function.arguments) == tool_arguments(WEATHER_SCHEMA, PROMPT)

        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(
                model="gpt-sim",
                messages=[{"role": "user", "content": PROMPT}],
                extra_headers={"x-sim-fault": "http_429"},
            )
        assert caught.value.code == "rate_limit_exceeded"
        with pytest.raises(openai.AuthenticationError):
            sdk.with_options(api_key="bad-key").chat.completions.create(
                model="gpt-sim", messages=[{"role": "user", "content": PROMPT}]
            )


# --- Anthropic ---------------------------------------------------------------------------


def test_anthropic_stream_event_sequence(client: httpx.Client) -> None:
    response, raw, error = read_stream(client, anthropic_req(stream=True))

    assert error is None and response.status_code == 200
    events = sse(raw)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * TOKENS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    docs = [orjson.loads(data) for _, data in events]
    assert [d["type"] for d in docs] == names
    start = docs[0]["message"]
    assert start["role"] == "assistant" and start["content"] == []
    assert start["id"].startswith("msg_") and start["model"] == "claude-sim"
    assert start["usage"]["input_tokens"] == INPUT_TOKENS
    assert docs[1]["content_block"] == {"type": "text", "text": ""}
    assert all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for d in docs[3:-3])
    assert anthropic_text(raw) == ANSWER
    assert docs[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert docs[-2]["usage"]["output_tokens"] == TOKENS


def test_anthropic_whole_message(client: httpx.Client) -> None:
    body = post(client, anthropic_req(max_tokens=4)).json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": "".join(answer_tokens(PROMPT, TOKENS)[:4])}]
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["input_tokens"] == INPUT_TOKENS
    assert body["usage"]["output_tokens"] == 4


def test_anthropic_requires_max_tokens_and_version(client: httpx.Client) -> None:
    req = anthropic_req()
    del req["json"]["max_tokens"]
    response = post(client, req)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }

    response = post(client, anthropic_req() | {"headers": {"x-api-key": "sk-ant"}})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- Gemini ------------------------------------------------------------------------------


def test_gemini_sse_chunks(client: httpx.Client) -> None:
    response, raw, error = read_stream(client, gemini_req(stream=True))

    assert error is None and response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert raw.endswith(b"}\r\n\r\n")  # Google separates events with CRLF CRLF
    chunks = sse_json(raw)
    assert len(chunks) == TOKENS
    assert gemini_text(raw) == ANSWER
    assert all(c["candidates"][0]["content"]["role"] == "model" for c in chunks)
    assert all(c["modelVersion"] == "gemini-sim" for c in chunks)
    assert [("finishReason" in c["candidates"][0]) for c in chunks] == [False] * (TOKENS - 1) + [
        True
    ]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    usage = chunks[-1]["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"], usage["totalTokenCount"]) == (
        INPUT_TOKENS,
        TOKENS,
        INPUT_TOKENS + TOKENS,
    )


def test_gemini_whole_answer_and_max_output_tokens(client: httpx.Client) -> None:
    body = post(client, gemini_req()).json()
    candidate = body["candidates"][0]
    assert candidate["content"] == {"parts": [{"text": ANSWER}], "role": "model"}
    assert candidate["finishReason"] == "STOP"
    assert body["usageMetadata"]["candidatesTokenCount"] == TOKENS

    body = post(client, gemini_req(generationConfig={"maxOutputTokens": 3})).json()
    assert body["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert body["candidates"][0]["content"]["parts"][0]["text"] == "".join(
        answer_tokens(PROMPT, TOKENS)[:3]
    )


def test_gemini_json_array_stream_and_query_key(client: httpx.Client) -> None:
    req = gemini_req(stream=True)
    req["url"] = "/v1beta/models/gemini-sim:streamGenerateContent?key=AIza-sim"
    req["headers"] = {}
    response, raw, _ = read_stream(client, req)
    assert response.headers["content-type"].startswith("application/json")
    chunks = orjson.loads(raw)
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == ANSWER
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


# --- tool calls --------------------------------------------------------------------------


def openai_tools(choice: Any = None) -> dict[str, Any]:
    tools = [
        {"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA}},
        {"type": "function", "function": {"name": "clock", "parameters": TIME_SCHEMA}},
    ]
    return {"tools": tools} | ({"tool_choice": choice} if choice is not None else {})


def test_openai_streamed_tool_call(client: httpx.Client) -> None:
    _, raw, _ = read_stream(client, openai_req(stream=True, **openai_tools()))
    chunks = [c for c in sse_json(raw) if c["choices"]]
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["function"] == {"name": "weather", "arguments": ""}
    fragments = [
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[1:-1]
    ]
    assert len(fragments) > 2
    assert "".join(fragments) == tool_arguments_json(WEATHER_SCHEMA, PROMPT)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert sse_json(raw)[-1]["usage"]["completion_tokens"] == len(fragments)


def test_openai_tool_choice_names_a_tool_or_none(client: httpx.Client) -> None:
    named = {"type": "function", "function": {"name": "clock"}}
    message = post(client, openai_req(**openai_tools(named))).json()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "clock"
    assert orjson.loads(message["tool_calls"][0]["function"]["arguments"]) == {"zone": "UTC"}

    body = post(client, openai_req(**openai_tools("none"))).json()
    assert body["choices"][0]["message"]["content"] == ANSWER


def test_openai_answers_a_tool_result_with_text(client: httpx.Client) -> None:
    req = openai_req(**openai_tools())
    req["json"]["messages"] += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = post(client, req).json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert body["choices"][0]["finish_reason"] == "stop"


def test_anthropic_streamed_tool_use(client: httpx.Client) -> None:
    tools = [{"name": "weather", "input_schema": WEATHER_SCHEMA}]
    _, raw, _ = read_stream(client, anthropic_req(stream=True, tools=tools))
    docs = sse_json(raw)
    block = docs[1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "weather" and block["input"] == {}
    assert block["id"].startswith("toolu_")
    deltas = [d["delta"] for d in docs if d["type"] == "content_block_delta"]
    assert all(d["type"] == "input_json_delta" for d in deltas)
    assert orjson.loads("".join(d["partial_json"] for d in deltas)) == tool_arguments(
        WEATHER_SCHEMA, PROMPT
    )
    message_delta = next(d for d in docs if d["type"] == "message_delta")
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    arguments = tool_arguments_json(WEATHER_SCHEMA, PROMPT)
    assert message_delta["usage"]["output_tokens"] == len(argument_fragments(arguments))


def test_anthropic_answers_a_tool_result_with_text(client: httpx.Client) -> None:
    req = anthropic_req(tools=[{"name": "weather", "input_schema": WEATHER_SCHEMA}])
    req["json"]["messages"] += [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
        },
    ]
    body = post(client, req).json()
    assert body["content"] == [{"type": "text", "text": ANSWER}]
    assert body["stop_reason"] == "end_turn"


def test_gemini_function_call(client: httpx.Client) -> None:
    tools = [{"functionDeclarations": [{"name": "weather", "parameters": WEATHER_SCHEMA}]}]
    _, raw, _ = read_stream(client, gemini_req(stream=True, tools=tools))
    chunks = sse_json(raw)
    assert len(chunks) == 1  # Gemini sends a function call whole
    candidate = chunks[0]["candidates"][0]
    assert candidate["content"]["parts"] == [
        {"functionCall": {"name": "weather", "args": tool_arguments(WEATHER_SCHEMA, PROMPT)}}
    ]
    assert candidate["finishReason"] == "STOP"

    req = gemini_req(tools=tools)
    req["json"]["contents"] += [
        {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {}}}]},
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "weather", "response": {"sky": "sunny"}}}],
        },
    ]
    body = post(client, req).json()
    assert body["candidates"][0]["content"]["parts"] == [{"text": ANSWER}]


# --- auth --------------------------------------------------------------------------------

AUTH_CASES = [
    # format, headers, status, where the error kind is, error kind
    ("openai", {}, 401, ("error", "type"), "invalid_request_error"),
    (
        "openai",
        {"authorization": "Bearer bad-key-123456"},
        401,
        ("error", "code"),
        "invalid_api_key",
    ),
    (
        "anthropic",
        {"anthropic-version": "2023-06-01"},
        401,
        ("error", "type"),
        "authentication_error",
    ),
    (
        "anthropic",
        {"x-api-key": "bad", "anthropic-version": "2023-06-01"},
        401,
        ("error", "type"),
        "authentication_error",
    ),
    # Google answers a missing key with 403 and a wrong one with 400, not 401.
    ("gemini", {}, 403, ("error", "status"), "PERMISSION_DENIED"),
    ("gemini", {"x-goog-api-key": "bad-key"}, 400, ("error", "status"), "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize(("fmt", "headers", "status", "path", "kind"), AUTH_CASES)
def test_missing_or_bad_key(
    client: httpx.Client,
    fmt: str,
    headers: dict[str, str],
    status: int,
    path: tuple[str, str],
    kind: str,
) -> None:
    response = post(client, REQUESTS[fmt]() | {"headers": headers})
    assert response.status_code == status
    assert response.json()[path[0]][path[1]] == kind
    assert stats(client, MODELS[fmt]) == {}  # refused before the model saw it


# --- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini"])
def test_http_429_with_retry_hints(client: httpx.Client, fmt: str) -> None:
    admin(client, "faults", model=MODELS[fmt], fault="http_429", retry_after=7)
    response = post(client, REQUESTS[fmt](stream=True))
    assert response.status_code == 429
    body = response.json()
    if fmt == "openai":
        assert response.headers["retry-after"] == "7"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert body["error"]["code"] == "rate_limit_exceeded"
    elif fmt == "anthropic":
        assert response.headers["retry-after"] == "7"
        assert response.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert body == {"type": "error", "error": body["error"], "request_id": body["request_id"]}
        assert body["error"]["type"] == "rate_limit_error"
    else:
        assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
        retry = [d for d in body["error"]["details"] if d["@type"].endswith("RetryInfo")]
        assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]


SERVER_ERRORS = [
    ("openai", "http_500", 500, ("error", "type"), "server_error"),
    ("openai", "http_503", 503, ("error", "type"), "server_error"),
    ("anthropic", "http_500", 500, ("error", "type"), "api_error"),
    ("anthropic", "http_503", 503, ("error", "type"), "overloaded_error"),
    ("gemini", "http_500", 500, ("error", "status"), "INTERNAL"),
    ("gemini", "http_503", 503, ("error", "status"), "UNAVAILABLE"),
    ("openai", "context_too_long", 400, ("error", "code"), "context_length_exceeded"),
    ("anthropic", "context_too_long", 400, ("error", "type"), "invalid_request_error"),
    ("gemini", "context_too_long", 400, ("error", "status"), "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize(("fmt", "fault", "status", "path", "kind"), SERVER_ERRORS)
def test_error_faults(
    client: httpx.Client, fmt: str, fault: str, status: int, path: tuple[str, str], kind: str
) -> None:
    response = post(client, REQUESTS[fmt](), fault=fault)
    assert response.status_code == status
    error = response.json()[path[0]]
    assert error[path[1]] == kind
    if fault == "context_too_long":
        assert {
            "openai": "maximum context length",
            "anthropic": "prompt is too long",
            "gemini": "exceeds the maximum",
        }[fmt] in error["message"]
    assert stats(client, MODELS[fmt])["failed"] == 1


def test_hang_never_answers_and_counts_as_cancelled(sim: str) -> None:
    with httpx.Client(base_url=sim, timeout=httpx.Timeout(5, read=0.3)) as slow:
        admin(slow, "faults", model="gpt-sim", fault="hang")
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            post(slow, openai_req(stream=True))
        assert time.monotonic() - started < 2
        after = wait_idle(slow, "gpt-sim")
    assert after["failed"] == after["cancelled"] == after["calls"] == 1


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini"])
def test_cut_after_drops_the_connection_without_end_marker(client: httpx.Client, fmt: str) -> None:
    admin(client, "faults", model=MODELS[fmt], fault="cut_after:3")
    response, raw, error = read_stream(client, REQUESTS[fmt](stream=True))

    assert response.status_code == 200
    assert isinstance(error, httpx.RemoteProtocolError)
    assert STREAM_TEXT[fmt](raw) == "".join(answer_tokens(PROMPT, TOKENS)[:3])
    assert not ended(fmt, raw)
    after = wait_idle(client, MODELS[fmt])
    assert (after["failed"], after["output_tokens"]) == (1, 3)


def test_cut_after_on_a_whole_answer(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        post(client, anthropic_req(), fault="cut_after:1")


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini"])
def test_error_event_after_sends_the_mid_stream_error(client: httpx.Client, fmt: str) -> None:
    response, raw, error = read_stream(
        client, REQUESTS[fmt](stream=True), fault="error_event_after:2"
    )

    assert response.status_code == 200 and error is None
    assert STREAM_TEXT[fmt](raw) == "".join(answer_tokens(PROMPT, TOKENS)[:2])
    assert not ended(fmt, raw)
    name, data = sse(raw)[-1]
    last = orjson.loads(data)
    if fmt == "anthropic":
        assert name == "error"
        assert last == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
        }
    elif fmt == "openai":
        assert last["error"]["type"] == "server_error"
    else:
        assert last["error"]["status"] == "UNAVAILABLE"


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini"])
def test_content_filter(client: httpx.Client, fmt: str) -> None:
    _, raw, _ = read_stream(client, REQUESTS[fmt](stream=True), fault="content_filter")
    assert STREAM_TEXT[fmt](raw) == ""
    docs = sse_json(raw)
    if fmt == "openai":
        assert docs[-2]["choices"][0]["finish_reason"] == "content_filter"
    elif fmt == "anthropic":
        stop = next(d for d in docs if d["type"] == "message_delta")["delta"]["stop_reason"]
        assert stop == "refusal"
    else:
        assert docs[-1]["candidates"][0]["finishReason"] == "SAFETY"
        assert "content" not in docs[-1]["candidates"][0]


def test_slow_first_token(client: httpx.Client) -> None:
    admin(client, "faults", model="claude-sim", fault="slow_first_token:300")
    req = anthropic_req(stream=True)
    started = time.monotonic()
    with client.stream("POST", req["url"], json=req["json"], headers=req["headers"]) as response:
        headers_at = time.monotonic() - started
        first_token_at = None
        for line in response.iter_lines():
            if "text_delta" in line and first_token_at is None:
                first_token_at = time.monotonic() - started
    assert headers_at < 0.25  # headers and message_start come at once
    assert first_token_at is not None and first_token_at >= 0.3


def test_model_fault_wins_over_star_and_header_wins_over_both(client: httpx.Client) -> None:
    admin(client, "faults", model="*", fault="http_500")
    admin(client, "faults", model="gpt-sim", fault="none")

    assert post(client, openai_req()).status_code == 200
    assert post(client, openai_req("gpt-other")).status_code == 500
    assert post(client, openai_req("gpt-other"), fault="none").status_code == 200
    assert post(client, openai_req(), fault="http_503").status_code == 503
    assert client.get("/admin/faults").json()["faults"]["*"]["fault"] == "http_500"


def test_fault_header_takes_a_retry_after(client: httpx.Client) -> None:
    req = openai_req()
    req["headers"] = req["headers"] | {"x-sim-retry-after": "0.5"}
    response = post(client, req, fault="http_429")
    assert response.status_code == 429
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("1", "500")


def test_bad_fault_header_is_422(client: httpx.Client) -> None:
    response = post(client, openai_req(), fault="explode")
    assert response.status_code == 422
    assert "'explode'" in response.json()["detail"]


# --- admin -------------------------------------------------------------------------------


def test_latency_per_model_and_star(client: httpx.Client) -> None:
    assert admin(client, "latency", model="gpt-sim", tokens=3) == {
        "model": "gpt-sim",
        "ttft_ms": 5,
        "itl_ms": 1,
        "tokens": 3,
    }
    admin(client, "latency", model="*", tokens=4, ttft_ms=150)

    assert post(client, openai_req()).json()["usage"]["completion_tokens"] == 3
    started = time.monotonic()
    body = post(client, openai_req("gpt-other")).json()
    assert time.monotonic() - started >= 0.15
    assert body["choices"][0]["message"]["content"] == "".join(answer_tokens(PROMPT, 4))
    assert client.get("/admin/latency", params={"model": "gpt-sim"}).json()["ttft_ms"] == 150


def test_stats_agree_with_what_the_client_received(client: httpx.Client) -> None:
    # Given: one whole answer, one stream, one cut stream and one 429 for the same model
    post(client, gemini_req())
    _, raw, _ = read_stream(client, gemini_req(stream=True))
    _, cut, _ = read_stream(client, gemini_req(stream=True), fault="cut_after:5")
    post(client, gemini_req(), fault="http_429")

    # When: the stats are read
    after = wait_idle(client, "gemini-sim")

    # Then: they count what the client saw
    received = TOKENS + len(sse_json(raw)) + len(sse_json(cut))
    assert after == {
        "active": 0,
        "calls": 4,
        "completed": 2,
        "failed": 2,
        "cancelled": 0,
        "input_tokens": 3 * INPUT_TOKENS,
        "output_tokens": received,
    }


def test_client_disconnect_stops_the_stream(client: httpx.Client) -> None:
    admin(client, "latency", model="gpt-sim", itl_ms=50, tokens=200)
    req = openai_req(stream=True)
    with client.stream("POST", req["url"], json=req["json"], headers=req["headers"]) as response:
        lines = response.iter_lines()
        while "content" not in next(lines):
            pass
    # Leaving the block closes the connection after about one token.
    after = wait_idle(client, "gpt-sim", timeout=1.0)
    assert after["active"] == 0
    assert after["cancelled"] == after["failed"] == 1
    assert after["output_tokens"] < 10


def test_reset_clears_faults_latency_and_stats(client: httpx.Client) -> None:
    admin(client, "faults", model="*", fault="http_500")
    admin(client, "latency", model="*", tokens=2)
    post(client, openai_req())

    admin(client, "reset")

    assert client.get("/admin/stats").json() == {"models": {}}
    assert client.get("/admin/faults").json() == {"faults": {}}
    assert post(client, openai_req()).json()["choices"][0]["message"]["content"] == ANSWER


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("faults", {"model": "m", "fault": "cut_after:x"}, "cut_after:x"),
        ("faults", {"model": "m", "fault": "boom"}, "'boom'"),
        ("faults", {"fault": "none"}, "'model'"),
        ("faults", {"model": "m", "fault": "none", "retry_after": -1}, "retry_after"),
        ("faults", {"model": "m", "fault": "none", "extra": 1}, "extra"),
        ("latency", {"model": "m", "tokens": 0}, "tokens"),
        ("latency", {"model": "m", "ttft_ms": "fast"}, "ttft_ms"),
        ("latency", [1, 2], "JSON object"),
    ],
)
def test_bad_admin_input_is_422(client: httpx.Client, path: str, body: Any, named: str) -> None:
    response = client.post(f"/admin/{path}", json=body)
    assert response.status_code == 422
    assert named in response.json()["detail"]


# --- load ----------------------------------------------------------------------------------


async def test_many_concurrent_streams(sim: str) -> None:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=sim, timeout=10, limits=limits) as aclient:

        async def one(i: int) -> str:
            req = REQUESTS[("openai", "anthropic", "gemini")[i % 3]](stream=True)
            async with aclient.stream(
                "POST", req["url"], json=req["json"], headers=req["headers"]
            ) as response:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            return STREAM_TEXT[("openai", "anthropic", "gemini")[i % 3]](raw)

        texts = await asyncio.gather(*(one(i) for i in range(150)))
    assert texts == [ANSWER] * 150
