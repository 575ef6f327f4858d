"""The three adapters against the real simulator, over HTTP.

Each test resets the simulator, sets the latency and faults of its own model through the
admin API, and checks what the adapter yields against :mod:`dispatcher.sim.answer`, the
error class of every fault, the timeouts, the closing of cancelled calls, and that the
simulator's ``/admin/stats`` agree with what the adapters received.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dispatcher.domain import Usage
from dispatcher.errors import (
    ContentFiltered,
    ContextTooLong,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderStreamError,
    ProviderTimeout,
    ProviderUnavailable,
)
from dispatcher.policy.models import Provider, Timeouts
from dispatcher.providers import (
    ChatRequest,
    Completion,
    Finish,
    HttpAdapter,
    StreamEvent,
    TextDelta,
    collect,
    make_client,
    new_http_client,
)
from dispatcher.sim.answer import answer_tokens, count_tokens, tool_arguments

pytestmark = pytest.mark.integration

FAMILIES = ["openai", "anthropic", "gemini"]
TOKENS = 12
SYSTEM = "You are a helpful voice agent."
PROMPT = "What are your opening hours tomorrow?"
EXPECTED = "".join(answer_tokens(PROMPT, TOKENS))
INPUT_TOKENS = count_tokens(SYSTEM) + count_tokens(PROMPT)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather at a place",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["location", "days"],
        },
    },
}


def _model(family: str) -> str:
    return f"sim-{family}-model"


def _request(family: str, **changes: Any) -> ChatRequest:
    fields: dict[str, Any] = {
        "model": _model(family),
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 200,
    }
    fields.update(changes)
    return ChatRequest(**fields)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as client:
        yield client


@pytest.fixture
async def admin(sim_url: str) -> AsyncIterator[Admin]:
    async with httpx.AsyncClient(base_url=sim_url, timeout=5) as client:
        helper = Admin(client)
        await helper.reset()
        for family in FAMILIES:
            await helper.latency(_model(family), ttft_ms=5, itl_ms=2, tokens=TOKENS)
        yield helper
        await helper.reset()


class Admin:
    """The simulator's admin contract (DESIGN §7)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def reset(self) -> None:
        (await self.client.post("/admin/reset")).raise_for_status()

    async def fault(self, model: str, fault: str, retry_after: float | None = None) -> None:
        body: dict[str, Any] = {"model": model, "fault": fault}
        if retry_after is not None:
            body["retry_after"] = retry_after
        (await self.client.post("/admin/faults", json=body)).raise_for_status()

    async def latency(self, model: str, **fields: Any) -> None:
        (
            await self.client.post("/admin/latency", json={"model": model, **fields})
        ).raise_for_status()

    async def stats(self, model: str) -> dict[str, int]:
        response = await self.client.get("/admin/stats")
        response.raise_for_status()
        models: dict[str, dict[str, int]] = response.json()["models"]
        return models.get(model, {})

    async def settled(self, model: str) -> dict[str, int]:
        """The stats once no call of ``model`` is in progress any more."""
        for _ in range(100):
            stats = await self.stats(model)
            if not stats.get("active", 0):
                return stats
            await asyncio.sleep(0.02)
        raise AssertionError(f"{model} still has active calls: {stats}")


def _client(
    family: str,
    http: httpx.AsyncClient,
    sim_url: str,
    *,
    key: str | None = None,
    first_token_s: float = 5.0,
    total_s: float = 10.0,
) -> HttpAdapter:
    config = Provider(
        family=family,  # type: ignore[arg-type]
        base_url="https://unused.example.com",
        api_key_env="SIM_TEST_KEY",
        timeouts=Timeouts(connect_s=2.0, first_token_s=first_token_s, total_s=total_s),
    )
    env = {"SIM_TEST_KEY": key} if key else {}
    return make_client(f"sim-{family}", config, http, env=env, sim_url=sim_url)


async def _stream(client: HttpAdapter, request: ChatRequest) -> tuple[list[StreamEvent], Any]:
    """Every event received, and the error that ended the stream (or None)."""
    events: list[StreamEvent] = []
    try:
        async for event in client.stream(request):
            events.append(event)
    except ProviderError as exc:
        return events, exc
    return events, None


def _text(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# --- answers --------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
async def test_streamed_text_usage_and_stats(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    # Given a simulator answering 12 tokens
    client = _client(family, http, sim_url)
    # When the adapter streams one call
    events, error = await _stream(client, _request(family))
    # Then the text arrives in order, then exactly one Finish with the provider's usage
    assert error is None
    assert _text(events) == EXPECTED
    assert sum(isinstance(e, TextDelta) for e in events) == TOKENS
    assert [type(e) for e in events].count(Finish) == 1 and isinstance(events[-1], Finish)
    assert events[-1] == Finish("stop", Usage(INPUT_TOKENS, TOKENS, 0, 0))
    # And the simulator counted what the adapter received
    stats = await admin.settled(_model(family))
    assert (stats["calls"], stats["completed"], stats["failed"]) == (1, 1, 0)
    assert (stats["input_tokens"], stats["output_tokens"]) == (INPUT_TOKENS, TOKENS)


@pytest.mark.parametrize("family", FAMILIES)
async def test_whole_answer(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    client = _client(family, http, sim_url)
    completion = await client.complete(_request(family))
    assert completion == Completion(EXPECTED, [], "stop", Usage(INPUT_TOKENS, TOKENS, 0, 0))
    stats = await admin.settled(_model(family))
    assert (stats["calls"], stats["completed"], stats["output_tokens"]) == (1, 1, TOKENS)


@pytest.mark.parametrize("family", FAMILIES)
async def test_max_tokens_cuts_the_answer_with_finish_length(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    client = _client(family, http, sim_url)
    completion = await collect(client.stream(_request(family, max_tokens=5)))
    assert completion.text == "".join(answer_tokens(PROMPT, TOKENS)[:5])
    assert completion.finish_reason == "length"
    assert completion.usage.output_tokens == 5


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("streamed", [True, False])
async def test_tool_calls_come_back_in_one_form_for_all_families(
    family: str, streamed: bool, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    client = _client(family, http, sim_url)
    request = _request(family, tools=[WEATHER], tool_choice="auto")
    completion = (
        await collect(client.stream(request)) if streamed else await client.complete(request)
    )
    [call] = completion.tool_calls
    assert call.name == "get_weather" and call.id
    expected = tool_arguments(WEATHER["function"]["parameters"], PROMPT)  # type: ignore[index]
    assert json.loads(call.arguments) == expected
    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"
    assert completion.usage.output_tokens > 0


@pytest.mark.parametrize("family", FAMILIES)
async def test_a_tool_result_round_trip_is_accepted(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    # Given the model asked for a tool and the tool answered
    client = _client(family, http, sim_url)
    first = await client.complete(_request(family, tools=[WEATHER]))
    [call] = first.tool_calls
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'},
    ]
    # When the conversation goes back with the tool's result
    completion = await collect(client.stream(_request(family, messages=messages, tools=[WEATHER])))
    # Then the provider accepts the translated history and answers with text
    assert completion.finish_reason == "stop" and completion.text
    assert completion.tool_calls == []


# --- faults ---------------------------------------------------------------------------


FAULTS: list[tuple[str, type[ProviderError]]] = [
    ("http_429", ProviderRateLimited),
    ("http_500", ProviderServerError),
    ("http_503", ProviderServerError),
    ("context_too_long", ContextTooLong),
    ("content_filter", ContentFiltered),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("fault", "expected"), FAULTS)
@pytest.mark.parametrize("via", ["admin", "header"])
async def test_each_fault_maps_to_its_error_class(
    family: str,
    fault: str,
    expected: type[ProviderError],
    via: str,
    http: httpx.AsyncClient,
    sim_url: str,
    admin: Admin,
) -> None:
    client = _client(family, http, sim_url)
    headers = {}
    if via == "admin":
        await admin.fault(_model(family), fault, retry_after=2)
    else:
        headers = {"x-sim-fault": fault}
    request = _request(family, extra_headers=headers)
    events, error = await _stream(client, request)
    assert type(error) is expected, error
    assert not any(isinstance(e, Finish) for e in events)
    with pytest.raises(expected):
        await client.complete(request)
    if isinstance(error, ProviderServerError):
        assert error.status == int(fault.removeprefix("http_"))


@pytest.mark.parametrize("family", FAMILIES)
async def test_retry_after_is_read(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    await admin.fault(_model(family), "http_429", retry_after=2.5)
    with pytest.raises(ProviderRateLimited) as caught:
        await collect(_client(family, http, sim_url).stream(_request(family)))
    # OpenAI sends retry-after-ms (exact); Anthropic's retry-after is whole seconds
    assert caught.value.retry_after is not None
    assert 2.5 <= caught.value.retry_after <= 3.0


@pytest.mark.parametrize("family", FAMILIES)
async def test_a_cut_stream_is_a_stream_error_after_the_tokens_sent(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    await admin.fault(_model(family), "cut_after:4")
    client = _client(family, http, sim_url)
    events, error = await _stream(client, _request(family))
    assert isinstance(error, ProviderStreamError), error
    assert _text(events) == "".join(answer_tokens(PROMPT, TOKENS)[:4])
    with pytest.raises(ProviderStreamError):
        await client.complete(_request(family))
    stats = await admin.settled(_model(family))
    assert (stats["calls"], stats["failed"]) == (2, 2)


@pytest.mark.parametrize("family", FAMILIES)
async def test_an_error_event_mid_stream(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    await admin.fault(_model(family), "error_event_after:3")
    client = _client(family, http, sim_url)
    events, error = await _stream(client, _request(family))
    # Anthropic's overloaded_error (and Gemini's UNAVAILABLE) is a server error, as a 529
    # or 503 would be; OpenAI's server_error event is a stream error.
    expected = ProviderStreamError if family == "openai" else ProviderServerError
    assert type(error) is expected, error
    assert _text(events) == "".join(answer_tokens(PROMPT, TOKENS)[:3])
    with pytest.raises((ProviderServerError, ProviderStreamError)):
        await client.complete(_request(family))


# --- timeouts and cancellation --------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
async def test_hang_is_a_first_token_timeout_and_the_call_is_dropped(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    await admin.fault(_model(family), "hang")
    client = _client(family, http, sim_url, first_token_s=0.3, total_s=0.6)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderTimeout) as streamed:
        await collect(client.stream(_request(family)))
    assert streamed.value.phase == "first_token"
    assert loop.time() - started < 0.6
    with pytest.raises(ProviderTimeout) as completed:
        await client.complete(_request(family))
    assert completed.value.phase == "total"
    # the simulator saw both calls go away: nothing left hanging on its side
    stats = await admin.settled(_model(family))
    assert (stats["calls"], stats["failed"]) == (2, 2)


@pytest.mark.parametrize("family", FAMILIES)
async def test_slow_first_token(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    await admin.fault(_model(family), "slow_first_token:600")
    impatient = _client(family, http, sim_url, first_token_s=0.2)
    with pytest.raises(ProviderTimeout) as caught:
        await collect(impatient.stream(_request(family)))
    assert caught.value.phase == "first_token"
    patient = _client(family, http, sim_url, first_token_s=3.0)
    assert (await collect(patient.stream(_request(family)))).text == EXPECTED


@pytest.mark.parametrize("family", FAMILIES)
async def test_total_timeout_mid_stream(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    await admin.latency(_model(family), ttft_ms=5, itl_ms=100, tokens=50)
    client = _client(family, http, sim_url, first_token_s=1.0, total_s=0.5)
    events, error = await _stream(client, _request(family))
    assert isinstance(error, ProviderTimeout) and error.phase == "total"
    assert 0 < sum(isinstance(e, TextDelta) for e in events) < 50


@pytest.mark.parametrize("family", FAMILIES)
async def test_cancelling_the_task_stops_the_provider_call_at_once(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    # Given a slow, long answer being streamed
    await admin.latency(_model(family), ttft_ms=5, itl_ms=200, tokens=100)
    client = _client(family, http, sim_url)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in client.stream(_request(family)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    # When the task is cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Then the simulator sees the client go away promptly
    stats = await admin.settled(_model(family))
    assert (stats["calls"], stats["failed"], stats["cancelled"]) == (1, 1, 1)
    assert stats["output_tokens"] < 100


# --- keys and reachability ------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
async def test_a_bad_key_is_an_auth_error_that_does_not_show_the_key(
    family: str, http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    key = "bad-key-4f9a8b7c6d5e4f3a2b1c"
    client = _client(family, http, sim_url, key=key)
    with pytest.raises(ProviderAuthError) as streamed:
        await collect(client.stream(_request(family)))
    with pytest.raises(ProviderAuthError) as completed:
        await client.complete(_request(family))
    for error in (streamed.value, completed.value):
        assert key not in str(error) and key not in repr(error.args)
        assert error.provider == f"sim-{family}" and error.model == _model(family)


@pytest.mark.parametrize("family", FAMILIES)
async def test_an_unreachable_provider(family: str, http: httpx.AsyncClient) -> None:
    client = _client(family, http, "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ProviderUnavailable):
        await collect(client.stream(_request(family)))
    with pytest.raises(ProviderUnavailable):
        await client.complete(_request(family))


async def test_many_concurrent_streams_share_the_pool(
    http: httpx.AsyncClient, sim_url: str, admin: Admin
) -> None:
    clients = [_client(family, http, sim_url) for family in FAMILIES]
    calls = [
        collect(client.stream(_request(family)))
        for client, family in zip(clients, FAMILIES, strict=True)
        for _ in range(30)
    ]
    results = await asyncio.gather(*calls)
    assert {r.text for r in results} == {EXPECTED}
    for family in FAMILIES:
        stats = await admin.settled(_model(family))
        assert (stats["calls"], stats["completed"]) == (30, 30)
        assert stats["output_tokens"] == 30 * TOKENS
