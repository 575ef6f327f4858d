"""Ledger tables: turns, prices by policy version, daily and per-session roll-ups.

Revision ID: 0001
Revises:
Create Date: 2024-12-04

Types are spelled out here rather than imported from the models, so that this revision
means the same thing forever: money is NUMERIC on Postgres and decimal text on SQLite
(whose NUMERIC affinity would store binary floats), documents are JSONB on Postgres.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _money() -> sa.types.TypeEngine[Any]:
    return sa.Numeric().with_variant(sa.String(64), "sqlite")


def _doc() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _rollup_metrics(*, hist: bool) -> list[sa.Column[Any]]:
    counts = ("turns", "completed", "failed", "cancelled", "refused", "speculative")
    tokens = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
    money = ("cost_usd", "baseline_cost_usd", "cancelled_speculative_cost_usd")
    return [
        *(sa.Column(name, sa.Integer(), nullable=False) for name in counts),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in tokens),
        *(sa.Column(name, _money(), nullable=False) for name in money),
        sa.Column("ttft_count", sa.Integer(), nullable=False),
        *([sa.Column("ttft_hist", _doc(), nullable=False)] if hist else []),
    ]


def upgrade() -> None:
    op.create_table(
        "ledger_policies",
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("prices_as_of", sa.String(32), nullable=True),
        sa.Column("baseline_model", sa.String(128), nullable=False),
        sa.Column("registered_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_ledger_policies")),
    )
    op.create_table(
        "ledger_prices",
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("input_usd_per_mtok", _money(), nullable=False),
        sa.Column("output_usd_per_mtok", _money(), nullable=False),
        sa.Column("cached_input_usd_per_mtok", _money(), nullable=False),
        sa.Column("reasoning_usd_per_mtok", _money(), nullable=False),
        sa.ForeignKeyConstraint(
            ["policy_version"],
            ["ledger_policies.version"],
            name=op.f("fk_ledger_prices_policy_version_ledger_policies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("policy_version", "model", name=op.f("pk_ledger_prices")),
    )
    op.create_table(
        "ledger_turns",
        sa.Column("turn_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(256), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("received_at", _when(), nullable=False),
        sa.Column("enqueued_at", _when(), nullable=True),
        sa.Column("started_at", _when(), nullable=True),
        sa.Column("first_token_at", _when(), nullable=True),
        sa.Column("finished_at", _when(), nullable=True),
        sa.Column("text_chars", sa.Integer(), nullable=True),
        sa.Column("text_sha256", sa.String(64), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("classifier", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(128), nullable=True),
        sa.Column("tier", sa.String(64), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("chain", _doc(), nullable=False),
        sa.Column("attempts", _doc(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("input_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("output_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("cached_input_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("usage_estimated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("cost_usd", _money(), nullable=False),
        sa.Column("baseline_cost_usd", _money(), nullable=True),
        sa.Column("queue_wait_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("ttft_bucket", sa.SmallInteger(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("speculative", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("last_resort", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("answer_chars", sa.Integer(), nullable=True),
        sa.Column("policy_version", sa.String(64), nullable=True),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("stream_id", sa.String(32), nullable=True),
        sa.Column("event_hash", sa.String(64), nullable=False),
        sa.Column("written_at", _when(), nullable=False),
        sa.CheckConstraint(
            "status IN ('completed', 'failed', 'cancelled', 'refused')",
            name=op.f("ck_ledger_turns_status"),
        ),
        sa.PrimaryKeyConstraint("turn_id", name=op.f("pk_ledger_turns")),
    )
    op.create_index("ix_ledger_turns_received", "ledger_turns", ["received_at"])
    op.create_index("ix_ledger_turns_tenant_received", "ledger_turns", ["tenant", "received_at"])
    op.create_index(
        "ix_ledger_turns_session", "ledger_turns", ["session_id", "tenant", "received_at"]
    )
    op.create_table(
        "ledger_daily",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        *_rollup_metrics(hist=True),
        sa.PrimaryKeyConstraint(
            "tenant", "day", "tier", "provider", "model", "rule", name=op.f("pk_ledger_daily")
        ),
    )
    op.create_table(
        "ledger_session_daily",
        sa.Column("session_id", sa.String(256), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        *_rollup_metrics(hist=False),
        sa.PrimaryKeyConstraint(
            "session_id", "tenant", "day", name=op.f("pk_ledger_session_daily")
        ),
    )


def downgrade() -> None:
    op.drop_table("ledger_session_daily")
    op.drop_table("ledger_daily")
    op.drop_index("ix_ledger_turns_session", table_name="ledger_turns")
    op.drop_index("ix_ledger_turns_tenant_received", table_name="ledger_turns")
    op.drop_index("ix_ledger_turns_received", table_name="ledger_turns")
    op.drop_table("ledger_turns")
    op.drop_table("ledger_prices")
    op.drop_table("ledger_policies")
