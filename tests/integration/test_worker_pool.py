"""Native worker processes' lives: a supervised pool, and a warm shutdown.

Real processes against a real Redis (DB 4) and the simulator: each child of
``--processes N`` announces itself with the pool as its parent, a killed child is
replaced, a stop signal stops them all with exit code 0; a stop signal lets a running
turn finish, a second one ends it with ``worker_lost``, and the message is acked.
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
from helpers import turn_job, wait_for

from dispatcher.streaming import buffer_key
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


def _output(proc: subprocess.Popen[bytes]) -> str:
    """Everything ``proc`` printed, once it has exited (killed if it is still running)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    return output


def test_a_pool_keeps_its_processes_and_stops_cleanly(r: redis.Redis, sim_url: str) -> None:
    env = dict(os.environ, DISPATCHER_REDIS_URL=REDIS_URL, DISPATCHER_SIM_URL=sim_url)
    pool = subprocess.Popen(
        [sys.executable, "-m", "workers", "--tier", "fast", "--processes", "2",
         "--loglevel", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        # Given a pool of two: both children announce themselves, the pool as their parent
        first = wait_for(lambda: (c := _children(r, pool.pid)) and len(c) == 2 and c, 20)
        assert all(rec["engine"] == "native" and rec["tiers"] == ["fast"]
                   for rec in first.values())

        # When one child is killed, the pool starts another in its place (the dead one's
        # announcement expires on its own)
        victim, survivor = list(first)
        os.kill(victim, signal.SIGKILL)
        later = wait_for(lambda: (c := _children(r, pool.pid)) and set(c) - set(first) and c,
                         20)
        replacement = (set(later) - set(first)).pop()
        later = {survivor: later[survivor], replacement: later[replacement]}

        # When the pool is told to stop, every child stops and the pool exits with 0
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(30) == 0
        for pid in later:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        output = _output(pool)
    assert "Traceback" not in output, output


def _terminal(r: redis.Redis, turn_id: str, timeout: float = 15.0) -> dict[str, Any]:
    def last() -> dict[str, Any] | None:
        raw = r.lindex(buffer_key(turn_id), -1)
        event = orjson.loads(raw) if raw is not None else None
        return event if event and event["type"] in ("done", "error") else None

    return wait_for(last, timeout)


@pytest.mark.parametrize("signals", [1, 2])
def test_a_stop_signal_lets_running_turns_finish_and_a_second_ends_them(
    r: redis.Redis, sim: str, signals: int
) -> None:
    import httpx

    from dispatcher.api.enqueue import TaskMessages
    from dispatcher.policy import load_policy
    from dispatcher.settings import Settings
    from dispatcher.turns import RUN_TURN_TASK

    policy = load_policy(Settings().policy)
    # Given a worker streaming a slow answer (2 s)
    httpx.post(f"{sim}/admin/latency", json={"model": "*", "ttft_ms": 100, "itl_ms": 100,
                                             "tokens": 20}, timeout=5).raise_for_status()
    env = dict(os.environ, DISPATCHER_REDIS_URL=REDIS_URL, DISPATCHER_SIM_URL=sim)
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--tier", "fast", "--loglevel", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _children_of(r, worker.pid), 20)
        job = turn_job(chain=list(policy.chain("fast")), policy_version=policy.version,
                       messages=[{"role": "user", "content": "What are your hours tomorrow?"}],
                       deadline_s=20)
        message = TaskMessages().build(RUN_TURN_TASK, [job], task_id=job["turn_id"],
                                       queue=policy.queue("fast"), argsrepr="(...)")
        r.lpush(policy.queue("fast"), message)
        wait_for(lambda: r.llen(buffer_key(job["turn_id"])) >= 2, 20)  # streaming has begun

        # When it is told to stop (once, or twice)
        for _ in range(signals):
            worker.send_signal(signal.SIGTERM)
            time.sleep(0.2)

        # Then once: the turn ends normally; twice: it ends now with worker_lost. Either
        # way the message is acked and the process exits with 0.
        terminal = _terminal(r, job["turn_id"])
        if signals == 1:
            assert terminal["type"] == "done" and len(terminal["text"]) > 0
        else:
            assert (terminal["type"], terminal["code"]) == ("error", "worker_lost")
        assert worker.wait(15) == 0
        assert r.hlen("unacked") == 0 and r.llen(policy.queue("fast")) == 0
    finally:
        output = _output(worker)
        httpx.post(f"{sim}/admin/reset", timeout=5)
    assert "Traceback" not in output, output


def _children_of(r: redis.Redis, pid: int) -> bool:
    for key in r.scan_iter(match=WORKER_KEY_PREFIX + "*"):
        raw = r.get(key)
        if raw is not None and orjson.loads(raw)["pid"] == pid:
            return True
    return False


def test_a_worker_started_before_redis_waits_for_it(tmp_path: Any) -> None:
    import shutil
    import socket

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    env = dict(os.environ, DISPATCHER_REDIS_URL=url)
    # Given a worker started while nothing answers at its Redis URL
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--tier", "fast", "--loglevel", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    redis_proc = None
    try:
        time.sleep(1.5)
        assert worker.poll() is None  # still waiting, not crashed
        # When Redis comes up
        redis_proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(url)

        def answering() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(answering, timeout=10)
        # Then the worker connects and announces itself, and stops cleanly when told to
        wait_for(lambda: _children_of(client, worker.pid), timeout=20)
        client.close()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    finally:
        output = _output(worker)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
    assert "is not answering" in output and "Traceback" not in output, output
