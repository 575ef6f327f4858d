"""The ledger's tables (SQLAlchemy 2 typed ORM). Alembic creates and changes them.

::

    ledger_policies  1 ─── n  ledger_prices          one row per (policy version, model)
          ┆ version                ┆ (policy_version, model)
          ┆                        ┆   looked up, never copied, by
    ledger_turns ┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┘ (policy_version, model)
          │ one row per turn, keyed by turn_id
          ├──> ledger_daily          roll-up per (tenant, UTC day, tier, provider, model, rule)
          └──> ledger_session_daily  roll-up per (tenant, UTC day, session)

The reference from a turn to its prices is logical, not a foreign key: a turn must be
recorded even when its policy version was never registered (a worker on a newer policy
than the writer), and a row refused for that would be a lost turn.

The roll-ups hold, per key, counts, token sums and exact money sums; the daily one also a
histogram of time to first token (``{bucket: count}``, see :mod:`dispatcher.ledger.rollup`).
The writer keeps them in step with ``ledger_turns`` in the same transaction, subtracting a
row's old contribution when an event rewrites it, so redelivery never counts a turn twice.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dispatcher.domain import TurnStatus
from dispatcher.ledger.types import JSONDoc, Money, UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATUSES = tuple(s.value for s in TurnStatus)
_STATUS_SQL = ", ".join(f"'{s}'" for s in STATUSES)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class PolicyVersion(Base):
    """A policy version whose prices the ledger knows."""

    __tablename__ = "ledger_policies"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    prices_as_of: Mapped[str | None] = mapped_column(String(32))
    baseline_model: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Price(Base):
    """USD per million tokens of one model under one policy version."""

    __tablename__ = "ledger_prices"

    policy_version: Mapped[str] = mapped_column(
        String(64), ForeignKey("ledger_policies.version", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    input_usd_per_mtok: Mapped[Decimal] = mapped_column(Money())
    output_usd_per_mtok: Mapped[Decimal] = mapped_column(Money())
    cached_input_usd_per_mtok: Mapped[Decimal] = mapped_column(Money())
    reasoning_usd_per_mtok: Mapped[Decimal] = mapped_column(Money())


class Turn(Base):
    """One turn: its decision, every attempt, its usage, cost and times."""

    __tablename__ = "ledger_turns"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_SQL})", name="status"),
        # every query names a tenant and a time window, or a session (and its tenant, but
        # operators on the command line may not): session ids lead, they are selective
        Index("ix_ledger_turns_tenant_received", "tenant", "received_at"),
        Index("ix_ledger_turns_session", "session_id", "tenant", "received_at"),
        # `ledger export --since` and `ledger turns` across tenants (operators)
        Index("ix_ledger_turns_received", "received_at"),
    )

    turn_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(String(256))
    #: UTC day of ``received_at``: the roll-ups' day
    day: Mapped[date] = mapped_column(Date)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_token_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    text_chars: Mapped[int | None] = mapped_column(Integer)
    text_sha256: Mapped[str | None] = mapped_column(String(64))
    #: only when the policy asks to keep text
    text: Mapped[str | None] = mapped_column(Text)
    classifier: Mapped[str | None] = mapped_column(String(64))
    rule: Mapped[str | None] = mapped_column(String(128))
    tier: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    chain: Mapped[list[str]] = mapped_column(JSONDoc)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc)
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    input_tokens: Mapped[int] = mapped_column(Integer, server_default=sql_text("0"))
    output_tokens: Mapped[int] = mapped_column(Integer, server_default=sql_text("0"))
    cached_input_tokens: Mapped[int] = mapped_column(Integer, server_default=sql_text("0"))
    reasoning_tokens: Mapped[int] = mapped_column(Integer, server_default=sql_text("0"))
    #: the provider's count never came (a cancelled or cut stream): estimated by the worker
    usage_estimated: Mapped[bool] = mapped_column(Boolean, server_default=sql_text("false"))
    cost_usd: Mapped[Decimal] = mapped_column(Money())
    baseline_cost_usd: Mapped[Decimal | None] = mapped_column(Money())
    queue_wait_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    #: histogram bucket of ``ttft_ms`` (see :mod:`dispatcher.ledger.rollup`)
    ttft_bucket: Mapped[int | None] = mapped_column(SmallInteger)
    total_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    speculative: Mapped[bool] = mapped_column(Boolean, server_default=sql_text("false"))
    last_resort: Mapped[bool] = mapped_column(Boolean, server_default=sql_text("false"))
    answer_chars: Mapped[int | None] = mapped_column(Integer)
    policy_version: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(128))
    #: the Redis stream entry that wrote this version of the row
    stream_id: Mapped[str | None] = mapped_column(String(32))
    #: sha256 of the row's content: a redelivered identical event writes nothing
    event_hash: Mapped[str] = mapped_column(String(64))
    written_at: Mapped[datetime] = mapped_column(UTCDateTime())


class _RollupMetrics:
    """Columns shared by both roll-ups; every one is a sum."""

    turns: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    cancelled: Mapped[int] = mapped_column(Integer)
    refused: Mapped[int] = mapped_column(Integer)
    speculative: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal] = mapped_column(Money())
    baseline_cost_usd: Mapped[Decimal] = mapped_column(Money())
    cancelled_speculative_cost_usd: Mapped[Decimal] = mapped_column(Money())
    ttft_count: Mapped[int] = mapped_column(Integer)


class DailyRollup(_RollupMetrics, Base):
    """Sums per tenant, UTC day, tier, provider, model and rule ('' when a turn had none),
    and the histogram of time to first token (``{bucket: count}``)."""

    __tablename__ = "ledger_daily"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tier: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    rule: Mapped[str] = mapped_column(String(128), primary_key=True)
    ttft_hist: Mapped[dict[str, int]] = mapped_column(JSONDoc)


class SessionDailyRollup(_RollupMetrics, Base):
    """Sums per tenant, session and UTC day (``group_by=session`` without a table scan).

    No histogram: the percentiles of the sessions a summary shows are read exactly from
    their turns (an index range each), which is cheaper than merging a histogram into
    every session row on every batch.
    """

    __tablename__ = "ledger_session_daily"

    # (session, tenant, day): the top sessions' details are read by session id
    session_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
