"""Alembic environment of the ledger.

The database comes, in this order, from a connection handed over by the caller
(``config.attributes["connection"]``, as :mod:`dispatcher.ledger.migrate` and the tests do),
from ``sqlalchemy.url`` in the Alembic config, or from the process settings
(``DISPATCHER_DATABASE_URL``), read now, when a migration runs.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection

from dispatcher.ledger.db import make_engine
from dispatcher.ledger.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata
LEDGER_TABLES = frozenset(target_metadata.tables)


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    # other components may keep their own tables in the same database: not ours to judge
    if type_ == "table":
        return name in LEDGER_TABLES
    return True


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        include_name=_include_name,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from dispatcher.settings import get_settings

    return get_settings().database_url


def _run(connection: Connection) -> None:
    # SQLite changes columns by copying tables ("batch" mode); Postgres alters in place
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
