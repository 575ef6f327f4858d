"""A real Celery worker consumes the task message the ingress pushes itself (no send_task).

Redis DB 13; the session's simulator; ``python -m workers --tier fast`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from redis.asyncio import Redis as AsyncRedis

from dispatcher.api.runtime import Enqueuer
from dispatcher.streaming import buffer_key, encode
from dispatcher.turns import RUN_TURN_TASK

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"
QUEUE = "turns.fast"
TEXT = "what time do you close on sundays"


@pytest.fixture(scope="module")
def r(flushed_redis: Callable[[str], redis.Redis]) -> redis.Redis:
    return flushed_redis(REDIS_URL)


def _job() -> dict[str, Any]:
    now = time.time()
    return {
        "turn_id": uuid.uuid4().hex, "tenant": "t", "session_id": "s", "tier": "fast",
        "chain": ["llama-3.1-8b-instant"], "rule": "bench-test", "confidence": 1.0,
        "params": {"messages": [{"role": "user", "content": TEXT}], "max_tokens": 64},
        "received_at": now, "deadline_at": now + 8, "policy_version": "test",
        "speculative": False, "text_chars": len(TEXT),
        "text_sha256": hashlib.sha256(TEXT.encode()).hexdigest(),
    }


def _push(job: dict[str, Any]) -> None:
    async def go() -> None:
        client = AsyncRedis.from_url(REDIS_URL)
        try:
            await client.lpush(QUEUE, Enqueuer().message(job, QUEUE))  # type: ignore[arg-type]
        finally:
            await client.aclose()

    asyncio.run(go())


def test_envelope_matches_what_send_task_pushes(r: redis.Redis) -> None:
    # Given one message from Celery's producer and one from the ingress, on the same queue
    app = Celery("producer", broker=REDIS_URL, set_as_current=False)
    job = _job()
    app.send_task(RUN_TURN_TASK, args=[job], queue="turns.compare", task_id=job["turn_id"],
                  ignore_result=True, argsrepr=f"[turn {job['turn_id']}]", kwargsrepr="{}")
    app.close()

    async def go() -> None:
        client = AsyncRedis.from_url(REDIS_URL)
        try:
            message = Enqueuer().message(job, "turns.compare")  # type: ignore[arg-type]
            await client.lpush("turns.compare", message)
        finally:
            await client.aclose()

    asyncio.run(go())
    ours, theirs = (json.loads(raw) for raw in r.lrange("turns.compare", 0, -1))
    # Then both have the same fields, the same headers and body, and differ only in the
    # per-message and per-producer values
    assert ours.keys() == theirs.keys()
    for msg in (ours, theirs):
        msg["body"] = json.loads(base64.b64decode(msg["body"]))  # same JSON, other spacing
        msg["headers"].pop("origin")
        for key in ("reply_to", "delivery_tag"):
            msg["properties"].pop(key)
    assert ours == theirs


def test_a_real_worker_runs_the_pushed_turn(r: redis.Redis, sim_url: str) -> None:
    env = dict(os.environ, DISPATCHER_REDIS_URL=REDIS_URL, DISPATCHER_SIM_URL=sim_url,
               PYTHONUNBUFFERED="1")
    env.pop("DISPATCHER_POLICY", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--tier", "fast", "--loglevel", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        # Given the route event at seq 0, as the ingress writes it
        job = _job()
        r.rpush(buffer_key(job["turn_id"]),
                encode({"seq": 0, "type": "route", "turn_id": job["turn_id"]}))
        # When the ingress's own message is pushed on the tier's queue
        _push(job)
        # Then the worker streams the turn to its done event and acks the message
        deadline = time.monotonic() + 30
        last: dict[str, Any] = {}
        while time.monotonic() < deadline and worker.poll() is None:
            raw = r.lindex(buffer_key(job["turn_id"]), -1)
            last = orjson.loads(raw) if raw else {}
            if last.get("type") in ("done", "error"):
                break
            time.sleep(0.05)
        assert last.get("type") == "done", last
        assert last["model"] == "llama-3.1-8b-instant"
        events = [orjson.loads(x) for x in r.lrange(buffer_key(job["turn_id"]), 0, -1)]
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert any(e["type"] == "token" for e in events)
        while time.monotonic() < deadline and (r.llen(QUEUE) or r.hlen("unacked")):
            time.sleep(0.05)
        assert r.llen(QUEUE) == 0 and r.hlen("unacked") == 0
    finally:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate(timeout=5)
    assert b"Traceback" not in out, out.decode(errors="replace")[-3000:]
