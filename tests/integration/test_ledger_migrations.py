"""The ledger's Alembic migrations on Postgres (a throwaway database) and on SQLite.

Each backend: upgrade from empty, the models match the migrated schema (``alembic check``
finds nothing, both through the API and the ``alembic`` command with the repository's
``alembic.ini``), downgrade to empty, upgrade again. ``dispatcher migrate`` works from any
directory because the scripts are found inside the package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Numeric, String, inspect
from sqlalchemy.dialects.postgresql import JSONB

from dispatcher.ledger import migrate
from dispatcher.ledger.db import make_engine
from dispatcher.ledger.models import Base

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LEDGER_TABLES = set(Base.metadata.tables)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(
    request: pytest.FixtureRequest, tmp_path: Path, ledger_pg_factory: Callable[[], str]
) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return ledger_pg_factory()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_check_clean_downgrade_to_empty(empty_url: str) -> None:
    assert not tables(empty_url) & LEDGER_TABLES
    assert migrate.current(empty_url) is None
    # upgrade from empty
    assert migrate.upgrade(empty_url) == migrate.head()
    assert tables(empty_url) >= LEDGER_TABLES
    # the models match the migrated schema
    assert migrate.check(empty_url) == []
    # downgrade to empty (Alembic's own version table stays, with no row)
    assert migrate.downgrade(empty_url) is None
    assert tables(empty_url) - {"alembic_version"} == set()
    # and up again
    assert migrate.upgrade(empty_url) == migrate.head()
    assert migrate.check(empty_url) == []


def test_money_is_exact_and_documents_are_jsonb_where_they_can_be(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        columns = {c["name"]: c for c in inspect(engine).get_columns("ledger_turns")}
        indexes = {
            i["name"]: i["column_names"] for i in inspect(engine).get_indexes("ledger_turns")
        }
        pk = inspect(engine).get_pk_constraint("ledger_turns")["constrained_columns"]
        dialect = engine.dialect.name
    finally:
        engine.dispose()
    assert pk == ["turn_id"]
    assert indexes["ix_ledger_turns_tenant_received"] == ["tenant", "received_at"]
    assert indexes["ix_ledger_turns_session"] == ["session_id", "tenant", "received_at"]
    cost = columns["cost_usd"]["type"]
    if dialect == "postgresql":
        assert isinstance(cost, Numeric) and cost.scale is None  # unbounded: never rounded
        assert isinstance(columns["attempts"]["type"], JSONB)
    else:
        assert isinstance(cost, String)  # decimal text: SQLite NUMERIC would be a float


def test_a_model_change_without_a_migration_is_detected(empty_url: str) -> None:
    # the check is not vacuous: a column the migrations do not know is reported
    from sqlalchemy import Column, MetaData, Table

    migrate.upgrade(empty_url)
    extra = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(extra)
    Table("ledger_turns", extra, Column("surprise", String(8)), extend_existing=True)
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), extra)
    finally:
        engine.dispose()
    assert any(d[0] == "add_column" and d[3].name == "surprise" for d in diffs)


def test_alembic_command_line_check_is_clean(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    env = {**os.environ, "DISPATCHER_DATABASE_URL": empty_url}
    alembic = Path(sys.executable).parent / "alembic"
    result = subprocess.run(
        [str(alembic), "-c", str(REPO / "alembic.ini"), "check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_migrate_works_from_any_directory(tmp_path: Path) -> None:
    # the scripts ship inside the package: no alembic.ini, no repository checkout needed
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    env = {**os.environ, "DISPATCHER_DATABASE_URL": url}
    code = (
        "from dispatcher.ledger.cli import migrate; from dispatcher.settings import get_settings;"
        "print(migrate(get_settings()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == migrate.head()
    assert tables(url) >= LEDGER_TABLES
