"""The publisher's coalescing window, against a real Redis (DB 5's neighbour, DB 6)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher import resp
from dispatcher.streaming import APPEND_AND_PUBLISH, buffer_key
from workers.publish import Publisher

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("DISPATCHER_TEST_PUBLISH_REDIS_URL", "redis://127.0.0.1:6379/6")


@pytest.fixture
async def pipeline() -> AsyncIterator[resp.Pipeline]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError) as exc:
        await client.aclose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is needed at {REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    await client.aclose()
    lean = resp.Pipeline(REDIS_URL)
    yield lean
    await lean.aclose()


class Recorder:
    """The event script, remembering when each flush left."""

    def __init__(self, pipeline: resp.Pipeline) -> None:
        self.script = pipeline.script(APPEND_AND_PUBLISH)
        self.at: list[float] = []

    async def __call__(self, keys: list[str], args: list[object]) -> object:
        self.at.append(time.perf_counter())
        return await self.script(keys=keys, args=args)


async def _events(pipeline: resp.Pipeline, turn_id: str) -> list[dict[str, object]]:
    raws = await pipeline.call("LRANGE", buffer_key(turn_id), 0, -1)
    return [orjson.loads(r) for r in raws]


async def test_tokens_coalesce_within_the_window_but_the_first_and_the_end_do_not_wait(
    pipeline: resp.Pipeline,
) -> None:
    # Given a publisher with a 30 ms window and 30 tokens arriving 2 ms apart
    rec = Recorder(pipeline)
    turn_id = uuid.uuid4().hex
    pub = Publisher(rec, turn_id, 0, interval_s=0.030)
    started = time.perf_counter()
    for i in range(30):
        pub.token(f"t{i} ")
        await asyncio.sleep(0.002)
    closing = time.perf_counter()
    await pub.close("done", turn_id=turn_id)
    closed = time.perf_counter()

    # Then the first token left at once, the rest in a few merged events, the terminal one
    # without waiting for the window; the text and the seqs are whole
    events = await _events(pipeline, turn_id)
    assert rec.at[0] - started < 0.01
    assert 2 <= pub.flushes <= 5
    assert closed - closing < 0.02
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert "".join(str(e["text"]) for e in events if e["type"] == "token") == "".join(
        f"t{i} " for i in range(30))
    assert events[-1]["type"] == "done"
    gaps = [b - a for a, b in zip(rec.at, rec.at[1:-1], strict=False)]
    assert all(g >= 0.029 for g in gaps), gaps


async def test_without_a_window_each_token_flushes_on_its_own(pipeline: resp.Pipeline) -> None:
    rec = Recorder(pipeline)
    turn_id = uuid.uuid4().hex
    pub = Publisher(rec, turn_id, 0, interval_s=0.0)
    for i in range(5):
        pub.token(f"t{i}")
        await asyncio.sleep(0.01)
    await pub.close("done", turn_id=turn_id)
    assert pub.flushes == 6
    assert [e["type"] for e in await _events(pipeline, turn_id)] == ["token"] * 5 + ["done"]


async def test_tokens_pending_when_the_stream_pauses_go_out_when_the_window_ends(
    pipeline: resp.Pipeline,
) -> None:
    # Given a 40 ms window: a first token, a second 5 ms later, then a long pause
    rec = Recorder(pipeline)
    turn_id = uuid.uuid4().hex
    pub = Publisher(rec, turn_id, 0, interval_s=0.040)
    pub.token("a")
    await asyncio.sleep(0.005)
    pub.token("b")
    await asyncio.sleep(0.15)

    # Then the second token went out by itself (the window's timer), ~40 ms after the first
    assert pub.flushes == 2
    assert 0.039 <= rec.at[1] - rec.at[0] <= 0.075
    await pub.close("done", turn_id=turn_id)
    assert [e["type"] for e in await _events(pipeline, turn_id)] == ["token", "token", "done"]
