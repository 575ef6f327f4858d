"""End to end: simulator, ingress, one Celery worker per tier and Redis as separate
processes (the same launcher ``dispatcher demo`` uses), driven by the official ``openai``
SDK and by raw SSE over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from dispatcher.client import iter_sse, stream_turn
from dispatcher.sim.answer import answer_tokens
from dispatcher.stack import Stack, running_stack

TOKENS = 12
REDIS_URL = "redis://127.0.0.1:6379/9"


def _redis_or_fail() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    _redis_or_fail()
    redis.Redis.from_url(REDIS_URL).flushdb()
    with running_stack(
        redis_url=REDIS_URL,
        sim_args=["--ttft-ms", "5", "--itl-ms", "2", "--tokens", str(TOKENS)],
        ledger_writer=False,
    ) as st:
        yield st


@pytest.fixture(scope="module")
def api_key(stack: Stack) -> str:
    from dispatcher.demo import _create_key

    return _create_key(stack.redis_url)


@pytest.fixture(autouse=True)
def _reset_sim(stack: Stack) -> None:
    httpx.post(f"{stack.sim_url}/admin/reset", timeout=5).raise_for_status()


def _sim_fault(stack: Stack, model: str, fault: str) -> None:
    httpx.post(f"{stack.sim_url}/admin/faults", json={"model": model, "fault": fault},
               timeout=5).raise_for_status()


def _stats(stack: Stack) -> dict:
    return httpx.get(f"{stack.sim_url}/admin/stats", timeout=5).json()["models"]


def _expected(text: str) -> str:
    return "".join(answer_tokens(text, TOKENS))


def _turn(stack: Stack, key: str, body: dict):
    async def go():
        async with httpx.AsyncClient() as client:
            return await stream_turn(client, stack.ingress_url, key, body, timeout=30)

    return asyncio.run(go())


def test_openai_sdk_streams_with_model_auto(stack: Stack, api_key: str) -> None:
    # Given the official SDK pointed at the ingress
    client = openai.OpenAI(base_url=f"{stack.ingress_url}/v1", api_key=api_key)
    text = "what time do you close on sundays"
    # When it streams a turn with model="auto"
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": text}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    # Then the content is the simulator's answer, from the fast tier's model, with usage
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == _expected(text)
    assert {c.model for c in chunks} == {"llama-3.1-8b-instant"}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == TOKENS
    assert usage.prompt_tokens > 0


def test_openai_sdk_non_stream_headers_and_forced_tier(stack: Stack, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{stack.ingress_url}/v1", api_key=api_key)
    text = "hello there"
    raw = client.chat.completions.with_raw_response.create(
        model="reasoning", messages=[{"role": "user", "content": text}])
    completion = raw.parse()
    assert raw.headers["x-dispatcher-tier"] == "reasoning"
    assert raw.headers["x-dispatcher-model"] == "gpt-4o"
    assert raw.headers["x-dispatcher-turn-id"]
    assert completion.model == "gpt-4o"
    assert completion.choices[0].message.content == _expected(text)
    assert completion.usage.completion_tokens == TOKENS


def test_turn_events_in_order_with_sentences_and_cost(stack: Stack, api_key: str) -> None:
    text = "write a python function that reverses a list"
    result = _turn(stack, api_key, {"session_id": "e2e-order", "text": text})
    kinds = [e.event for e in result.events]
    assert kinds[0] == "route" and kinds[-1] == "done"
    assert set(kinds[1:-1]) <= {"token", "sentence"}
    seqs = [int(e.id) for e in result.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] == 0
    assert result.text == _expected(text)
    sentences = [e.data["text"] for e in result.events if e.event == "sentence"]
    assert sentences and "".join(sentences).replace(" ", "") == _expected(text).replace(" ", "")
    done = result.terminal.data
    assert result.route["tier"] == "reasoning" and done["model"] == "gpt-4o"
    # exact cost: gpt-4o at $2.50 / $10.00 per million tokens
    from decimal import Decimal

    usage = done["usage"]
    expected_cost = (Decimal(usage["input_tokens"]) * Decimal("2.50")
                     + Decimal(usage["output_tokens"]) * Decimal("10.00")) / Decimal(1_000_000)
    assert Decimal(done["cost_usd"]) == expected_cost


@pytest.mark.parametrize("fault", ["http_500", "http_429", "hang"])
def test_failover_before_first_token_is_invisible(stack: Stack, api_key: str, fault: str) -> None:
    # Given the fast tier's primary model failing
    _sim_fault(stack, "llama-3.1-8b-instant", fault)
    text = "yes please"
    # When a fast turn runs
    result = _turn(stack, api_key, {"session_id": f"e2e-fail-{fault}", "text": text})
    # Then it completes on the next model of the chain and says so in the attempts
    done = result.terminal
    assert done is not None and done.event == "done", result.events
    assert done.data["model"] == "gpt-4o-mini"
    assert result.text == _expected(text)
    attempts = done.data["attempts"]
    assert [a["model"] for a in attempts] == ["llama-3.1-8b-instant", "gpt-4o-mini"]
    if fault == "hang":
        # the fast tier hedges after 400 ms: the second model wins, the hung call is dropped
        assert attempts[0]["outcome"] == "hedge_lost"
        assert attempts[1]["hedge"] is True
    else:
        assert attempts[0]["outcome"] != "won" and attempts[0]["error_class"]


def test_reconnect_with_last_event_id_gets_the_rest_once(stack: Stack, api_key: str) -> None:
    httpx.post(f"{stack.sim_url}/admin/latency",
               json={"model": "*", "itl_ms": 20, "tokens": 30}, timeout=5).raise_for_status()
    headers = {"authorization": f"Bearer {api_key}"}
    body = {"session_id": "e2e-resume", "text": "tell me about your loyalty program"}

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            first = []
            async with client.stream("POST", f"{stack.ingress_url}/v1/turns", json=body,
                                     headers=headers) as resp:
                async for ev in iter_sse(resp):
                    first.append(ev)
                    if len(first) == 4:
                        break  # the client drops the connection mid-stream
            turn_id = first[0].data["turn_id"]
            rest = []
            async with client.stream(
                "GET", f"{stack.ingress_url}/v1/turns/{turn_id}/events",
                headers={**headers, "last-event-id": first[-1].id},
            ) as resp:
                async for ev in iter_sse(resp):
                    rest.append(ev)
                    if ev.event in ("done", "error"):
                        break
            return first, rest

    first, rest = asyncio.run(go())
    ids = [int(e.id) for e in first + rest]
    assert ids == list(range(len(ids)))  # every event exactly once, in order
    assert rest[-1].event == "done"


def test_client_disconnect_cancels_the_provider_call(stack: Stack, api_key: str) -> None:
    httpx.post(f"{stack.sim_url}/admin/latency",
               json={"model": "*", "itl_ms": 50, "tokens": 200}, timeout=5).raise_for_status()
    headers = {"authorization": f"Bearer {api_key}"}
    body = {"session_id": "e2e-disc", "text": "yes", "stream": True}

    async def go():
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("POST", f"{stack.ingress_url}/v1/turns", json=body,
                          headers=headers) as resp,
        ):
            async for ev in iter_sse(resp):
                if ev.event == "token":
                    break

    asyncio.run(go())
    # the provider call stops long before its 10 s of tokens
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        stats = _stats(stack).get("llama-3.1-8b-instant", {})
        if stats.get("cancelled", 0) + stats.get("failed", 0) >= 1:
            break
        time.sleep(0.1)
    stats = _stats(stack)["llama-3.1-8b-instant"]
    assert stats.get("completed", 0) == 0
    assert stats["output_tokens"] < 200


def test_delete_cancels_a_speculative_turn_quickly(stack: Stack, api_key: str) -> None:
    httpx.post(f"{stack.sim_url}/admin/latency",
               json={"model": "*", "itl_ms": 50, "tokens": 400}, timeout=5).raise_for_status()
    headers = {"authorization": f"Bearer {api_key}"}
    body = {"session_id": "e2e-spec", "text": "sure", "speculative": True}

    async def go():
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("POST", f"{stack.ingress_url}/v1/turns", json=body,
                          headers=headers) as resp,
        ):
            events = []
            async for ev in iter_sse(resp):
                events.append(ev)
                if ev.event == "token" and len(events) == 3:
                    t0 = time.perf_counter()
                    r = await client.delete(
                        f"{stack.ingress_url}/v1/turns/{events[0].data['turn_id']}",
                        headers=headers)
                    assert r.status_code == 202
                if ev.event in ("done", "error"):
                    return events, (time.perf_counter() - t0) * 1000

    events, ms = asyncio.run(go())
    assert events[-1].event == "error" and events[-1].data["code"] == "cancelled"
    assert ms < 500  # the terminal event arrives promptly (the worker stops within ms)


def test_two_hundred_concurrent_turns_complete(stack: Stack, api_key: str) -> None:
    httpx.post(f"{stack.sim_url}/admin/latency",
               json={"model": "*", "ttft_ms": 200, "itl_ms": 5, "tokens": 10},
               timeout=5).raise_for_status()

    async def go():
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(limits=limits) as client:
            return await asyncio.gather(*(
                stream_turn(client, stack.ingress_url, api_key,
                            {"session_id": f"e2e-c{i}", "text": f"yes {i}"}, timeout=60)
                for i in range(200)
            ))

    results = asyncio.run(go())
    done = [r for r in results if r.terminal is not None and r.terminal.event == "done"]
    assert len(done) == 200
    assert len({r.route["turn_id"] for r in results}) == 200


def test_tool_call_turn_and_follow_up(stack: Stack, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{stack.ingress_url}/v1", api_key=api_key)
    tools = [{"type": "function", "function": {
        "name": "lookup_booking", "description": "find a booking",
        "parameters": {"type": "object", "properties": {"reference": {"type": "string"}},
                       "required": ["reference"]}}}]
    messages = [{"role": "user", "content": "can you check my booking reference abc123"}]
    first = client.chat.completions.create(model="auto", messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup_booking"
    assert "reference" in json.loads(call.function.arguments)
    # the follow-up carrying the tool result is answered with text
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"status": "ok"}'}]
    second = client.chat.completions.create(model="auto", messages=messages, tools=tools)
    assert second.choices[0].message.content
    assert second.model == first.model  # routed on the same user turn, so the same tier
