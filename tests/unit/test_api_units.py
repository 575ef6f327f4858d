"""The ingress's parts: the relay against real Redis, auth, sessions, OpenAI shapes, limits.

The relay tests play the worker with the real :data:`APPEND_AND_PUBLISH` script on Redis
DB 6 (flushed per test), and lose messages on purpose: written to the buffer but never
published, published twice, published while the hub's connection is killed.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import openai.types.chat as oai
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatcher import resp, streaming
from dispatcher.api.deps import last_event_id
from dispatcher.api.errors import ApiError, error_body, turn_error_status
from dispatcher.api.limits import _content_length
from dispatcher.api.openai_compat import ChunkWriter, Collected, answering_model, error_chunk
from dispatcher.api.relay import Event, RelayHub, TurnRelay
from dispatcher.api.runtime import PolicyHolder, Routing
from dispatcher.api.service import (
    TurnInput,
    build_job,
    decide,
    route_event,
    snapshot_from,
    sticky_tier,
)
from dispatcher.auth import KEYS_HASH, create_key, hash_key, list_keys, revoke_key, tenant_for
from dispatcher.domain import Decision, SessionSnapshot
from dispatcher.policy import load_policy
from dispatcher.settings import DEFAULT_POLICY_PATH

REDIS_URL = os.environ.get("DISPATCHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/6")


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """Redis DB 6, flushed; the test fails in CI and is skipped elsewhere without Redis."""
    client = Redis.from_url(REDIS_URL, client_name=f"ingress-test-{uuid.uuid4().hex[:8]}")
    try:
        await client.ping()
    except (RedisConnectionError, OSError) as exc:
        await client.aclose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is needed at {REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def hub(redis: Redis) -> AsyncIterator[RelayHub]:
    h = RelayHub(REDIS_URL)
    await h.start()
    yield h
    await h.stop()


class Worker:
    """Plays the worker: appends events with the real script, or loses them on purpose."""

    def __init__(self, redis: Redis, turn_id: str) -> None:
        self.redis = redis
        self.turn_id = turn_id
        self.script = redis.register_script(streaming.APPEND_AND_PUBLISH)
        self.seq = 0

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"seq": self.seq, "type": kind, **fields}

    async def route(self) -> None:
        """Seq 0, as the ingress writes it: in the buffer, not published."""
        event = {"seq": 0, "type": "route", "turn_id": self.turn_id, "tier": "fast"}
        await self.redis.rpush(streaming.buffer_key(self.turn_id), orjson.dumps(event))

    async def publish(self, *events: dict[str, Any]) -> None:
        await self.script(
            keys=[streaming.buffer_key(self.turn_id), streaming.channel(self.turn_id)],
            args=[streaming.BUFFER_TTL_S, *(orjson.dumps(e) for e in events)],
        )

    async def lose(self, *events: dict[str, Any]) -> None:
        """Into the buffer but never on the channel: a message pub/sub lost."""
        await self.redis.rpush(streaming.buffer_key(self.turn_id),
                               *(orjson.dumps(e) for e in events))

    async def republish(self, event: dict[str, Any]) -> None:
        """The same message on the channel again (a duplicate)."""
        await self.redis.publish(streaming.channel(self.turn_id), orjson.dumps(event))

    def tokens(self, n: int) -> list[dict[str, Any]]:
        return [self.event("token", text=f"t{i}") for i in range(n)]

    def done(self) -> dict[str, Any]:
        return self.event("done", turn_id=self.turn_id, text="x")


async def drain(relay: TurnRelay, timeout: float = 5.0) -> list[Event]:
    out: list[Event] = []

    async def run() -> None:
        async for event in relay:
            if event is not None:
                out.append(event)

    await asyncio.wait_for(run(), timeout)
    return out


def seqs(events: Iterable[Event]) -> list[int]:
    return [e.seq for e in events]


async def started(hub: RelayHub, redis: Redis, **kw: Any) -> tuple[Worker, TurnRelay]:
    turn_id = uuid.uuid4().hex
    sub = await hub.subscribe(turn_id)
    worker = Worker(redis, turn_id)
    await worker.route()
    kw.setdefault("after", 0)
    kw.setdefault("read_first", False)
    return worker, TurnRelay(redis, sub, **kw)


# --- the relay ----------------------------------------------------------------------------


async def test_relay_delivers_live_events_in_order_and_stops_after_done(
    hub: RelayHub, redis: Redis
) -> None:
    worker, relay = await started(hub, redis)
    consumer = asyncio.create_task(drain(relay))
    await worker.publish(*worker.tokens(3))
    await worker.publish(worker.done())
    # a stray event after the terminal one is never delivered
    await worker.publish(worker.event("token", text="late"))
    events = await consumer
    assert seqs(events) == [1, 2, 3, 4]
    assert [e.type for e in events][-1] == "done"
    assert sum(e.terminal for e in events) == 1
    assert {e.source for e in events} == {"pubsub"}
    assert relay.finished


async def test_relay_fills_a_gap_from_the_buffer(hub: RelayHub, redis: Redis) -> None:
    # Given events 2 and 3 reach the buffer but not the channel
    worker, relay = await started(hub, redis)
    consumer = asyncio.create_task(drain(relay))
    t = worker.tokens(5)
    await worker.publish(t[0])
    await worker.lose(t[1], t[2])
    # When event 4 arrives live
    await worker.publish(t[3], t[4], worker.done())
    events = await consumer
    # Then the gap is read from the buffer, before 4, and nothing twice
    assert seqs(events) == [1, 2, 3, 4, 5, 6]
    assert [e.source for e in events[:4]] == ["pubsub", "buffer", "buffer", "buffer"]


async def test_relay_drops_duplicates(hub: RelayHub, redis: Redis) -> None:
    worker, relay = await started(hub, redis)
    consumer = asyncio.create_task(drain(relay))
    t = worker.tokens(2)
    await worker.publish(t[0])
    await worker.republish(t[0])
    await worker.publish(t[1])
    await worker.republish(t[0])
    await worker.republish(t[1])
    done = worker.done()
    await worker.publish(done)
    await worker.republish(done)
    events = await consumer
    assert seqs(events) == [1, 2, 3]


async def test_relay_recovers_a_lost_terminal_event_when_idle(hub: RelayHub, redis: Redis) -> None:
    # Given every message after the first is lost, the terminal one included
    worker, relay = await started(hub, redis, idle_s=0.2)
    consumer = asyncio.create_task(drain(relay))
    await worker.publish(*worker.tokens(1))
    await worker.lose(*worker.tokens(2), worker.done())
    # When nothing more arrives, Then the relay reads the buffer after the idle period
    began = time.monotonic()
    events = await consumer
    assert seqs(events) == [1, 2, 3, 4]
    assert events[-1].type == "done" and events[-1].source == "buffer"
    assert time.monotonic() - began < 2


async def test_relay_catches_events_written_before_it_listened(
    hub: RelayHub, redis: Redis
) -> None:
    # A late subscriber (or Last-Event-ID resume) replays the buffer first, then goes live.
    turn_id = uuid.uuid4().hex
    worker = Worker(redis, turn_id)
    await worker.route()
    t = worker.tokens(4)
    await worker.publish(t[0], t[1], t[2])
    sub = await hub.subscribe(turn_id)
    relay = TurnRelay(redis, sub, after=1, read_first=True)
    consumer = asyncio.create_task(drain(relay))
    await asyncio.sleep(0.05)
    await worker.publish(t[3], worker.done())
    events = await consumer
    assert seqs(events) == [2, 3, 4, 5]
    assert [e.source for e in events] == ["buffer", "buffer", "pubsub", "pubsub"]


async def test_relay_replays_a_finished_turn_from_the_buffer_only(
    hub: RelayHub, redis: Redis
) -> None:
    turn_id = uuid.uuid4().hex
    worker = Worker(redis, turn_id)
    await worker.route()
    await worker.publish(*worker.tokens(2), worker.done())
    relay = TurnRelay(redis, await hub.subscribe(turn_id), after=-1, read_first=True)
    events = await drain(relay, timeout=1)
    assert seqs(events) == [0, 1, 2, 3]
    assert hub.channels == 0  # unsubscribed at the end


async def test_relay_survives_the_hub_losing_its_connection(hub: RelayHub, redis: Redis) -> None:
    # Given a turn being relayed
    worker, relay = await started(hub, redis, idle_s=5.0)
    consumer = asyncio.create_task(drain(relay, timeout=8))
    await worker.publish(*worker.tokens(1))
    await asyncio.sleep(0.05)
    # When the hub's pub/sub connection is killed and events are published meanwhile
    killed = 0
    for client in await redis.client_list():
        if client.get("name") == hub.client_name and "P" in client.get("flags", ""):
            await redis.client_kill_filter(_id=client["id"])
            killed += 1
    assert killed == 1
    await worker.publish(*worker.tokens(2), worker.done())
    # Then the reconnect makes the relay read its buffer: nothing lost, long before idle_s
    began = time.monotonic()
    events = await consumer
    assert seqs(events) == [1, 2, 3, 4]
    assert time.monotonic() - began < 3
    assert hub.reconnects >= 1


async def test_relay_ends_with_deadline_exceeded_and_cancels(hub: RelayHub, redis: Redis) -> None:
    cancelled: list[str] = []

    async def on_deadline(turn_id: str) -> None:
        cancelled.append(turn_id)

    worker, relay = await started(hub, redis, deadline_at=time.time() + 0.2, margin_s=0.1,
                                  idle_s=0.05, on_deadline=on_deadline)
    await worker.publish(*worker.tokens(1))
    events = await drain(relay)
    assert [e.type for e in events] == ["token", "error"]
    assert events[-1].data["code"] == "deadline_exceeded"
    assert events[-1].seq == 2 and events[-1].source == "ingress"
    assert cancelled == [worker.turn_id]


async def test_two_relays_of_one_turn_share_one_subscription(hub: RelayHub, redis: Redis) -> None:
    worker, first = await started(hub, redis)
    second = TurnRelay(redis, await hub.subscribe(worker.turn_id), after=0, read_first=False)
    tasks = [asyncio.create_task(drain(r)) for r in (first, second)]
    numsub = dict(await redis.pubsub_numsub(streaming.channel(worker.turn_id)))
    assert numsub[streaming.channel(worker.turn_id).encode()] == 1
    await worker.publish(*worker.tokens(2), worker.done())
    a, b = await asyncio.gather(*tasks)
    assert seqs(a) == seqs(b) == [1, 2, 3]
    numsub = dict(await redis.pubsub_numsub(streaming.channel(worker.turn_id)))
    assert numsub[streaming.channel(worker.turn_id).encode()] == 0


async def test_closing_a_relay_early_unsubscribes(hub: RelayHub, redis: Redis) -> None:
    worker, relay = await started(hub, redis)
    await worker.publish(*worker.tokens(1))
    iterator = aiter(relay)
    assert (await anext(iterator)) is not None
    await relay.aclose()
    assert hub.channels == 0


# --- auth -----------------------------------------------------------------------------------


async def test_keys_are_stored_hashed_and_can_be_listed_and_revoked(redis: Redis) -> None:
    lean = resp.Pipeline(REDIS_URL)  # the ingress looks keys up over the lean wire
    try:
        key = await create_key(redis, "acme")
        other = await create_key(redis, "globex")
        assert key.startswith("dk_") and key != other
        stored = await redis.hgetall(KEYS_HASH)
        assert key.encode() not in stored and hash_key(key).encode() in stored
        assert await tenant_for(lean, key) == "acme"
        assert await tenant_for(lean, "dk_wrong") is None
        listed = await list_keys(redis)
        assert [(k.tenant, k.key_id) for k in listed] == sorted(
            [("acme", hash_key(key)[:12]), ("globex", hash_key(other)[:12])]
        )
        assert [k.tenant for k in await list_keys(redis, "acme")] == ["acme"]
        assert await revoke_key(redis, hash_key(other)[:12])
        assert await revoke_key(redis, key)
        assert not await revoke_key(redis, key)
        assert await tenant_for(lean, key) is None
    finally:
        await lean.aclose()
    with pytest.raises(ValueError, match="hex digits"):
        await revoke_key(redis, "xyz")
    with pytest.raises(ValueError, match="tenant"):
        await create_key(redis, "no spaces please")


# --- routing and the job ------------------------------------------------------------------


@pytest.fixture(scope="module")
def routing() -> Routing:
    return Routing.from_policy(load_policy(DEFAULT_POLICY_PATH))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ((None, None, None, None), None),
        ((b"3", None, None, None), None),
        ((b"3", b"reasoning", b"3", b"code"), SessionSnapshot("reasoning", 1, "code")),
        ((b"5", b"reasoning", b"3", None), SessionSnapshot("reasoning", 3, None)),
    ],
)
def test_session_snapshot_from_redis(raw: tuple[Any, ...], expected: Any) -> None:
    assert snapshot_from(raw) == expected


@pytest.mark.parametrize(
    ("tier", "rule", "remembered"),
    [
        ("reasoning", "troubleshooting", "reasoning"),
        ("long_context", "summarize-request", "long_context"),
        ("fast", "short-social", ""),
        ("standard", "default", ""),
        # hysteresis does not renew itself
        ("reasoning", "session-follow-up", ""),
        ("reasoning", "session-follow-up+context-fit", ""),
    ],
)
def test_sticky_tier(routing: Routing, tier: str, rule: str, remembered: str) -> None:
    decision = Decision(tier=tier, chain=("gpt-4o",), rule=rule, confidence=0.8)
    assert sticky_tier(routing, decision) == remembered


def _turn(**kw: Any) -> TurnInput:
    base: dict[str, Any] = {
        "tenant": "acme", "endpoint": "turns", "text": "yes", "route_history": [],
        "job_messages": [{"role": "user", "content": "yes"}], "received_at": 1000.0,
    }
    return TurnInput(**{**base, **kw})


def test_decide_honours_forced_tier_and_model(routing: Routing) -> None:
    assert decide(routing, _turn(tier="reasoning"), None).tier == "reasoning"
    forced = decide(routing, _turn(model="claude-3-5-haiku-20241022"), None)
    assert forced.chain == ("claude-3-5-haiku-20241022",) and forced.tier == "standard"
    with pytest.raises(ApiError) as err:
        decide(routing, _turn(tier="huge"), None)
    assert err.value.status == 422 and "'huge'" in err.value.message
    with pytest.raises(ApiError) as err:
        decide(routing, _turn(model="gpt-9"), None)
    assert err.value.status == 404 and "gpt-9" in err.value.message


def test_session_memory_keeps_a_follow_up_on_the_tier_reached(routing: Routing) -> None:
    follow_up = _turn(text="ok do that")
    alone = decide(routing, follow_up, None)
    kept = decide(routing, follow_up, SessionSnapshot("reasoning", 1, "troubleshooting"))
    assert alone.tier != "reasoning"
    assert (kept.tier, kept.rule) == ("reasoning", "session-follow-up")


def test_job_carries_lengths_hash_deadline_and_params(routing: Routing) -> None:
    turn = _turn(text="héllo", params={"temperature": 0.2, "max_tokens": None, "stop": ["x"]})
    decision = decide(routing, turn, None)
    job = build_job(routing, turn, decision, "t" * 16)
    spec = routing.policy.tiers[decision.tier]
    assert job["text_chars"] == 5
    assert len(job["text_sha256"]) == 64
    assert job["deadline_at"] == pytest.approx(1000.0 + spec.deadline_ms / 1000)
    assert job["params"]["max_tokens"] == spec.max_output_tokens
    assert job["params"]["temperature"] == 0.2 and job["params"]["stop"] == ["x"]
    assert "tools" not in job["params"]
    assert job["chain"] == list(decision.chain)
    assert "héllo" not in orjson.dumps({k: v for k, v in job.items() if k != "params"}).decode()
    route = route_event(routing, decision, job["turn_id"])
    assert route["seq"] == 0 and route["provider"] == routing.policy.models[route["model"]].provider


# --- OpenAI shapes ------------------------------------------------------------------------


def _ev(seq: int, kind: str, **data: Any) -> Event:
    body = {"seq": seq, "type": kind, **data}
    return Event(seq, kind, body, orjson.dumps(body), "pubsub")


def _chunk(raw: bytes) -> dict[str, Any]:
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    parsed: dict[str, Any] = orjson.loads(raw[6:-2])
    return parsed


def test_chunks_validate_as_openai_chunks() -> None:
    writer = ChunkWriter("abc123", "gpt-4o-mini", include_usage=True)
    chunks = [
        writer.role(),
        writer.event(_ev(1, "token", text="Hi")),
        writer.event(_ev(2, "tool_call", index=0, id="call_1", name="lookup", arguments="")),
        writer.event(_ev(3, "tool_call", index=0, arguments='{"a":1}')),
    ]
    done = {"usage": {"input_tokens": 7, "output_tokens": 3}}
    chunks += [writer.finish(done), writer.usage(done)]
    parsed = [oai.ChatCompletionChunk.model_validate(_chunk(c)) for c in chunks if c]
    assert all(p.model == "gpt-4o-mini" and p.id == "chatcmpl-abc123" for p in parsed)
    assert parsed[0].choices[0].delta.role == "assistant"
    assert parsed[2].choices[0].delta.tool_calls[0].function.name == "lookup"  # type: ignore[index,union-attr]
    assert parsed[3].choices[0].delta.tool_calls[0].id is None  # type: ignore[index]
    assert parsed[4].choices[0].finish_reason == "tool_calls"
    assert parsed[5].choices == [] and parsed[5].usage.total_tokens == 10  # type: ignore[union-attr]
    assert writer.event(_ev(4, "sentence", text="Hi.")) is None


def test_collected_turn_validates_as_an_openai_completion() -> None:
    collected = Collected(route={"seq": 0, "type": "route", "model": "llama", "tier": "fast"})
    for event in [
        _ev(1, "token", text="Hel", model="gpt-4o-mini"),
        _ev(2, "token", text="lo"),
        _ev(3, "tool_call", index=0, id="call_9", name="f", arguments='{"x"'),
        _ev(4, "tool_call", index=0, arguments=":2}"),
        _ev(5, "done", usage={"input_tokens": 4, "output_tokens": 2}, model="gpt-4o-mini",
            finish_reason="tool_calls", text="Hello", cost_usd="0.001"),
    ]:
        collected.add(event)
    completion = oai.ChatCompletion.model_validate(collected.completion("t1", 123))
    assert completion.model == "gpt-4o-mini"
    message = completion.choices[0].message
    assert message.content == "Hello"
    assert message.tool_calls[0].function.arguments == '{"x":2}'  # type: ignore[index,union-attr]
    assert completion.usage is not None and completion.usage.total_tokens == 6
    body = collected.turn_body()
    assert body["status"] == "completed" and body["text"] == "Hello"
    assert body["tier"] == "fast" and body["model"] == "gpt-4o-mini" and body["cost_usd"] == "0.001"


def test_failed_turn_body_has_the_error() -> None:
    collected = Collected(route={"model": "m", "tier": "fast"})
    collected.add(_ev(1, "error", code="deadline_exceeded", message="too slow", attempts=[]))
    body = collected.turn_body()
    assert collected.failed and body["status"] == "failed"
    assert body["error"] == {"code": "deadline_exceeded", "message": "too slow"}
    assert turn_error_status("deadline_exceeded") == 504
    assert turn_error_status("something_new") == 502


def test_answering_model_prefers_the_first_token_then_failover() -> None:
    assert answering_model([_ev(1, "token", text="a", model="b")], "a") == "b"
    assert answering_model([_ev(1, "failover", to_model="c"), _ev(2, "token", text="x")],
                           "a") == "c"
    assert answering_model([_ev(1, "token", text="x")], "a") == "a"
    assert answering_model([_ev(1, "done", model="d")], "a") == "d"


def test_error_shapes() -> None:
    assert error_body(401, "invalid_api_key", "no", openai=False) == {
        "error": {"code": "invalid_api_key", "message": "no"}
    }
    shaped = error_body(404, "model_not_found", "gone", openai=True, param="model")
    assert shaped == {"error": {"message": "gone", "type": "invalid_request_error",
                                "param": "model", "code": "model_not_found"}}
    assert _chunk(error_chunk({"code": "x", "message": "m"}))["error"]["code"] == "x"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [([], -1), ([(b"content-length", b"12")], 12), ([(b"content-length", b"x")], -2),
     ([(b"content-length", b"-3")], -2)],
)
def test_content_length(headers: list[tuple[bytes, bytes]], expected: int) -> None:
    assert _content_length({"headers": headers}) == expected


class _Req:
    def __init__(self, value: str | None) -> None:
        self.headers = {} if value is None else {"last-event-id": value}


@pytest.mark.parametrize(("value", "expected"), [(None, -1), ("", -1), ("7", 7), (" 3 ", 3)])
def test_last_event_id(value: str | None, expected: int) -> None:
    assert last_event_id(_Req(value)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["abc", "1.5", "-5"])
def test_bad_last_event_id_is_400(value: str) -> None:
    with pytest.raises(ApiError) as err:
        last_event_id(_Req(value))  # type: ignore[arg-type]
    assert err.value.status == 400


# --- policy reload ------------------------------------------------------------------------


def test_policy_reload_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    text = DEFAULT_POLICY_PATH.read_text()
    path.write_text(text)
    holder = PolicyHolder(path)
    first = holder.current
    path.write_text(text.replace("default_tier: standard", "default_tier: nowhere"))
    assert not holder.reload()
    assert holder.current is first and "nowhere" in (holder.last_error or "")
    path.write_text(text.replace("deadline_ms: 8000", "deadline_ms: 7000"))
    assert holder.reload()
    assert holder.current.policy.tiers["fast"].deadline_ms == 7000 and holder.last_error is None
