"""Fixtures shared by every test suite.

The provider simulator runs once per session in a background thread (a real uvicorn
server on a free loopback port); ``sim`` resets it before the test that asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from dispatcher.sim.server import running_sim
from dispatcher.sim.state import SimDefaults

#: Fast simulator defaults: 5 ms to the first token, 1 ms between tokens, 12 tokens.
SIM_TEST_DEFAULTS = SimDefaults(ttft_ms=5, itl_ms=1, tokens=12)


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """Base URL ("http://127.0.0.1:PORT") of the session's simulator; its state is shared."""
    with running_sim(SIM_TEST_DEFAULTS) as url:
        yield url


@pytest.fixture
def sim(sim_url: str) -> str:
    """Base URL of the simulator, reset (no faults, default latency, zero stats) first."""
    httpx.post(f"{sim_url}/admin/reset", timeout=5).raise_for_status()
    return sim_url


# -- ledger: a throwaway Postgres database per test session, Redis DB 7 -----------------------
# Postgres or Redis missing: the ledger's integration tests are skipped locally and fail in
# CI (``CI=true``). (Imported here, not at the top: this section is appended to the file.)

import os  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import redis  # noqa: E402

LEDGER_PG_SERVER = os.environ.get(
    "DISPATCHER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
LEDGER_REDIS_URL = os.environ.get("DISPATCHER_TEST_LEDGER_REDIS_URL", "redis://127.0.0.1:6379/7")


def _ledger_unavailable(what: str, exc: BaseException) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required in CI and is not reachable: {exc}")
    pytest.skip(f"{what} not reachable: {exc}")


@pytest.fixture(scope="session")
def ledger_pg_factory() -> Iterator[Callable[[], str]]:
    """Makes throwaway Postgres databases (unique names); all are dropped at the end."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(LEDGER_PG_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        _ledger_unavailable(f"Postgres at {LEDGER_PG_SERVER}", exc)
    made: list[str] = []

    def make() -> str:
        name = f"ledger_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return make_url(LEDGER_PG_SERVER).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def ledger_pg_url(ledger_pg_factory: Callable[[], str]) -> str:
    """A throwaway Postgres database of this test session, migrated to head."""
    from dispatcher.ledger import migrate

    url = ledger_pg_factory()
    migrate.upgrade(url)
    return url


@pytest.fixture
def ledger_pg(ledger_pg_url: str) -> str:
    """The session's ledger database, emptied (turns, roll-ups, prices) for this test."""
    from sqlalchemy import text

    from dispatcher.ledger.db import make_engine

    engine = make_engine(ledger_pg_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE ledger_turns, ledger_daily, ledger_session_daily, ledger_prices, "
                "ledger_policies"
            )
        )
    engine.dispose()
    return ledger_pg_url


@pytest.fixture
def ledger_sqlite(tmp_path: Path) -> str:
    """A fresh SQLite ledger file, migrated to head."""
    from dispatcher.ledger import migrate

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty ledger database: each test runs on SQLite and on Postgres."""
    name = "ledger_sqlite" if request.param == "sqlite" else "ledger_pg"
    return str(request.getfixturevalue(name))


@pytest.fixture
def ledger_redis() -> Iterator[redis.Redis]:
    """Redis DB 7, flushed before and after the test."""
    client = redis.Redis.from_url(LEDGER_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _ledger_unavailable(f"Redis at {LEDGER_REDIS_URL}", exc)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def flushed_redis() -> Iterator[Callable[[str], redis.Redis]]:
    """Opens a Redis database by URL, flushed first; each is flushed and closed at the end.

    Unreachable: the test is skipped locally and fails in CI (``CI=true``).
    """
    opened: list[redis.Redis] = []

    def open_db(url: str) -> redis.Redis:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"Redis is required in CI and not reachable at {url}: {exc}")
            pytest.skip(f"Redis not reachable at {url}: {exc}")
        client.flushdb()
        opened.append(client)
        return client

    yield open_db
    for client in opened:
        client.flushdb()
        client.close()
