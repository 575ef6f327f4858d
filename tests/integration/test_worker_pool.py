"""``python -m workers --processes N``: a supervised pool of native worker processes.

Real processes against a real Redis (DB 4): each child announces itself with the pool as
its parent, a killed child is replaced, a stop signal stops them all with exit code 0,
and turns sent to the queue are shared by the children.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from workers.resources import WORKER_KEY_PREFIX

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("DISPATCHER_TEST_POOL_REDIS_URL", "redis://127.0.0.1:6379/4")


@pytest.fixture
def r(flushed_redis: Callable[[str], redis.Redis]) -> redis.Redis:
    return flushed_redis(REDIS_URL)


def _children(r: redis.Redis, pool_pid: int) -> dict[int, dict[str, Any]]:
    out = {}
    for key in r.scan_iter(match=WORKER_KEY_PREFIX + "*"):
        raw = r.get(key)
        if raw is not None:
            record = orjson.loads(raw)
            if record["ppid"] == pool_pid:
                out[record["pid"]] = record
    return out


def _wait(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_a_pool_keeps_its_processes_and_stops_cleanly(r: redis.Redis, sim_url: str) -> None:
    env = dict(os.environ, DISPATCHER_REDIS_URL=REDIS_URL, DISPATCHER_SIM_URL=sim_url)
    pool = subprocess.Popen(
        [sys.executable, "-m", "workers", "--tier", "fast", "--processes", "2",
         "--loglevel", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        # Given a pool of two: both children announce themselves, the pool as their parent
        first = _wait(lambda: (c := _children(r, pool.pid)) and len(c) == 2 and c)
        assert all(rec["engine"] == "native" and rec["tiers"] == ["fast"]
                   for rec in first.values())

        # When one child is killed, the pool starts another in its place (the dead one's
        # announcement expires on its own)
        victim, survivor = list(first)
        os.kill(victim, signal.SIGKILL)
        later = _wait(lambda: (c := _children(r, pool.pid)) and set(c) - set(first) and c)
        replacement = (set(later) - set(first)).pop()
        later = {survivor: later[survivor], replacement: later[replacement]}

        # When the pool is told to stop, every child stops and the pool exits with 0
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(30) == 0
        for pid in later:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if pool.poll() is None:
            pool.kill()
            pool.wait(10)
        assert pool.stdout is not None
        output = pool.stdout.read().decode(errors="replace")
        pool.stdout.close()
    assert "Traceback" not in output, output
