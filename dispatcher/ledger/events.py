"""The ledger event as workers append it to the stream, and the row it becomes.

Workers ``XADD dispatcher:ledger * event <json>`` once per turn execution
(``workers/ledger.py`` builds the JSON). :class:`LedgerEvent` reads it tolerantly: unknown
fields are ignored, optional ones may be missing, a few synonyms are accepted
(``session``/``session_id``, ``received``/``received_at``...), so a producer that adds a
field, or an older one that lacks one, never blocks the stream. Only ``turn_id``,
``tenant`` and ``status`` are required: without them a row cannot be placed.

Money arrives as decimal text (``"0.00012345"``) and stays a :class:`~decimal.Decimal`; a
JSON number is read through its shortest repr, never through binary floating point
arithmetic. Times arrive as epoch seconds (or ISO 8601) and become UTC datetimes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from dispatcher.domain import TurnStatus, Usage
from dispatcher.ledger.rollup import ttft_bucket
from dispatcher.ledger.types import to_decimal

#: status synonyms a producer might send
_STATUS_ALIASES = {
    "done": "completed",
    "ok": "completed",
    "complete": "completed",
    "error": "failed",
    "canceled": "cancelled",
    "rejected": "refused",
}


def _money(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    amount = to_decimal(value)
    if not amount.is_finite():
        raise ValueError(f"amount {value!r} is not a finite number")
    return amount


MoneyIn = Annotated[Decimal | None, BeforeValidator(_money)]
OptStr = str | None
OptTime = datetime | None

#: optional fields where a producer's "" means "none"
_EMPTY_IS_NONE = (
    "tier",
    "rule",
    "classifier",
    "provider",
    "final_provider",
    "model",
    "final_model",
    "received_at",
    "received",
    "enqueued_at",
    "enqueued",
    "started_at",
    "started",
    "first_token_at",
    "first_token",
    "finished_at",
    "finished",
    "error_code",
    "finish_reason",
    "text_sha256",
    "policy_version",
    "worker",
)


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class EventUsage(_Tolerant):
    """Token counts as the provider reported them (cached within input, reasoning within
    output)."""

    input_tokens: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("input_tokens", "prompt_tokens")
    )
    output_tokens: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("output_tokens", "completion_tokens")
    )
    cached_input_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _none_is_zero(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            return {k: 0 if v is None else v for k, v in data.items()}
        return data

    def domain(self) -> Usage:
        return Usage(
            self.input_tokens, self.output_tokens, self.cached_input_tokens, self.reasoning_tokens
        )


#: prices a writer knows: (policy_version, model, usage) -> exact cost, or None if unknown
Pricer = Callable[[str | None, str | None, Usage], Decimal | None]


class LedgerEvent(_Tolerant):
    """One turn execution as a worker (or the ingress, for a refused turn) reports it."""

    schema_version: int | None = Field(
        default=None, validation_alias=AliasChoices("schema", "schema_version")
    )
    turn_id: str = Field(min_length=1, max_length=64)
    tenant: str = Field(min_length=1, max_length=128)
    session_id: str = Field(
        default="", max_length=256, validation_alias=AliasChoices("session_id", "session")
    )
    tier: OptStr = None
    rule: OptStr = None
    classifier: OptStr = None
    confidence: float | None = None
    chain: list[str] = []
    attempts: list[dict[str, Any]] = []
    provider: OptStr = Field(
        default=None, validation_alias=AliasChoices("provider", "final_provider")
    )
    model: OptStr = Field(default=None, validation_alias=AliasChoices("model", "final_model"))
    usage: EventUsage = EventUsage()
    usage_estimated: bool = False
    cost_usd: MoneyIn = None
    baseline_cost_usd: MoneyIn = None
    received_at: OptTime = Field(
        default=None, validation_alias=AliasChoices("received_at", "received")
    )
    enqueued_at: OptTime = Field(
        default=None, validation_alias=AliasChoices("enqueued_at", "enqueued")
    )
    started_at: OptTime = Field(
        default=None, validation_alias=AliasChoices("started_at", "started")
    )
    first_token_at: OptTime = Field(
        default=None, validation_alias=AliasChoices("first_token_at", "first_token")
    )
    finished_at: OptTime = Field(
        default=None, validation_alias=AliasChoices("finished_at", "finished")
    )
    queue_wait_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    status: TurnStatus
    error_code: OptStr = None
    finish_reason: OptStr = None
    last_resort: bool = False
    speculative: bool = False
    text_chars: int | None = Field(default=None, ge=0)
    text_sha256: OptStr = None
    text: str | None = None
    answer_chars: int | None = Field(default=None, ge=0)
    policy_version: OptStr = None
    worker: OptStr = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        # one pass in Python rather than a validator per field: this runs per event
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in _EMPTY_IS_NONE:
            if data.get(key) == "":
                data[key] = None
        status = data.get("status")
        if isinstance(status, str):
            status = status.strip().lower()
            data["status"] = _STATUS_ALIASES.get(status, status)
        error = data.get("error_code", data.get("error"))
        if isinstance(error, dict):  # an `error: {code, message}` object
            data["error_code"] = error.get("code")
        for key in ("chain", "attempts"):
            if key in data and data[key] is None:
                data[key] = []
        if "usage" in data and data["usage"] is None:
            data["usage"] = {}
        return data

    @classmethod
    def parse(cls, raw: bytes | str) -> LedgerEvent:
        """Read one stream entry's JSON (``ValueError`` / ``ValidationError`` if unusable)."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a ledger event must be a JSON object")
        return cls.model_validate(data)

    def to_row(
        self,
        *,
        stream_id: str | None,
        now: datetime,
        pricer: Pricer | None = None,
        raw: bytes | None = None,
    ) -> dict[str, Any]:
        """The ``ledger_turns`` row of this event (every column, ``event_hash`` included).

        A cost the event lacks is computed from the policy's prices when ``pricer`` knows
        them; otherwise it is recorded as zero (the turn still gets its row).
        ``event_hash`` is the sha256 of ``raw`` (the entry's bytes, as read from the
        stream: a redelivered entry is byte for byte the same) or else of the row's content.
        """
        received = self.received_at or self.started_at or self.finished_at or now
        usage = self.usage.domain()
        cost = self.cost_usd
        if cost is None and pricer is not None:
            cost = pricer(self.policy_version, self.model, usage)
        baseline = self.baseline_cost_usd
        if baseline is None and pricer is not None and self.model is not None:
            baseline = pricer(self.policy_version, None, usage)
        ttft = self.ttft_ms
        if ttft is None and self.first_token_at is not None:
            ttft = _ms(self.first_token_at, received)
        row: dict[str, Any] = {
            "turn_id": self.turn_id,
            "tenant": self.tenant,
            "session_id": self.session_id,
            "day": utc_day(received),
            "received_at": received,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "first_token_at": self.first_token_at,
            "finished_at": self.finished_at,
            "text_chars": self.text_chars,
            "text_sha256": self.text_sha256,
            "text": self.text,
            "classifier": self.classifier,
            "rule": self.rule,
            "tier": self.tier,
            "confidence": self.confidence,
            "chain": list(self.chain),
            "attempts": list(self.attempts),
            "provider": self.provider,
            "model": self.model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "usage_estimated": self.usage_estimated,
            "cost_usd": cost if cost is not None else Decimal(0),
            "baseline_cost_usd": baseline,
            "queue_wait_ms": (
                self.queue_wait_ms
                if self.queue_wait_ms is not None or self.started_at is None
                else _ms(self.started_at, self.enqueued_at or received)
            ),
            "ttft_ms": ttft,
            "ttft_bucket": ttft_bucket(ttft),
            "total_ms": (
                self.total_ms
                if self.total_ms is not None or self.finished_at is None
                else _ms(self.finished_at, received)
            ),
            "status": self.status.value,
            "error_code": self.error_code,
            "finish_reason": self.finish_reason,
            "speculative": self.speculative,
            "last_resort": self.last_resort,
            "answer_chars": self.answer_chars,
            "policy_version": self.policy_version,
            "worker": self.worker,
        }
        row["event_hash"] = hashlib.sha256(raw).hexdigest() if raw else content_hash(row)
        row["stream_id"] = stream_id
        row["written_at"] = now
        return row


def utc_day(moment: datetime) -> date:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).date()


def _ms(later: datetime, earlier: datetime) -> float:
    return round((later - earlier).total_seconds() * 1000, 1)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"cannot hash {type(value).__name__}")


def content_hash(row: dict[str, Any]) -> str:
    """sha256 of a row's content; equal rows (however redelivered) hash equal."""
    data = orjson.dumps(row, default=_default, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z)
    return hashlib.sha256(data).hexdigest()
