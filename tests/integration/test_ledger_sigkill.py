"""A writer process killed with SIGKILL in the middle of a batch loses and duplicates nothing.

The writer runs as a real subprocess (``python -m dispatcher.ledger.cli ledger-writer``)
against the throwaway Postgres database and Redis DB 7. To kill it *inside* a batch, the
test holds a lock on the roll-up table: the writer inserts its turn rows, then blocks on
the roll-up update with its transaction open and its entries unacknowledged. SIGKILL
there; the database rolls the transaction back; a new writer takes over the pending
entries (XAUTOCLAIM) and writes each turn exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
from helpers import wait_for
from sqlalchemy import Engine, text

from dispatcher.ledger.bench import TurnFactory
from dispatcher.ledger.db import make_engine
from dispatcher.ledger.writer import STREAM
from dispatcher.policy import Policy, load_policy
from dispatcher.settings import DEFAULT_POLICY_PATH

pytestmark = pytest.mark.integration

REDIS_DB_URL = "redis://127.0.0.1:6379/7"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT_POLICY_PATH)


@pytest.fixture
def engine(ledger_pg: str) -> Iterator[Engine]:
    eng = make_engine(ledger_pg)
    yield eng
    eng.dispose()


def start_writer(url: str, redis_url: str, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": url,
        "DISPATCHER_REDIS_URL": redis_url,
        "DISPATCHER_LOG_LEVEL": "WARNING",
    }
    args = [
        sys.executable,
        "-m",
        "dispatcher.ledger.cli",
        "ledger-writer",
        "--batch-size",
        "250",
        "--claim-idle-ms",
        "300",
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def add(r: redis.Redis, events: list[dict[str, Any]]) -> None:
    pipe = r.pipeline(transaction=False)
    for ev in events:
        pipe.xadd(STREAM, {"event": orjson.dumps(ev)})
    pipe.execute()


def assert_exactly_once(engine: Engine, r: redis.Redis, events: list[dict[str, Any]]) -> None:
    assert scalar(engine, "SELECT count(*) FROM ledger_turns") == len(events)
    assert scalar(engine, "SELECT count(DISTINCT turn_id) FROM ledger_turns") == len(events)
    assert scalar(engine, "SELECT sum(turns) FROM ledger_daily") == len(events)
    assert scalar(engine, "SELECT sum(turns) FROM ledger_session_daily") == len(events)
    cost = sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))
    assert scalar(engine, "SELECT sum(cost_usd) FROM ledger_turns") == cost
    assert scalar(engine, "SELECT sum(cost_usd) FROM ledger_daily") == cost
    assert r.xlen(STREAM) == 0
    assert r.xpending(STREAM, "ledger-writer")["pending"] == 0


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"the writer did not finish:\n{err}") from None
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


def test_sigkill_mid_batch_then_restart_loses_and_duplicates_nothing(
    ledger_redis: redis.Redis, ledger_pg: str, engine: Engine, policy: Policy
) -> None:
    events = list(TurnFactory(policy, seed=21, spread_s=600, total=2000).events(2000))
    add(ledger_redis, events)
    # Given a lock that stops any writer half-way through its batch
    blocker = engine.connect()
    blocker.execute(text("LOCK TABLE ledger_daily IN ACCESS EXCLUSIVE MODE"))
    writer = start_writer(ledger_pg, REDIS_DB_URL)
    try:
        # When the writer has inserted its batch's rows and waits, its transaction open
        wait_for(
            lambda: (
                scalar(
                    engine,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'dispatcher-ledger-writer' AND wait_event_type = 'Lock'",
                )
                == 1
            ),
            20,
            "the writer to block inside its batch",
        )
        pending = ledger_redis.xpending(STREAM, "ledger-writer")["pending"]
        assert pending > 0  # read, not acknowledged
        # and it is killed there
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=10)  # reaps it and closes its pipes
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate(timeout=10)
        blocker.rollback()
        blocker.close()
    assert writer.returncode == -signal.SIGKILL
    # Then nothing of that batch was committed, and its entries are still pending
    wait_for(
        lambda: (
            scalar(
                engine,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'dispatcher-ledger-writer'",
            )
            == 0
        ),
        20,
        "the killed writer's connection to go",
    )
    assert scalar(engine, "SELECT count(*) FROM ledger_turns") == 0
    assert ledger_redis.xpending(STREAM, "ledger-writer")["pending"] == pending
    # When a new writer runs until the stream is drained
    finish(start_writer(ledger_pg, REDIS_DB_URL, "--until-idle"))
    # Then every turn has exactly one row, and the roll-ups count each once
    assert_exactly_once(engine, ledger_redis, events)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    ledger_redis: redis.Redis, ledger_pg: str, engine: Engine, policy: Policy
) -> None:
    events = list(TurnFactory(policy, seed=22, spread_s=600, total=6000).events(6000))
    add(ledger_redis, events)
    killed_pending = 0
    for round_ in range(3):
        # Given a writer busy with the backlog
        before = scalar(engine, "SELECT count(*) FROM ledger_turns")
        writer = start_writer(ledger_pg, REDIS_DB_URL)
        try:
            wait_for(
                lambda before=before: scalar(engine, "SELECT count(*) FROM ledger_turns") > before,
                30,
                f"round {round_}: rows",
            )
            time.sleep(0.05 * (round_ + 1))
        finally:
            # When it is killed wherever it is
            writer.send_signal(signal.SIGKILL)
            writer.communicate(timeout=10)  # reaps it and closes its pipes
        killed_pending += ledger_redis.xpending(STREAM, "ledger-writer")["pending"]
    assert killed_pending > 0, "no kill landed inside a batch"
    # Then a writer run to the end writes everything exactly once
    finish(start_writer(ledger_pg, REDIS_DB_URL, "--until-idle"), timeout=120)
    assert_exactly_once(engine, ledger_redis, events)


def test_sigterm_finishes_the_batches_in_hand_and_leaves_nothing_pending(
    ledger_redis: redis.Redis, ledger_pg: str, engine: Engine, policy: Policy
) -> None:
    events = list(TurnFactory(policy, seed=23, spread_s=600, total=4000).events(4000))
    add(ledger_redis, events)
    writer = start_writer(ledger_pg, REDIS_DB_URL)
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM ledger_turns") > 0, 30, "rows")
    writer.send_signal(signal.SIGTERM)
    _out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    # what it read, it wrote and acknowledged; the rest waits in the stream
    written = scalar(engine, "SELECT count(*) FROM ledger_turns")
    assert ledger_redis.xpending(STREAM, "ledger-writer")["pending"] == 0
    assert ledger_redis.xlen(STREAM) == len(events) - written
    finish(start_writer(ledger_pg, REDIS_DB_URL, "--until-idle"))
    assert_exactly_once(engine, ledger_redis, events)


def test_the_writer_refuses_a_database_without_tables(
    ledger_redis: redis.Redis, tmp_path: Any
) -> None:
    writer = start_writer(f"sqlite:///{tmp_path / 'blank.db'}", REDIS_DB_URL, "--until-idle")
    _out, err = writer.communicate(timeout=30)
    assert writer.returncode == 3
    assert "run `dispatcher migrate`" in err
