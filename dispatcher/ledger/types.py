"""Column types that keep money exact and times in UTC on both Postgres and SQLite.

* :class:`Money`: ``NUMERIC`` (no precision limit, so nothing is ever rounded) on
  Postgres; ``VARCHAR`` holding the decimal's text on SQLite, whose ``NUMERIC`` affinity
  would turn it into a binary float. Python always sees :class:`~decimal.Decimal`.
* :class:`UTCDateTime`: ``TIMESTAMP WITH TIME ZONE`` on Postgres; on SQLite (which keeps
  naive text) values are stored in UTC and come back timezone-aware.
* :data:`JSONDoc`: ``JSONB`` on Postgres, ``JSON`` (text) elsewhere.

SQLite cannot add decimals held as text, so :func:`money_sum` compiles to ``sum()`` on
Postgres and to ``ledger_decimal_sum()`` on SQLite, an aggregate that
:func:`install_sqlite_functions` registers on the connection (the ledger's engines do it on
connect; :mod:`dispatcher.ledger.queries` makes sure again before it aggregates).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Numeric, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import TypeDecorator, TypeEngine

SQLITE_MONEY_LENGTH = 64

JSONDoc = JSON().with_variant(JSONB(), "postgresql")


class Money(TypeDecorator[Decimal]):
    """An exact USD amount: NUMERIC on Postgres, decimal text on SQLite."""

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(SQLITE_MONEY_LENGTH))
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = value if isinstance(value, Decimal) else to_decimal(value)
        if dialect.name == "sqlite":
            return format(amount, "f")
        return amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else to_decimal(value)

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and always returned timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def python_type(self) -> type[datetime]:
        return datetime


def to_decimal(value: Any) -> Decimal:
    """An exact Decimal from a Decimal, int or decimal text; a float goes through its repr.

    ``repr`` of a float is the shortest text that reads back as the same float, so a JSON
    number such as ``0.000123`` becomes ``Decimal("0.000123")``, not the binary expansion.
    """
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError(f"not an amount: {value!r}")
    try:
        if isinstance(value, int | str):
            return Decimal(value)
        if isinstance(value, float):
            return Decimal(repr(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal amount") from None
    raise TypeError(f"not an amount: {value!r}")


class money_sum(GenericFunction[Decimal]):
    """``SUM`` of a :class:`Money` column that stays exact on every backend."""

    type = Money()
    inherit_cache = True
    name = "money_sum"


@compiles(money_sum)
def _money_sum_default(element: money_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(money_sum, "sqlite")
def _money_sum_sqlite(element: money_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"ledger_decimal_sum({compiler.process(element.clauses, **kw)})"


class _DecimalSum:
    """SQLite aggregate: exact sum of decimal texts, returned as text (NULL for no rows)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        if value is None:
            return
        amount = to_decimal(value)
        self.total = amount if self.total is None else self.total + amount

    def finalize(self) -> str | None:
        return None if self.total is None else format(self.total, "f")


def install_sqlite_functions(dbapi_connection: Any) -> None:
    """Register the ledger's SQL functions on a raw ``sqlite3`` connection (idempotent)."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.create_aggregate("ledger_decimal_sum", 1, _DecimalSum)  # type: ignore[arg-type]
