"""The ingress over real HTTP, with real Redis (DB 6) and the real Celery producer.

The ingress runs in a uvicorn thread (``running_ingress``). No worker exists yet, so the
tests play it: :class:`FakeWorker` takes the Celery message off the Redis list
``turns.<tier>`` (kombu's JSON envelope around a base64 body), and writes the turn's
events with the real ``APPEND_AND_PUBLISH`` script. Clients are httpx (raw SSE) and the
official ``openai`` SDK.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis as sync_redis
import yaml
from helpers import wait_for
from redis.asyncio import Redis as AsyncRedis

from dispatcher import streaming
from dispatcher.api.runtime import Tuning
from dispatcher.api.serve import running_ingress
from dispatcher.auth import create_key
from dispatcher.settings import DEFAULT_POLICY_PATH, Settings
from dispatcher.turns import RUN_TURN_TASK, TurnJob

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/6"
TIERS = ("fast", "standard", "reasoning", "long_context", "quick")
QUEUES = [f"turns.{t}" for t in TIERS]
GRACE_S = 0.6  # disconnect grace in these tests

TROUBLE = "my router keeps dropping the connection after the firmware update, what do I do?"


# --- the worker's part ----------------------------------------------------------------------


def decode_job(raw: bytes) -> tuple[dict[str, Any], TurnJob]:
    """kombu's Redis message -> (headers, TurnJob)."""
    message = json.loads(raw)
    assert message["properties"]["body_encoding"] == "base64"
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert kwargs == {}
    return message["headers"], args[0]


Plan = Callable[["Turn"], None]


@dataclass
class Turn:
    """One job taken off a queue, and the means to answer it."""

    queue: str
    headers: dict[str, Any]
    job: TurnJob
    redis: sync_redis.Redis
    seq: int = 0
    script: Any = field(default=None, repr=False)

    @property
    def turn_id(self) -> str:
        return self.job["turn_id"]

    def _next(self, kind: str, fields: dict[str, Any]) -> bytes:
        self.seq += 1
        return json.dumps({"seq": self.seq, "type": kind, **fields}).encode()

    def emit(self, kind: str, **fields: Any) -> None:
        self.script(
            keys=[streaming.buffer_key(self.turn_id), streaming.channel(self.turn_id)],
            args=[streaming.BUFFER_TTL_S, self._next(kind, fields)],
        )

    def lose(self, kind: str, **fields: Any) -> None:
        """Buffer only: as if pub/sub had dropped the message."""
        self.redis.rpush(streaming.buffer_key(self.turn_id), self._next(kind, fields))

    def done(self, text: str, **fields: Any) -> None:
        model = fields.pop("model", self.job["chain"][0])
        self.emit("done", turn_id=self.turn_id, model=model, provider="sim",
                  usage={"input_tokens": 11, "output_tokens": 3}, cost_usd="0.000012",
                  ttft_ms=5, total_ms=9, attempts=[{"model": model, "outcome": "ok"}],
                  finish_reason=fields.pop("finish_reason", "stop"), text=text, **fields)

    def error(self, code: str, message: str) -> None:
        self.emit("error", turn_id=self.turn_id, code=code, message=message, attempts=[])


def answer(turn: Turn) -> None:
    """The default plan: two tokens, a sentence, done; the first token names the model."""
    model = turn.job["chain"][0]
    turn.emit("token", text="Hello", model=model, provider="sim")
    turn.emit("token", text=" there.")
    turn.emit("sentence", text="Hello there.")
    turn.done("Hello there.")


class FakeWorker:
    """Takes jobs off every tier queue and answers each (in its own thread) by ``plan``."""

    def __init__(self, url: str) -> None:
        self.redis = sync_redis.Redis.from_url(url)
        self.script = self.redis.register_script(streaming.APPEND_AND_PUBLISH)
        self.plan: Plan = answer
        self.turns: list[Turn] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-worker", daemon=True)

    def __enter__(self) -> FakeWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(3)
        self.redis.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self.redis.brpop(QUEUES, timeout=0.2)
            if item is None:
                continue
            headers, job = decode_job(item[1])
            turn = Turn(item[0].decode(), headers, job, self.redis, script=self.script)
            self.turns.append(turn)
            threading.Thread(target=self.plan, args=(turn,), daemon=True).start()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default policy plus a tier ``quick`` whose deadline is 300 ms."""
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["tiers"]["quick"] = {"models": ["gpt-4o-mini"], "deadline_ms": 300}
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def base_url(policy_file: Path) -> Iterator[str]:
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except sync_redis.ConnectionError as exc:
        pytest.fail(f"these tests need Redis at {REDIS_URL}: {exc}")
    finally:
        client.close()
    settings = Settings(redis_url=REDIS_URL, policy=policy_file, max_body_bytes=64 * 1024)
    tuning = Tuning(disconnect_grace_s=GRACE_S, deadline_margin_s=0.3)
    with running_ingress(settings, tuning=tuning) as url:
        yield url


@pytest.fixture
def rdb() -> Iterator[sync_redis.Redis]:
    """Redis DB 6, flushed before the test."""
    client = sync_redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.close()


def _make_key(tenant: str) -> str:
    async def go() -> str:
        client = AsyncRedis.from_url(REDIS_URL)
        try:
            return await create_key(client, tenant)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def api_key(rdb: sync_redis.Redis) -> str:
    return _make_key("acme")


@pytest.fixture
def http(base_url: str, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {api_key}"},
                      timeout=10) as client:
        yield client


@pytest.fixture
def worker(rdb: sync_redis.Redis) -> Iterator[FakeWorker]:
    with FakeWorker(REDIS_URL) as w:
        yield w


@pytest.fixture
def oai(base_url: str, api_key: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0,
                           timeout=10)
    yield client
    client.close()


# --- helpers --------------------------------------------------------------------------------


@dataclass
class SSE:
    id: int | None
    event: str
    data: dict[str, Any]


def parse_sse(lines: Iterator[str], stop_after: int | None = None) -> list[SSE]:
    """Events from SSE lines, until the stream ends (or ``stop_after`` events)."""
    out: list[SSE] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                ident = int(fields["id"]) if "id" in fields else None
                out.append(SSE(ident, fields.get("event", "message"), json.loads(fields["data"])))
                if stop_after is not None and len(out) >= stop_after:
                    return out
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    return out


def take_job(rdb: sync_redis.Redis, timeout: float = 5) -> tuple[str, TurnJob]:
    item = rdb.brpop(QUEUES, timeout=timeout)
    assert item is not None, "no job was enqueued"
    return item[0].decode(), decode_job(item[1])[1]


def queued(rdb: sync_redis.Redis) -> int:
    return sum(int(rdb.llen(q)) for q in QUEUES)


class CancelListener:
    """Subscribed to the cancel channel for the length of a test."""

    def __init__(self) -> None:
        self.client = sync_redis.Redis.from_url(REDIS_URL)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(streaming.CANCEL_CHANNEL)

    def next(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None:
                return str(message["data"].decode())
        return None

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def cancels(rdb: sync_redis.Redis) -> Iterator[CancelListener]:
    listener = CancelListener()
    yield listener
    listener.close()


# --- auth and bad input ---------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_nothing_is_queued(
    base_url: str, rdb: sync_redis.Redis, api_key: str
) -> None:
    body = {"session_id": "s", "text": "hello"}
    for headers in ({}, {"authorization": "Bearer dk_nope"}, {"authorization": "Basic abc"}):
        r = httpx.post(f"{base_url}/v1/turns", json=body, headers=headers)
        assert r.status_code == 401, headers
        assert set(r.json()["error"]) == {"code", "message"}
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "auto", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    assert queued(rdb) == 0


def test_bad_bodies_are_4xx_never_500(http: httpx.Client, rdb: sync_redis.Redis) -> None:
    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_request"),
        (json.dumps({"text": "hi"}).encode(), 422, "session_id"),
        (json.dumps({"session_id": "s"}).encode(), 422, "text"),
        (json.dumps({"session_id": "s", "text": 5}).encode(), 422, "text"),
        (json.dumps({"session_id": "s", "text": "x", "messages": [{"role": "robot"}]}).encode(),
         422, "messages.0.role"),
        (json.dumps({"session_id": "s", "text": "x", "colour": "red"}).encode(), 422, "colour"),
        (json.dumps({"session_id": "s", "text": "x", "tier": "huge"}).encode(), 422, "'huge'"),
    ]
    for content, status, mention in cases:
        r = http.post("/v1/turns", content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, (content, r.text)
        error = r.json()["error"]
        assert mention in error["code"] + error["message"], (content, error)
    assert queued(rdb) == 0


def test_body_over_the_limit_is_413_before_parsing(
    http: httpx.Client, rdb: sync_redis.Redis
) -> None:
    big = b'{"session_id": "s", "text": "' + b"a" * (70 * 1024) + b'"}'
    r = http.post("/v1/turns", content=big)  # with Content-Length
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length, counted as it comes
        yield big[:40_000]
        yield big[40_000:]

    r = http.post("/v1/turns", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = http.post("/v1/chat/completions", content=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert queued(rdb) == 0


def test_unknown_route_and_method_are_json_errors(http: httpx.Client) -> None:
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.put("/v1/turns")
    assert r.status_code == 405 and "message" in r.json()["error"]


# --- /v1/turns ------------------------------------------------------------------------------


def test_streamed_turn_events_in_order_with_ids(
    http: httpx.Client, worker: FakeWorker
) -> None:
    history = [{"role": "assistant", "content": "Shall I book it?"}]
    body = {"session_id": "call-1", "text": "yes please", "messages": history,
            "state": {"last_bot_act": "ask_yes_no"}, "metadata": {"call": 1}}
    with http.stream("POST", "/v1/turns", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.iter_lines())
    assert [e.event for e in events] == ["route", "token", "token", "sentence", "done"]
    assert [e.id for e in events] == [0, 1, 2, 3, 4]
    assert [e.data["seq"] for e in events] == [0, 1, 2, 3, 4]
    route = events[0].data
    assert set(route) >= {"turn_id", "tier", "model", "provider", "rule", "confidence"}
    assert r.headers["x-dispatcher-turn-id"] == route["turn_id"]
    assert r.headers["x-dispatcher-tier"] == route["tier"] == "fast"
    assert events[-1].data["usage"] == {"input_tokens": 11, "output_tokens": 3}

    # The job: the TurnJob contract, sent by task name on the tier's queue.
    (turn,) = worker.turns
    job = turn.job
    assert turn.queue == "turns.fast"
    assert turn.headers["task"] == RUN_TURN_TASK and turn.headers["id"] == route["turn_id"]
    assert "yes please" not in turn.headers["argsrepr"]  # no prompt in Flower or logs
    assert job["turn_id"] == route["turn_id"] and job["tenant"] == "acme"
    assert job["session_id"] == "call-1" and job["tier"] == "fast"
    assert job["chain"][0] == route["model"] and job["rule"] == route["rule"]
    assert job["params"]["messages"] == [*history, {"role": "user", "content": "yes please"}]
    assert job["params"]["max_tokens"] == 256
    assert job["text_chars"] == len("yes please") and len(job["text_sha256"]) == 64
    assert job["deadline_at"] == pytest.approx(job["received_at"] + 8.0)
    assert abs(job["received_at"] - time.time()) < 5
    assert job["speculative"] is False and job["policy_version"]


def test_turn_not_streamed_is_one_json_body(http: httpx.Client, worker: FakeWorker) -> None:
    r = http.post("/v1/turns", json={"session_id": "s", "text": "hi", "stream": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed" and body["text"] == "Hello there."
    assert set(body) >= {"turn_id", "tier", "model", "provider", "rule", "confidence",
                         "usage", "cost_usd", "ttft_ms", "total_ms", "attempts"}
    assert r.headers["x-dispatcher-turn-id"] == body["turn_id"]


def test_turn_error_not_streamed_maps_to_a_status(
    http: httpx.Client, worker: FakeWorker
) -> None:
    worker.plan = lambda t: t.error("no_healthy_provider", "every model of fast is open")
    r = http.post("/v1/turns", json={"session_id": "s", "text": "hi", "stream": False})
    assert r.status_code == 503
    assert r.json()["error"] == {"code": "no_healthy_provider",
                                 "message": "every model of fast is open"}


def test_lost_pubsub_messages_are_recovered_from_the_buffer(
    http: httpx.Client, worker: FakeWorker
) -> None:
    def lossy(turn: Turn) -> None:
        turn.emit("token", text="a")
        turn.lose("token", text="b")  # a gap, filled when "c" arrives
        turn.emit("token", text="c")
        turn.lose("done", turn_id=turn.turn_id, text="abc")  # found when idle

    worker.plan = lossy
    with http.stream("POST", "/v1/turns", json={"session_id": "s", "text": "hi"}) as r:
        events = parse_sse(r.iter_lines())
    assert [e.id for e in events] == [0, 1, 2, 3, 4]
    assert "".join(e.data.get("text", "") for e in events[1:4]) == "abc"
    assert events[-1].event == "done"


def test_last_event_id_resumes_without_loss_or_repeat(
    http: httpx.Client, worker: FakeWorker, rdb: sync_redis.Redis
) -> None:
    go_on = threading.Event()

    def paced(turn: Turn) -> None:
        for i in range(3):
            turn.emit("token", text=f"{i} ")
        go_on.wait(5)
        for i in range(3, 6):
            turn.emit("token", text=f"{i} ")
        turn.done("0 1 2 3 4 5 ")

    worker.plan = paced
    # Given a client that read up to event 2 and lost its connection
    with http.stream("POST", "/v1/turns", json={"session_id": "s", "text": "hi"}) as r:
        first = parse_sse(r.iter_lines(), stop_after=3)
    turn_id = first[0].data["turn_id"]
    assert [e.id for e in first] == [0, 1, 2]
    # When it reconnects with Last-Event-ID: 2 (within the grace) and the turn goes on
    with http.stream("GET", f"/v1/turns/{turn_id}/events",
                     headers={"last-event-id": "2"}) as r:
        assert r.status_code == 200
        go_on.set()
        rest = parse_sse(r.iter_lines())
    # Then it gets 3.. exactly once each, up to the one terminal event
    assert [e.id for e in rest] == [3, 4, 5, 6, 7]
    assert [e.event for e in rest][-1] == "done"
    texts = [e.data["text"] for e in first[1:] + rest[:-1]]
    assert texts == [f"{i} " for i in range(6)]
    # and the resume kept the turn alive: no cancel after the first disconnect
    time.sleep(GRACE_S + 0.2)
    assert rdb.exists(streaming.cancel_key(turn_id)) == 0

    # A POST retried with the same turn_id and Last-Event-ID resumes too (no new job).
    before = len(worker.turns)
    body = {"session_id": "s", "text": "hi", "turn_id": turn_id}
    with http.stream("POST", "/v1/turns", json=body, headers={"last-event-id": "5"}) as r:
        again = parse_sse(r.iter_lines())
    assert [e.id for e in again] == [6, 7]
    assert len(worker.turns) == before
    # Another tenant cannot follow or take the turn.
    other = {"authorization": f"Bearer {_make_key('globex')}"}
    assert http.get(f"/v1/turns/{turn_id}/events", headers=other).status_code == 404
    assert http.post("/v1/turns", json=body, headers=other).status_code == 409


def test_late_subscriber_replays_everything(http: httpx.Client, worker: FakeWorker) -> None:
    r = http.post("/v1/turns", json={"session_id": "s", "text": "hi", "stream": False})
    turn_id = r.json()["turn_id"]
    with http.stream("GET", f"/v1/turns/{turn_id}/events") as r:
        events = parse_sse(r.iter_lines())
    assert [e.id for e in events] == [0, 1, 2, 3, 4]
    assert http.get("/v1/turns/0123456789abcdef/events").status_code == 404
    assert http.get("/v1/turns/bad!id/events").status_code == 404


def test_delete_cancels_the_turn(
    http: httpx.Client, worker: FakeWorker, rdb: sync_redis.Redis, cancels: CancelListener
) -> None:
    cancelled = threading.Event()

    def waits_for_cancel(turn: Turn) -> None:
        turn.emit("token", text="Let me think", model=turn.job["chain"][0])
        wait_for(lambda: turn.redis.exists(streaming.cancel_key(turn.turn_id)))
        cancelled.set()
        turn.error("cancelled", "the caller cancelled the turn")

    worker.plan = waits_for_cancel
    body = {"session_id": "s", "text": "hi", "speculative": True}
    with http.stream("POST", "/v1/turns", json=body) as r:
        lines = r.iter_lines()
        head = parse_sse(lines, stop_after=2)
        turn_id = head[0].data["turn_id"]
        d = http.delete(f"/v1/turns/{turn_id}")
        assert d.status_code == 202 and d.json()["turn_id"] == turn_id
        tail = parse_sse(lines)
    assert cancels.next(2) == turn_id
    assert rdb.ttl(streaming.cancel_key(turn_id)) > 0
    assert cancelled.is_set()
    assert [e.event for e in tail] == ["error"] and tail[0].data["code"] == "cancelled"
    assert worker.turns[0].job["speculative"] is True
    assert http.delete("/v1/turns/0123456789abcdef").status_code == 404


def test_client_disconnect_cancels_its_turn(
    http: httpx.Client, worker: FakeWorker, rdb: sync_redis.Redis, cancels: CancelListener
) -> None:
    worker.plan = lambda t: t.emit("token", text="Thinking", model=t.job["chain"][0])
    with http.stream("POST", "/v1/turns", json={"session_id": "s", "text": "hi"}) as r:
        head = parse_sse(r.iter_lines(), stop_after=2)
    turn_id = head[0].data["turn_id"]
    assert cancels.next(GRACE_S + 2) == turn_id
    assert rdb.exists(streaming.cancel_key(turn_id))


def test_non_streamed_client_disconnect_cancels_at_once(
    base_url: str, api_key: str, worker: FakeWorker, cancels: CancelListener
) -> None:
    worker.plan = lambda t: None  # never answers
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/turns", json={"session_id": "s", "text": "hi",
                                                 "stream": False},
                   headers={"authorization": f"Bearer {api_key}"}, timeout=0.5)
    turn_id = cancels.next(2)
    assert turn_id == worker.turns[0].turn_id


def test_deadline_without_a_terminal_event(
    http: httpx.Client, rdb: sync_redis.Redis, cancels: CancelListener
) -> None:
    # No worker: tier quick's 300 ms deadline (+ the 0.3 s margin) passes.
    with http.stream("POST", "/v1/turns", json={"session_id": "s", "text": "hi",
                                                "tier": "quick"}) as r:
        events = parse_sse(r.iter_lines())
    assert [e.event for e in events] == ["route", "error"]
    assert events[1].data["code"] == "deadline_exceeded" and events[1].id == 1
    turn_id = events[0].data["turn_id"]
    assert cancels.next(1) == turn_id  # the ingress gives up and cancels the turn
    r = http.post("/v1/turns", json={"session_id": "s", "text": "hi", "tier": "quick",
                                     "stream": False})
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"


def test_session_memory_keeps_a_follow_up_on_the_tier_reached(
    http: httpx.Client, worker: FakeWorker
) -> None:
    def route(session: str, text: str) -> dict[str, Any]:
        r = http.post("/v1/turns", json={"session_id": session, "text": text, "stream": False})
        assert r.status_code == 200, r.text
        return dict(r.json())

    assert route("call-9", TROUBLE)["tier"] == "reasoning"
    follow = route("call-9", "ok do that")
    assert (follow["tier"], follow["rule"]) == ("reasoning", "session-follow-up")
    assert route("call-10", "ok do that")["tier"] != "reasoning"  # a fresh session


# --- OpenAI-compatible ----------------------------------------------------------------------


def test_openai_sdk_non_streamed_auto(oai: openai.OpenAI, worker: FakeWorker) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "hello"}],
        max_tokens=50, temperature=0.3, stop=["\n\n"], user="call-7",
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello there."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 14
    job = worker.turns[0].job
    assert completion.model == job["chain"][0]
    assert raw.headers["x-dispatcher-turn-id"] == job["turn_id"]
    assert raw.headers["x-dispatcher-tier"] == job["tier"]
    assert raw.headers["x-dispatcher-model"] == completion.model
    assert job["session_id"] == "call-7"
    params = job["params"]
    assert params["max_tokens"] == 50 and params["temperature"] == 0.3
    assert params["stop"] == ["\n\n"] and params["messages"][0]["role"] == "system"


def test_openai_sdk_streamed_with_usage(oai: openai.OpenAI, worker: FakeWorker) -> None:
    def fails_over(turn: Turn) -> None:
        # the primary failed before its first token: the second model answers
        turn.emit("token", text="Hi", model=turn.job["chain"][1], provider="sim")
        turn.emit("token", text="!")
        turn.done("Hi!", model=turn.job["chain"][1])

    worker.plan = fails_over
    stream = oai.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hey"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    job = worker.turns[0].job
    assert job["tier"] == "fast"
    assert {c.model for c in chunks} == {job["chain"][1]}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hi!"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 11


def test_openai_sdk_forced_model_and_unknown_model(
    oai: openai.OpenAI, worker: FakeWorker, rdb: sync_redis.Redis
) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="claude-3-5-haiku-20241022", messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=20,
    )
    assert raw.parse().model == "claude-3-5-haiku-20241022"
    job = worker.turns[0].job
    assert job["chain"] == ["claude-3-5-haiku-20241022"] and job["rule"] == "model-override"
    assert job["params"]["max_tokens"] == 20
    assert raw.headers["x-dispatcher-model"] == "claude-3-5-haiku-20241022"
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert "gpt-9" in str(err.value) and err.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model="auto", messages=[])
    assert queued(rdb) == 0


def test_openai_sdk_tool_calls_stream_and_follow_up(
    oai: openai.OpenAI, worker: FakeWorker
) -> None:
    def calls_a_tool(turn: Turn) -> None:
        messages = turn.job["params"]["messages"]
        if messages[-1]["role"] == "tool":
            turn.emit("token", text="It is sunny.", model=turn.job["chain"][0])
            turn.done("It is sunny.")
            return
        turn.emit("tool_call", index=0, id="call_1", name="weather", arguments="",
                  model=turn.job["chain"][0])
        turn.emit("tool_call", index=0, arguments='{"city": ')
        turn.emit("tool_call", index=0, arguments='"Paris"}')
        turn.done("", finish_reason="tool_calls")

    worker.plan = calls_a_tool
    tools: list[Any] = [{"type": "function", "function": {
        "name": "weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}]
    question = {"role": "user", "content": "what's the weather in Paris tomorrow?"}
    chunks = list(oai.chat.completions.create(model="auto", messages=[question], tools=tools,
                                              tool_choice="auto", stream=True))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks
              if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].id == "call_1" and deltas[0].function.name == "weather"  # type: ignore[union-attr]
    arguments = "".join(d.function.arguments or "" for d in deltas)  # type: ignore[union-attr]
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    first = worker.turns[0].job
    assert first["params"]["tools"] == tools and first["params"]["tool_choice"] == "auto"

    # The follow-up carries the tool's result last; it routes on the user's question.
    follow = oai.chat.completions.create(model="auto", messages=[
        question,
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"},
    ], tools=tools)
    assert follow.choices[0].message.content == "It is sunny."
    second = worker.turns[1].job
    assert second["tier"] == first["tier"] and second["rule"] == first["rule"]
    assert second["text_sha256"] == first["text_sha256"]
    assert second["params"]["messages"][-1]["role"] == "tool"


def test_openai_sdk_non_streamed_tool_calls(oai: openai.OpenAI, worker: FakeWorker) -> None:
    def calls(turn: Turn) -> None:
        turn.emit("tool_call", index=0, id="call_7", name="lookup", arguments='{"q": 1}',
                  model=turn.job["chain"][0])
        turn.done("", finish_reason="tool_calls")

    worker.plan = calls
    completion = oai.chat.completions.create(
        model="standard", messages=[{"role": "user", "content": "look it up"}],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.id == "call_7" and call.function.arguments == '{"q": 1}'  # type: ignore[union-attr]


def test_openai_sdk_errors_before_and_after_the_first_token(
    oai: openai.OpenAI, worker: FakeWorker
) -> None:
    worker.plan = lambda t: t.error("no_healthy_provider", "all open")
    with pytest.raises(openai.InternalServerError) as err:
        list(oai.chat.completions.create(model="auto", stream=True,
                                         messages=[{"role": "user", "content": "hi"}]))
    assert err.value.status_code == 503 and "all open" in str(err.value)

    def breaks(turn: Turn) -> None:
        turn.emit("token", text="Hel", model=turn.job["chain"][0])
        turn.error("stream_error", "every model failed mid-answer")

    worker.plan = breaks
    stream = oai.chat.completions.create(model="auto", stream=True,
                                         messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIError, match="mid-answer"):
        list(stream)


def test_openai_sdk_lists_models(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert ids[:5] == ["auto", "fast", "standard", "reasoning", "long_context"]
    assert "gpt-4o-mini" in ids and "claude-3-5-haiku-20241022" in ids


# --- probes and metrics ---------------------------------------------------------------------


def test_health_ready_and_metrics(http: httpx.Client, worker: FakeWorker) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"
    http.post("/v1/turns", json={"session_id": "s", "text": "hi", "stream": False})
    text = http.get("/metrics").text
    assert 'dispatcher_turns_total{endpoint="turns",tier="fast"}' in text
    assert "dispatcher_ttft_seconds_bucket" in text
    assert 'dispatcher_relay_events_total{source="pubsub",type="done"}' in text


def test_starts_without_redis_but_is_not_ready(policy_file: Path) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", policy=policy_file)
    with running_ingress(settings, log_level="critical") as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "redis_unreachable"
        r = httpx.post(f"{url}/v1/turns", json={"session_id": "s", "text": "hi"},
                       headers={"authorization": "Bearer dk_x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable"


def test_turn_ids_are_unique(http: httpx.Client, worker: FakeWorker) -> None:
    ids = {http.post("/v1/turns", json={"session_id": "s", "text": "hi",
                                        "stream": False}).json()["turn_id"]
           for _ in range(3)}
    assert len(ids) == 3 and all(uuid.UUID(i) for i in ids)
