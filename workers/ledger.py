"""The ledger event a worker appends after a turn's terminal event (DESIGN §6).

Workers never write Postgres: they ``XADD`` one entry per turn execution to the durable
stream :data:`LEDGER_STREAM`, field ``event`` holding the JSON below, and the ledger
writer inserts rows in batches, idempotently by ``turn_id``. Money is a string of the
exact Decimal (never a float); times are epoch seconds; durations are milliseconds from
the turn's arrival at the ingress (``received_at``), so ``ttft_ms`` is what the caller
waited, queue included.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import orjson

from dispatcher.domain import TurnStatus, Usage
from dispatcher.streaming import PREFIX
from dispatcher.turns import TurnJob

LEDGER_STREAM = f"{PREFIX}:ledger"
LEDGER_FIELD = "event"
#: bump when a field changes meaning; the writer may accept several versions
LEDGER_SCHEMA = 1

#: terminal error code -> turn status
_STATUS_OF_ERROR = {
    "cancelled": TurnStatus.CANCELLED,
    "content_filtered": TurnStatus.REFUSED,
}


def money(value: Decimal) -> str:
    """An exact Decimal as plain digits (``format(.., "f")``: never ``"5E-8"``)."""
    return format(value, "f")


def usage_dict(usage: Usage) -> dict[str, int]:
    return dataclasses.asdict(usage)


def status_of(terminal: str, code: str | None) -> TurnStatus:
    if terminal == "done":
        return TurnStatus.COMPLETED
    return _STATUS_OF_ERROR.get(code or "", TurnStatus.FAILED)


def _ms(later: float | None, earlier: float) -> float | None:
    return None if later is None else round((later - earlier) * 1000, 1)


def ledger_event(
    job: TurnJob,
    *,
    terminal: str,
    code: str | None,
    chain: list[str],
    attempts: list[dict[str, Any]],
    provider: str | None,
    model: str | None,
    usage: Usage,
    usage_estimated: bool,
    cost: Decimal,
    baseline_cost: Decimal,
    started_at: float,
    first_token_at: float | None,
    finished_at: float,
    finish_reason: str | None,
    answer_chars: int,
    last_resort: bool,
    worker: str,
) -> dict[str, Any]:
    """Everything the ledger keeps about one turn execution (no prompt, no answer text)."""
    received = job["received_at"]
    return {
        "schema": LEDGER_SCHEMA,
        "turn_id": job["turn_id"],
        "tenant": job["tenant"],
        "session_id": job["session_id"],
        "tier": job["tier"],
        "rule": job["rule"],
        "confidence": job["confidence"],
        "chain": chain,
        "attempts": attempts,
        "provider": provider,
        "model": model,
        "usage": usage_dict(usage),
        "usage_estimated": usage_estimated,
        "cost_usd": money(cost),
        "baseline_cost_usd": money(baseline_cost),
        "received_at": received,
        "enqueued_at": job.get("enqueued_at"),
        "started_at": started_at,
        "first_token_at": first_token_at,
        "finished_at": finished_at,
        "queue_wait_ms": _ms(started_at, received),
        "ttft_ms": _ms(first_token_at, received),
        "total_ms": _ms(finished_at, received),
        "status": str(status_of(terminal, code)),
        "error_code": code,
        "finish_reason": finish_reason,
        "last_resort": last_resort,
        "speculative": job.get("speculative", False),
        "text_chars": job.get("text_chars", 0),
        "text_sha256": job.get("text_sha256", ""),
        "answer_chars": answer_chars,
        "policy_version": job.get("policy_version", ""),
        "worker": worker,
    }


def encode_ledger(event: dict[str, Any]) -> dict[str, bytes]:
    """The XADD field map of one ledger event."""
    return {LEDGER_FIELD: orjson.dumps(event)}
