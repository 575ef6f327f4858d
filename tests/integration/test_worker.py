"""The worker end to end: a real worker process, real Redis, the real simulator.

One worker (``python -m workers --tier ...``) runs for the whole module against Redis DB 5
(flushed first) and the session's simulator; every test runs once against each engine:
``native`` (the event loop takes the Celery messages) and ``celery`` (a Celery worker with
the threads pool). Each test plays the
ingress: it writes the turn's ``route`` event (seq 0), sends ``dispatcher.run_turn`` by
name on the tier's queue, and reads the turn's buffer and the ledger stream.

Redis missing: skipped locally, a failure in CI (``CI=true``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from celery import Celery
from helpers import turn_job

from dispatcher.domain import Usage
from dispatcher.policy import Policy, load_policy
from dispatcher.settings import Settings
from dispatcher.sim.answer import (
    answer_tokens,
    argument_fragments,
    count_tokens,
    tool_arguments_json,
)
from dispatcher.streaming import CANCEL_CHANNEL, buffer_key, cancel_key, encode, state_key
from dispatcher.turns import RUN_TURN_TASK
from workers.app import celery_config, visibility_timeout
from workers.ledger import LEDGER_STREAM
from workers.sentences import SentenceSplitter, split_sentences

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("DISPATCHER_TEST_WORKER_REDIS_URL", "redis://127.0.0.1:6379/5")
SYSTEM = "You are a helpful voice agent."
PROMPT = "What are your opening hours tomorrow?"
INPUT_TOKENS = count_tokens(SYSTEM) + count_tokens(PROMPT)
TIERS = ("fast", "hedged", "resort", "ctx", "bulk")

POLICY = """
version: worker-test
providers:
  alpha: {family: openai, base_url: "http://unused.invalid/v1",
          timeouts: {connect_s: 1, first_token_s: 0.5, total_s: 20}}
  beta: {family: anthropic, base_url: "http://unused.invalid",
         timeouts: {connect_s: 1, first_token_s: 3, total_s: 20}}
  gamma: {family: gemini, base_url: "http://unused.invalid",
          timeouts: {connect_s: 1, first_token_s: 3, total_s: 20}}
  delta: {family: openai, base_url: "http://unused.invalid/v1",
          timeouts: {connect_s: 5, first_token_s: 20, total_s: 30}}
models:
  alpha-small: {provider: alpha, price: {input: 0.15, output: 0.60}, context_window: 8000}
  alpha-tiny: {provider: alpha, price: {input: 0.05, output: 0.08}, context_window: 4000}
  beta-mid: {provider: beta, price: {input: 0.80, output: 4.00}, context_window: 200000}
  gamma-big: {provider: gamma, price: {input: 1.25, output: 5.00}, context_window: 1000000}
  delta-bulk: {provider: delta, price: {input: 0.10, output: 0.40}, context_window: 32000}
baseline_model: gamma-big
tiers:
  fast: {models: [alpha-small, beta-mid], max_output_tokens: 256, deadline_ms: 8000}
  hedged: {models: [alpha-small, beta-mid], hedge_ms: 100, deadline_ms: 8000}
  resort: {models: [alpha-small], deadline_ms: 8000, last_resort: {text: "One moment, please."}}
  ctx: {models: [alpha-small, alpha-tiny, gamma-big], deadline_ms: 8000}
  bulk: {models: [delta-bulk], deadline_ms: 30000}
default_tier: fast
"""


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required in CI and not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("worker") / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def policy(policy_file: Path) -> Policy:
    return load_policy(policy_file)


class WorkerProcess:
    """A ``python -m workers`` subprocess whose output is collected in the background."""

    def __init__(self, env: dict[str, str], engine: str) -> None:
        self.engine = engine
        args = [sys.executable, "-m", "workers", "--loglevel", "info", "--engine", engine]
        for tier in TIERS:
            args += ["--tier", tier]
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if " ready." in line:
                self.ready.set()

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module", params=["native", "celery"])
def worker(
    request: pytest.FixtureRequest, redis_url: str, sim_url: str, policy_file: Path
) -> Iterator[WorkerProcess]:
    env = dict(os.environ)
    env.update(
        DISPATCHER_REDIS_URL=redis_url,
        DISPATCHER_SIM_URL=sim_url,
        DISPATCHER_POLICY=str(policy_file),
        PYTHONUNBUFFERED="1",
    )
    proc = WorkerProcess(env, request.param)
    try:
        if not proc.ready.wait(30):
            pytest.fail(f"the worker did not start:\n{proc.output()}")
        yield proc
    finally:
        proc.stop()
    assert "Traceback" not in "\n".join(proc.lines), proc.output()


@pytest.fixture(scope="module")
def producer(redis_url: str) -> Iterator[Celery]:
    # Like the ingress: a bare producer that knows the task only by name and queue.
    app = Celery("ingress-test", broker=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_backend=None)
    yield app
    app.close()


@pytest.fixture(scope="module")
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class Turns:
    """Plays the ingress: writes ``route`` (seq 0), sends the job, reads the events."""

    def __init__(
        self, r: redis.Redis, producer: Celery, policy: Policy, sim: str, http: httpx.Client
    ) -> None:
        self.r, self.producer, self.policy, self.sim, self.http = r, producer, policy, sim, http

    def job(self, tier: str = "fast", prompt: str = PROMPT, **changes: Any) -> dict[str, Any]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        return turn_job(chain=list(self.policy.chain(tier)), messages=messages, tier=tier,
                        policy_version="worker-test", **changes)

    def route(self, job: dict[str, Any]) -> None:
        model = job["chain"][0]
        event = {
            "seq": 0,
            "type": "route",
            "turn_id": job["turn_id"],
            "tier": job["tier"],
            "model": model,
            "provider": self.policy.models[model].provider,
            "rule": job["rule"],
            "confidence": job["confidence"],
        }
        self.r.rpush(buffer_key(job["turn_id"]), encode(event))

    def send(self, job: dict[str, Any], *, route: bool = True) -> str:
        if route:
            self.route(job)
        self.producer.send_task(RUN_TURN_TASK, args=[job], queue=self.policy.queue(job["tier"]))
        return str(job["turn_id"])

    def events(self, turn_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in self.r.lrange(buffer_key(turn_id), 0, -1)]

    def wait(self, turn_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.r.lindex(buffer_key(turn_id), -1)
            if raw is not None and orjson.loads(raw)["type"] in ("done", "error"):
                return self.events(turn_id)
            time.sleep(0.01)
        raise AssertionError(f"turn {turn_id} did not end: {self.events(turn_id)}")

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every sent message was delivered and acked (queues and unacked empty)."""
        queues = [self.policy.queue(t) for t in TIERS]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(self.r.llen(q) for q in queues) and not self.r.hlen("unacked"):
                return
            time.sleep(0.02)
        raise AssertionError("the worker did not ack every message")

    def ledger(self, turn_id: str) -> list[dict[str, Any]]:
        out = []
        for _, fields in self.r.xrange(LEDGER_STREAM):
            event = orjson.loads(fields[b"event"])
            if event["turn_id"] == turn_id:
                out.append(event)
        return out

    def stats(self, model: str) -> dict[str, int]:
        models = self.http.get(f"{self.sim}/admin/stats").json()["models"]
        return models.get(model, {"calls": 0, "cancelled": 0, "completed": 0, "failed": 0})

    def fault(self, model: str, fault: str, retry_after: float | None = None) -> None:
        body: dict[str, Any] = {"model": model, "fault": fault}
        if retry_after is not None:
            body["retry_after"] = retry_after
        self.http.post(f"{self.sim}/admin/faults", json=body).raise_for_status()

    def latency(self, model: str, **fields: float) -> None:
        body = {"model": model, **fields}
        self.http.post(f"{self.sim}/admin/latency", json=body).raise_for_status()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # one client: building one per request costs milliseconds (its TLS context)
    with httpx.Client(timeout=5) as client:
        yield client


@pytest.fixture
def turns(
    worker: WorkerProcess,
    r: redis.Redis,
    producer: Celery,
    policy: Policy,
    sim: str,
    http: httpx.Client,
) -> Turns:
    return Turns(r, producer, policy, sim, http)


# -- helpers --------------------------------------------------------------------------------


def _by_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def _token_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in _by_type(events, "token"))


def _check_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Contiguous seqs from 0, route first, exactly one terminal event, last."""
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "route"
    terminals = [e for e in events if e["type"] in ("done", "error")]
    assert len(terminals) == 1 and terminals[0] is events[-1], events
    return events[-1]


def _answer(prompt: str = PROMPT, tokens: int = 12) -> str:
    return "".join(answer_tokens(prompt, tokens))


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello there. How are you?", ["Hello there.", "How are you?"]),
        ("Call Dr. Smith at 3.5 past. Then rest!", ["Call Dr. Smith at 3.5 past.", "Then rest!"]),
        ("Bring ID, e.g. a passport. Thanks.", ["Bring ID, e.g. a passport.", "Thanks."]),
        (
            'He said "yes." We left. J. R. R. Tolkien wrote',
            ['He said "yes."', "We left.", "J. R. R. Tolkien wrote"],
        ),
        ("Really?! Yes... ok", ["Really?!", "Yes...", "ok"]),
        ("Step one\nStep two", ["Step one", "Step two"]),
    ],
)
def test_sentence_splitter_is_incremental(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences
    splitter = SentenceSplitter()  # fed one character at a time: the same sentences
    fed = [s for ch in text for s in splitter.feed(ch)]
    last = splitter.flush()
    assert [*fed, *([last] if last else [])] == sentences


def test_celery_config_suits_long_turns(policy: Policy, policy_file: Path) -> None:
    longest = max(t.deadline_ms for t in policy.tiers.values()) / 1000
    assert visibility_timeout(policy) >= longest + 300
    conf = celery_config(Settings(redis_url=REDIS_URL, policy=policy_file), policy)
    assert conf["broker_transport_options"]["visibility_timeout"] == visibility_timeout(policy)
    assert [q.name for q in conf["task_queues"]] == [f"turns.{t}" for t in policy.tiers]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_pool"] == "threads"
    assert conf["accept_content"] == ["json"] and conf["task_ignore_result"]
    assert not conf["worker_send_task_events"]


def test_turn_streams_the_answer_and_ends_with_exact_cost(turns: Turns, policy: Policy) -> None:
    # Given the simulator's defaults (12 tokens) / When a fast turn runs
    turn_id = turns.send(turns.job())
    events = turns.wait(turn_id)

    # Then the tokens are the simulator's answer and done carries the exact cost
    done = _check_stream(events)
    assert done["type"] == "done", done
    assert _token_text(events) == done["text"] == _answer()
    usage = Usage(input_tokens=INPUT_TOKENS, output_tokens=12)
    assert done["usage"] == {
        "input_tokens": INPUT_TOKENS,
        "output_tokens": 12,
        "cached_input_tokens": 0,
        "reasoning_tokens": 0,
    }
    assert Decimal(done["cost_usd"]) == policy.models["alpha-small"].cost(usage)
    assert "E" not in done["cost_usd"]
    assert Decimal(done["baseline_cost_usd"]) == policy.baseline_cost(usage)
    assert (done["model"], done["provider"], done["finish_reason"]) == (
        "alpha-small",
        "alpha",
        "stop",
    )
    assert [a["outcome"] for a in done["attempts"]] == ["ok"]
    assert done["ttft_ms"] > 0 and done["total_ms"] >= done["ttft_ms"]

    # And one ledger event with the same figures
    [ledger] = turns.ledger(turn_id)
    assert ledger["status"] == "completed"
    assert ledger["cost_usd"] == done["cost_usd"]
    assert ledger["chain"] == ["alpha-small", "beta-mid"]
    assert ledger["tenant"] == "tenant-1" and ledger["rule"] == "test-rule"
    assert ledger["queue_wait_ms"] >= 0 and ledger["text_chars"] == len(PROMPT)


def test_sentence_events_follow_the_text(turns: Turns) -> None:
    turns.latency("alpha-small", tokens=40)
    events = turns.wait(turns.send(turns.job()))
    assert _check_stream(events)["type"] == "done"
    text = _answer(tokens=40)
    sentences = [e["text"] for e in _by_type(events, "sentence")]
    assert sentences == split_sentences(text) and len(sentences) >= 4
    assert " ".join(sentences) == text
    # each sentence is sent as soon as the tokens that end it are out
    for i, event in enumerate(events):
        if event["type"] == "sentence":
            assert _token_text(events[:i]).rstrip().endswith(event["text"])


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [("http_500", "server_error"), ("http_429", "rate_limited"), ("hang", "timeout")],
)
def test_failover_before_the_first_token_is_invisible(
    turns: Turns, fault: str, error_class: str
) -> None:
    # Given the primary fails (a hang times out after the policy's first_token_s: 0.5)
    turns.fault("alpha-small", fault, retry_after=7)
    events = turns.wait(turns.send(turns.job()))

    # Then the answer comes from the next model, and only the attempts tell
    done = _check_stream(events)
    assert done["type"] == "done", done
    assert (done["model"], done["provider"]) == ("beta-mid", "beta")
    assert _token_text(events) == _answer()
    first, second = done["attempts"]
    assert (first["model"], first["outcome"], first["error_class"]) == (
        "alpha-small",
        "failed",
        error_class,
    )
    assert first["retry_after"] == (7 if fault == "http_429" else None)
    assert (second["model"], second["outcome"]) == ("beta-mid", "ok")


def test_content_filter_is_returned_not_routed_around(turns: Turns) -> None:
    turns.fault("alpha-small", "content_filter")
    turn_id = turns.send(turns.job())
    error = _check_stream(turns.wait(turn_id))
    assert (error["type"], error["code"]) == ("error", "content_filtered")
    assert turns.stats("beta-mid")["calls"] == 0
    assert turns.ledger(turn_id)[0]["status"] == "refused"


def test_bad_request_is_returned_not_routed_around(turns: Turns) -> None:
    job = turns.job()
    job["params"]["messages"] = []  # the provider answers 400
    error = _check_stream(turns.wait(turns.send(job)))
    assert (error["type"], error["code"]) == ("error", "bad_request")
    assert [(a["model"], a["outcome"]) for a in error["attempts"]] == [("alpha-small", "refused")]
    assert turns.stats("beta-mid")["calls"] == 0


def test_tool_call_deltas_pass_through(turns: Turns) -> None:
    schema = {
        "type": "object",
        "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["location", "days"],
    }
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": schema}}
    job = turns.job(prompt="Weather in Paris for two days?")
    job["params"]["tools"] = [tool]
    events = turns.wait(turns.send(job))
    done = _check_stream(events)
    arguments = tool_arguments_json(schema, "Weather in Paris for two days?")
    deltas = _by_type(events, "tool_call")
    assert deltas[0]["name"] == "get_weather" and deltas[0]["id"]
    assert "".join(d["arguments"] for d in deltas) == arguments
    assert done["finish_reason"] == "tool_calls"
    assert done["tool_calls"] == [
        {"id": deltas[0]["id"], "name": "get_weather", "arguments": arguments}
    ]
    assert done["usage"]["output_tokens"] == len(argument_fragments(arguments))


def test_failure_after_the_first_token_is_explicit(turns: Turns) -> None:
    turns.fault("alpha-small", "cut_after:3")
    turn_id = turns.send(turns.job())
    events = turns.wait(turn_id)
    error = _check_stream(events)
    assert (error["type"], error["code"]) == ("error", "provider_failed_mid_stream")
    assert _token_text(events) == "".join(answer_tokens(PROMPT, 12)[:3])
    assert [a["outcome"] for a in error["attempts"]] == ["failed_mid_stream"]
    assert turns.stats("beta-mid")["calls"] == 0
    [ledger] = turns.ledger(turn_id)
    assert ledger["status"] == "failed" and ledger["usage_estimated"] is True


def test_every_model_down(turns: Turns) -> None:
    turns.fault("*", "http_503")
    error = _check_stream(turns.wait(turns.send(turns.job())))
    assert (error["type"], error["code"]) == ("error", "no_provider_available")
    assert [a["model"] for a in error["attempts"]] == ["alpha-small", "beta-mid"]

    # a tier with a last resort answers with its fixed text instead
    events = turns.wait(turns.send(turns.job("resort")))
    done = _check_stream(events)
    assert done["type"] == "done" and done["last_resort"] is True
    assert _token_text(events) == done["text"] == "One moment, please."
    assert [e["text"] for e in _by_type(events, "sentence")] == ["One moment, please."]
    assert done["cost_usd"] == "0"


def test_context_too_long_moves_to_a_larger_window(turns: Turns) -> None:
    turns.fault("alpha-small", "context_too_long")
    done = _check_stream(turns.wait(turns.send(turns.job("ctx"))))
    assert done["type"] == "done" and done["model"] == "gamma-big"
    assert [(a["model"], a["outcome"], a["error_class"]) for a in done["attempts"]] == [
        ("alpha-small", "failed", "context_too_long"),
        ("alpha-tiny", "skipped", "context_too_long"),
        ("gamma-big", "ok", None),
    ]
    assert turns.stats("alpha-tiny")["calls"] == 0


def test_hedge_starts_the_next_model_and_cancels_the_loser(turns: Turns) -> None:
    # Given a primary slow to its first token (1.5 s) on a tier hedged after 100 ms
    turns.fault("alpha-small", "slow_first_token:1500")
    started = time.monotonic()
    events = turns.wait(turns.send(turns.job("hedged")))
    elapsed = time.monotonic() - started

    # Then the hedge answers and the primary's call is closed
    done = _check_stream(events)
    assert done["type"] == "done" and done["model"] == "beta-mid"
    assert elapsed < 1.0
    assert [(a["model"], a["outcome"], a["hedge"]) for a in done["attempts"]] == [
        ("alpha-small", "hedge_lost", False),
        ("beta-mid", "ok", True),
    ]
    _eventually(lambda: turns.stats("alpha-small")["cancelled"] == 1)


def test_cancel_stops_the_provider_call_at_once(turns: Turns) -> None:
    # Given a long answer (200 tokens, 50 ms apart) that has begun to stream
    turns.latency("alpha-small", itl_ms=50, tokens=200)
    turn_id = turns.send(turns.job())
    _eventually(lambda: bool(_by_type(turns.events(turn_id), "token")))

    # When the ingress cancels it
    turns.r.set(cancel_key(turn_id), "1", ex=900)
    t0, sent_at = time.perf_counter(), time.time()
    turns.r.publish(CANCEL_CHANNEL, turn_id)
    _eventually(lambda: turns.stats("alpha-small")["cancelled"] == 1, step=0.002)
    stopped_ms = (time.perf_counter() - t0) * 1000

    # Then the simulator saw the connection close within 100 ms, and the turn ended so
    print(f"\ncancel -> provider connection closed: {stopped_ms:.1f} ms")
    assert stopped_ms < 100
    error = _check_stream(turns.wait(turn_id))
    assert (error["type"], error["code"]) == ("error", "cancelled")
    [ledger] = turns.ledger(turn_id)
    print(f"cancel -> terminal event written: {(ledger['finished_at'] - sent_at) * 1000:.1f} ms")
    assert ledger["status"] == "cancelled" and ledger["usage_estimated"] is True
    assert ledger["usage"]["output_tokens"] > 0 and Decimal(ledger["cost_usd"]) > 0
    assert turns.stats("alpha-small")["completed"] == 0


def test_a_cancel_sent_while_the_cancel_subscription_was_down_still_arrives(
    turns: Turns, worker: WorkerProcess
) -> None:
    # Given a long answer streaming
    turns.latency("alpha-small", itl_ms=50, tokens=200)
    turn_id = turns.send(turns.job())
    _eventually(lambda: bool(_by_type(turns.events(turn_id), "token")))

    # When the worker's cancel subscription is cut and the cancel is published meanwhile
    name = f"dispatcher-cancels-{worker.proc.pid}"
    killed = [c for c in turns.r.client_list() if c.get("name") == name]
    for client in killed:
        turns.r.client_kill_filter(_id=client["id"])
    turns.r.set(cancel_key(turn_id), "1", ex=900)
    turns.r.publish(CANCEL_CHANNEL, turn_id)

    # Then on resubscribing the worker finds the cancel key and stops the turn
    assert killed
    error = _check_stream(turns.wait(turn_id, timeout=5))
    assert (error["type"], error["code"]) == ("error", "cancelled")


def test_turn_cancelled_or_expired_before_pickup_is_skipped(turns: Turns) -> None:
    cancelled = turns.job()
    turns.r.set(cancel_key(cancelled["turn_id"]), "1", ex=900)
    error = _check_stream(turns.wait(turns.send(cancelled)))
    assert error["code"] == "cancelled"

    expired = turns.job(received_at=time.time() - 10, deadline_at=time.time() - 2)
    error = _check_stream(turns.wait(turns.send(expired)))
    assert error["code"] == "deadline_exceeded"
    assert turns.stats("alpha-small")["calls"] == 0


def test_redelivery_does_not_stream_twice(turns: Turns) -> None:
    # Given a turn delivered twice at once, and once more after it ended
    turns.latency("alpha-small", itl_ms=20)
    job = turns.job()
    turns.send(job)
    turns.send(job, route=False)
    events = turns.wait(job["turn_id"])
    turns.send(job, route=False)
    turns.wait_idle()

    # Then one stream, one terminal event, one provider call, one ledger event
    assert _check_stream(turns.events(job["turn_id"]))["type"] == "done"
    assert turns.events(job["turn_id"]) == events
    assert turns.stats("alpha-small")["calls"] == 1
    assert len(turns.ledger(job["turn_id"])) == 1


def test_redelivery_after_the_owner_died(turns: Turns) -> None:
    # Given a dead owner (expired lease) that had already streamed a token
    streamed = turns.job()
    turns.route(streamed)
    token = encode({"seq": 1, "type": "token", "text": "Hi"})
    turns.r.rpush(buffer_key(streamed["turn_id"]), token)
    turns.r.hset(state_key(streamed["turn_id"]), mapping={"owner": "dead", "lease_until": "0"})
    # and a dead owner that had published nothing
    silent = turns.job()
    turns.r.hset(state_key(silent["turn_id"]), mapping={"owner": "dead", "lease_until": "0"})

    turns.send(streamed, route=False)
    turns.send(silent)

    # Then the first ends with worker_lost, not a second answer; the second runs normally
    error = _check_stream(turns.wait(streamed["turn_id"]))
    assert (error["seq"], error["code"]) == (2, "worker_lost")
    assert _check_stream(turns.wait(silent["turn_id"]))["type"] == "done"
    assert turns.stats("alpha-small")["calls"] == 1


def test_delivery_waits_for_a_live_owner_then_takes_over(turns: Turns) -> None:
    # Given another owner whose lease (Redis time) runs out in 1 s, with nothing streamed
    job = turns.job()
    seconds, micros = turns.r.time()
    lease = f"{seconds + micros / 1e6 + 1:.6f}"
    turns.r.hset(state_key(job["turn_id"]), mapping={"owner": "other", "lease_until": lease})
    started = time.monotonic()
    done = _check_stream(turns.wait(turns.send(job)))

    # Then this delivery waited for the lease, then ran the turn once
    assert done["type"] == "done"
    assert time.monotonic() - started >= 0.9
    assert turns.stats("alpha-small")["calls"] == 1


def test_one_worker_process_holds_200_concurrent_turns(turns: Turns) -> None:
    # Given a model 5 s to its first token (room for a slow, shared CI box to take all
    # 200 in), then 10 tokens 5 ms apart
    turns.latency("delta-bulk", ttft_ms=5000, itl_ms=5, tokens=10)
    jobs = [turns.job("bulk", prompt=f"Question number {i}?") for i in range(200)]

    # When 200 turns are sent at once to the one worker process
    started = time.monotonic()
    for job in jobs:
        turns.send(job)
    results = {job["turn_id"]: turns.wait(job["turn_id"], timeout=30) for job in jobs}
    wall = time.monotonic() - started

    # Then all complete with the right answers, and all 200 were in flight together
    for job in jobs:
        done = _check_stream(results[job["turn_id"]])
        assert done["type"] == "done", done
        assert done["text"] == _answer(job["params"]["messages"][-1]["content"], 10)
    ledgers = [turns.ledger(job["turn_id"])[0] for job in jobs]
    peak = _peak_overlap([(e["started_at"], e["finished_at"]) for e in ledgers])
    waits = sorted(e["queue_wait_ms"] for e in ledgers)
    ttfts = sorted(e["ttft_ms"] for e in ledgers)
    print(
        f"\n200 turns at once (5 s to first token): wall {wall:.2f} s, peak in flight {peak}, "
        f"queue wait p50 {waits[100]:.0f} ms max {waits[-1]:.0f} ms, "
        f"ttft p50 {ttfts[100]:.0f} ms max {ttfts[-1]:.0f} ms"
    )
    assert peak == 200
    assert wall < 20


def _peak_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = level = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def _eventually(check: Any, timeout: float = 5.0, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise AssertionError("condition not met in time")


# -- the queue's bookkeeping: what a dead consumer leaves, what cannot be run -----------------


def test_message_left_unacked_by_a_dead_consumer_is_restored_and_run(
    turns: Turns, redis_url: str, policy_file: Path
) -> None:
    import asyncio

    from dispatcher.api.enqueue import TaskMessages
    from workers.app import visibility_timeout
    from workers.consumer import TAKE, UNACKED, UNACKED_INDEX, Consumer
    from workers.resources import Resources

    # Given a turn whose message a consumer took (kombu's unacked record, written by the
    # native engine's own TAKE script) long ago, and then died without acking it
    job = turns.job()
    turns.route(job)
    queue = turns.policy.queue("fast")
    message = TaskMessages().build(
        RUN_TURN_TASK, [job], task_id=job["turn_id"], queue=queue, argsrepr="(...)"
    )
    dead = f"dead-consumer-{uuid.uuid4().hex[:6]}"
    turns.r.lpush(dead, message)
    long_ago = time.time() - visibility_timeout(turns.policy) - 60
    taken = turns.r.eval(TAKE, 3, UNACKED, UNACKED_INDEX, dead, repr(long_ago))
    tag = taken[2].decode()
    assert turns.r.hexists(UNACKED, tag) and turns.events(job["turn_id"])[-1]["type"] == "route"

    # When a consumer looks for messages past the visibility timeout
    async def restore() -> int:
        settings = Settings(redis_url=redis_url, policy=policy_file)
        res = await Resources.open(settings, turns.policy)
        try:
            consumer = Consumer(res, [queue], 1, visibility_timeout(turns.policy))
            return await consumer.restore_visible()
        finally:
            await res.close()

    assert asyncio.run(restore()) == 1

    # Then the message went back to its queue, the running worker ran the turn once, and
    # acked it
    done = _check_stream(turns.wait(job["turn_id"]))
    assert done["type"] == "done" and done["text"] == _answer()
    turns.wait_idle()
    assert not turns.r.hexists(UNACKED, tag)
    assert len(turns.ledger(job["turn_id"])) == 1


def test_undecodable_messages_are_dropped_and_the_worker_goes_on(
    turns: Turns, worker: WorkerProcess
) -> None:
    if worker.engine != "native":
        pytest.skip("Celery's consumer logs a traceback for a message it cannot decode")
    # Given junk on the queue: not JSON, another task's message, a job without its fields
    queue = turns.policy.queue("fast")
    other = turns.job()
    turns.producer.send_task("someone.else", args=[other], queue=queue)
    turns.producer.send_task(RUN_TURN_TASK, args=[{"turn_id": "x"}], queue=queue)
    turns.r.lpush(queue, b"\x00 not json")

    # When a good turn follows
    done = _check_stream(turns.wait(turns.send(turns.job())))

    # Then it runs; the junk was taken off the queue and nothing is left unacked
    assert done["type"] == "done"
    turns.wait_idle()
    assert turns.events(other["turn_id"]) == []
    assert "Traceback" not in worker.output()
