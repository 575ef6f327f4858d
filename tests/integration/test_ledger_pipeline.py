"""Turns through the real worker (a Celery process, the simulator) into the ledger.

The test plays the ingress (it sends ``dispatcher.run_turn`` by name, as the ingress does)
against Redis DB 7; a ``python -m workers`` process runs the turns against the simulator
and appends one ledger event per turn; the ledger writer writes them to a throwaway
Postgres database. Postgres is made unavailable while the turns run: the turns still
complete, and once it is back every row appears, once, with costs equal to the tokens
the provider reported times the prices of the policy version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from helpers import refuse_connections, turn_job, wait_for, writer_in_thread
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from dispatcher.ledger import migrate
from dispatcher.ledger.db import make_engine
from dispatcher.ledger.models import Price, Turn
from dispatcher.ledger.repository import priced_cost
from dispatcher.ledger.writer import STREAM, WriterConfig
from dispatcher.policy import load_policy
from dispatcher.streaming import buffer_key, cancel_key
from dispatcher.turns import RUN_TURN_TASK

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/7"
POLICY = """
version: ledger-pipeline-test
providers:
  alpha: {family: openai, base_url: "http://unused.invalid/v1",
          timeouts: {connect_s: 1, first_token_s: 1, total_s: 20}}
  beta: {family: anthropic, base_url: "http://unused.invalid",
         timeouts: {connect_s: 1, first_token_s: 1, total_s: 20}}
models:
  alpha-small: {provider: alpha, price: {input: 0.15, output: 0.60, cached_input: 0.075},
                context_window: 8000}
  beta-mid: {provider: beta, price: {input: 0.80, output: 4.00}, context_window: 200000}
baseline_model: beta-mid
tiers:
  fast: {models: [alpha-small, beta-mid], max_output_tokens: 256, deadline_ms: 8000}
default_tier: fast
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
def worker(
    ledger_redis: redis.Redis, sim_url: str, policy_file: Path
) -> Iterator[subprocess.Popen[str]]:
    env = {
        **os.environ,
        "DISPATCHER_REDIS_URL": REDIS_URL,
        "DISPATCHER_SIM_URL": sim_url,
        "DISPATCHER_POLICY": str(policy_file),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers", "--tier", "fast", "--loglevel", "info"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if " ready." in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(30):
            pytest.fail("the worker did not start:\n" + "".join(lines[-40:]))
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def job(session_id: str, prompt: str, **changes: Any) -> dict[str, Any]:
    return turn_job(chain=["alpha-small", "beta-mid"], tenant="tenant-p",
                    session_id=session_id, messages=[{"role": "user", "content": prompt}],
                    rule="pipeline-rule", policy_version="ledger-pipeline-test", **changes)


def ended(r: redis.Redis, turn_id: str) -> bool:
    raw = r.lindex(buffer_key(turn_id), -1)
    return raw is not None and orjson.loads(raw)["type"] in ("done", "error")


def test_turns_through_the_worker_while_postgres_is_down_each_get_one_exact_row(
    worker: subprocess.Popen[str],
    ledger_redis: redis.Redis,
    ledger_pg_factory: Callable[[], str],
    sim: str,
    policy_file: Path,
) -> None:
    import httpx

    policy = load_policy(policy_file)
    url = ledger_pg_factory()
    migrate.upgrade(url)
    name = make_url(url).database
    admin = make_engine(
        make_url(url).set(database="postgres").render_as_string(False),
        isolation_level="AUTOCOMMIT",
    )
    engine = make_engine(url, writer=True)
    config = WriterConfig(consumer="w", block_ms=50, retry_initial_s=0.05, retry_max_s=0.5)
    producer = Celery("ledger-test-ingress", broker=REDIS_URL, set_as_current=False)
    producer.conf.update(task_serializer="json", accept_content=["json"], result_backend=None)
    sent: list[dict[str, Any]] = []

    def send(j: dict[str, Any]) -> None:
        producer.send_task(RUN_TURN_TASK, args=[j], queue="turns.fast")
        sent.append(j)

    try:
        with writer_in_thread(ledger_redis, engine, config, policy) as writer:
            # Given Postgres refusing connections
            refuse_connections(admin, name)
            # When turns run: answered ones, ones where every model fails, cancelled ones
            for i in range(12):
                send(job(f"call-{i % 3}", f"question number {i} about the opening hours"))
            wait_for(lambda: all(ended(ledger_redis, j["turn_id"]) for j in sent), 30, "answers")
            with httpx.Client(timeout=5) as http:
                http.post(f"{sim}/admin/faults", json={"model": "*", "fault": "http_503"})
                for i in range(3):
                    send(job("call-9", f"this one fails {i}"))
                wait_for(lambda: all(ended(ledger_redis, j["turn_id"]) for j in sent), 30, "fails")
                http.post(f"{sim}/admin/faults", json={"model": "*", "fault": "none"})
            for i in range(3):
                j = job("call-9", f"cancelled before it ran {i}", speculative=True)
                ledger_redis.set(cancel_key(j["turn_id"]), "1", ex=60)
                send(j)
            # Then every turn still completes (the workers never wait on the database)
            wait_for(lambda: all(ended(ledger_redis, j["turn_id"]) for j in sent), 30, "cancels")
            wait_for(lambda: ledger_redis.xlen(STREAM) == len(sent), 10, "the ledger events")
            time.sleep(0.5)
            assert writer.stats.inserted == 0 and writer.stats.db_retries > 0
            # When Postgres is back
            refuse_connections(admin, name, refuse=False)
            wait_for(lambda: ledger_redis.xlen(STREAM) == 0, 30, "the backlog to be written")
    finally:
        producer.close()
        refuse_connections(admin, name, refuse=False)
        engine.dispose()
        admin.dispose()
    # Then exactly one row per turn
    check = make_engine(url)
    with Session(check) as s:
        rows = {t.turn_id: t for t in s.scalars(select(Turn))}
        prices = {
            p.model: p
            for p in s.scalars(select(Price).where(Price.policy_version == "ledger-pipeline-test"))
        }
    check.dispose()
    assert set(rows) == {j["turn_id"] for j in sent}
    assert Counter(t.status for t in rows.values()) == {
        "completed": 12,
        "failed": 3,
        "cancelled": 3,
    }
    # and every cost is the provider's token counts times the policy version's prices
    for t in rows.values():
        if t.model is None:
            assert t.cost_usd == 0
            continue
        price = prices[t.model]
        assert t.cost_usd == priced_cost(
            price, t.input_tokens, t.output_tokens, t.cached_input_tokens, t.reasoning_tokens
        )
        assert t.baseline_cost_usd == priced_cost(
            prices[policy.baseline_model],
            t.input_tokens,
            t.output_tokens,
            t.cached_input_tokens,
            t.reasoning_tokens,
        )
    completed = [t for t in rows.values() if t.status == "completed"]
    assert all(t.output_tokens > 0 and t.ttft_ms and t.model == "alpha-small" for t in completed)
    assert all(t.speculative for t in rows.values() if t.status == "cancelled")
