"""Alembic, configured in code: ``dispatcher migrate`` works from any directory.

The migration scripts live inside the package (``dispatcher/ledger/migrations``), so an
installed dispatcher carries them and finds them by path; no ``alembic.ini`` is needed at
run time. (The ``alembic.ini`` at the repository root points at the same directory, for
developers who run ``alembic revision --autogenerate`` or ``alembic check``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from dispatcher.ledger.db import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None, database_url: str | None = None) -> Config:
    """An Alembic config for the ledger's scripts, bound to a connection or a URL."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url is not None:
        cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _connected(target: str | Engine) -> Iterator[Connection]:
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        if isinstance(target, str):
            engine.dispose()


def upgrade(target: str | Engine, revision: str = "head") -> str | None:
    """Upgrade the database (URL or engine) to ``revision``; return the revision now."""
    with _connected(target) as connection:
        command.upgrade(alembic_config(connection), revision)
        return MigrationContext.configure(connection).get_current_revision()


def downgrade(target: str | Engine, revision: str = "base") -> str | None:
    """Downgrade the database to ``revision`` (``base``: no ledger tables left)."""
    with _connected(target) as connection:
        command.downgrade(alembic_config(connection), revision)
        return MigrationContext.configure(connection).get_current_revision()


def check(target: str | Engine) -> list[Any]:
    """Differences between the models and the migrated schema (empty: none)."""
    from alembic.autogenerate import compare_metadata

    from dispatcher.ledger.models import Base

    with _connected(target) as connection:
        mc = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "include_name": _ledger_tables_only},
        )
        return list(compare_metadata(mc, Base.metadata))


def current(target: str | Engine) -> str | None:
    """The database's revision (None: not migrated)."""
    with _connected(target) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str | None:
    """The newest revision of the scripts."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _ledger_tables_only(name: str | None, type_: str, parent_names: Any) -> bool:
    from dispatcher.ledger.models import Base

    return type_ != "table" or name in Base.metadata.tables
