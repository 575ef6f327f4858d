"""Engines and sessions for the ledger database (Postgres in production, SQLite embedded).

:func:`make_engine` is the only place that knows the backends' quirks:

* Postgres (psycopg 3): ``pool_pre_ping`` so that connections broken by a restart are
  replaced instead of failing the next batch, and a short connect timeout so a database
  that is down is noticed in seconds;
* SQLite: WAL journal and a busy timeout (the writer and readers share the file), the
  ledger's SQL functions (:func:`~dispatcher.ledger.types.install_sqlite_functions`), and
  real transactions: the ``sqlite3`` module's own transaction handling is turned off and
  ``BEGIN`` is emitted when SQLAlchemy begins, so a writer's read-then-write of the
  roll-ups is atomic (``BEGIN IMMEDIATE`` for the writer: it takes the write lock first).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dispatcher.ledger.types import install_sqlite_functions

POSTGRES_CONNECT_TIMEOUT_S = 5


def make_engine(database_url: str, *, writer: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``database_url``; ``writer=True`` makes SQLite take its lock at BEGIN."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connect_args = {"check_same_thread": False, "timeout": 30, **kwargs.pop("connect_args", {})}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if url.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
            install_sqlite_functions(dbapi_connection)

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql(begin)

        return engine
    connect_args = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    if url.get_backend_name() == "postgresql":
        connect_args["application_name"] = (
            "dispatcher-ledger-writer" if writer else ("dispatcher-ledger")
        )
    connect_args.update(kwargs.pop("connect_args", {}))
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, connect_args=connect_args, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded rows usable after commit (the queries return them)."""
    return sessionmaker(engine, expire_on_commit=False)


def redacted(database_url: str) -> str:
    """The URL with its password hidden, for messages."""
    return make_url(database_url).render_as_string(hide_password=True)
