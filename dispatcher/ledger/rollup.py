"""Pure roll-up arithmetic: what one turn adds to its roll-up rows, sums, percentiles.

No I/O here. The writer (:mod:`dispatcher.ledger.repository`) and the queries
(:mod:`dispatcher.ledger.queries`) share these functions, so a summary read from the
roll-ups and one computed from raw rows agree to the last decimal.

Time to first token is kept as a histogram with log-spaced buckets: bucket ``b`` holds
values in ``[2**(b/16), 2**((b+1)/16))`` milliseconds (values below 1 ms fall in bucket
0), so a percentile read from it (the bucket's geometric middle) is within ±2.2 % of the
exact one, and histograms of any days and groups add up exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

BUCKETS_PER_DOUBLING = 16
MAX_BUCKET = 32_000  # fits a SMALLINT; 2**(32000/16) ms is beyond any deadline

_ZERO = Decimal(0)


def ttft_bucket(ttft_ms: float | None) -> int | None:
    """The histogram bucket of a time to first token (None stays None)."""
    if ttft_ms is None or math.isnan(ttft_ms):
        return None
    if ttft_ms <= 1.0:
        return 0
    return min(math.floor(BUCKETS_PER_DOUBLING * math.log2(ttft_ms)), MAX_BUCKET)


def bucket_value(bucket: int) -> float:
    """The value a bucket stands for: its geometric middle, in ms."""
    return float(2 ** ((bucket + 0.5) / BUCKETS_PER_DOUBLING))


def hist_percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0 < q ≤ 1) of a histogram, rounded to 0.1 ms; None when empty."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return round(bucket_value(bucket), 1)
    return round(bucket_value(max(hist)), 1)  # pragma: no cover - counts add up


def exact_percentile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated quantile, as Postgres ``percentile_cont``; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    value = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return round(value, 1)


@dataclass(slots=True)
class Agg:
    """Sums of any number of turns. Adding and subtracting are exact."""

    turns: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    refused: int = 0
    speculative: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = _ZERO
    baseline_cost_usd: Decimal = _ZERO
    cancelled_speculative_cost_usd: Decimal = _ZERO
    ttft_count: int = 0
    ttft_hist: Counter[int] = field(default_factory=Counter)

    INTS = (
        "turns",
        "completed",
        "failed",
        "cancelled",
        "refused",
        "speculative",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
        "ttft_count",
    )
    MONEY = ("cost_usd", "baseline_cost_usd", "cancelled_speculative_cost_usd")

    def add(self, other: Agg, sign: int = 1) -> None:
        # spelled out field by field: this runs twice per turn written
        self.turns += sign * other.turns
        self.completed += sign * other.completed
        self.failed += sign * other.failed
        self.cancelled += sign * other.cancelled
        self.refused += sign * other.refused
        self.speculative += sign * other.speculative
        self.input_tokens += sign * other.input_tokens
        self.output_tokens += sign * other.output_tokens
        self.cached_input_tokens += sign * other.cached_input_tokens
        self.reasoning_tokens += sign * other.reasoning_tokens
        self.ttft_count += sign * other.ttft_count
        if sign == 1:
            self.cost_usd += other.cost_usd
            self.baseline_cost_usd += other.baseline_cost_usd
            self.cancelled_speculative_cost_usd += other.cancelled_speculative_cost_usd
        else:
            self.cost_usd -= other.cost_usd
            self.baseline_cost_usd -= other.baseline_cost_usd
            self.cancelled_speculative_cost_usd -= other.cancelled_speculative_cost_usd
        hist = self.ttft_hist
        for bucket, count in other.ttft_hist.items():
            n = hist[bucket] + sign * count
            if n:
                hist[bucket] = n
            else:
                del hist[bucket]

    def is_zero(self) -> bool:
        return not (
            self.turns
            or self.completed
            or self.failed
            or self.cancelled
            or self.refused
            or self.speculative
            or self.input_tokens
            or self.output_tokens
            or self.cached_input_tokens
            or self.reasoning_tokens
            or self.ttft_count
            or self.cost_usd
            or self.baseline_cost_usd
            or self.cancelled_speculative_cost_usd
            or any(self.ttft_hist.values())
        )

    @classmethod
    def of_turn(cls, row: Mapping[str, Any]) -> Agg:
        """What one ledger row (a dict of :class:`~dispatcher.ledger.models.Turn` columns)
        adds to its roll-up rows."""
        status = row["status"]
        cost = row["cost_usd"] or _ZERO
        bucket = row.get("ttft_bucket")
        agg = cls(
            turns=1,
            completed=int(status == "completed"),
            failed=int(status == "failed"),
            cancelled=int(status == "cancelled"),
            refused=int(status == "refused"),
            speculative=int(bool(row["speculative"])),
            input_tokens=row["input_tokens"] or 0,
            output_tokens=row["output_tokens"] or 0,
            cached_input_tokens=row["cached_input_tokens"] or 0,
            reasoning_tokens=row["reasoning_tokens"] or 0,
            cost_usd=cost,
            # a turn without a baseline claims no savings
            baseline_cost_usd=cost
            if row["baseline_cost_usd"] is None
            else row["baseline_cost_usd"],
            cancelled_speculative_cost_usd=(
                cost if row["speculative"] and status == "cancelled" else _ZERO
            ),
            ttft_count=0 if bucket is None else 1,
        )
        if bucket is not None:
            agg.ttft_hist[bucket] = 1
        return agg

    @classmethod
    def from_columns(cls, row: Mapping[Any, Any]) -> Agg:
        """An Agg from roll-up columns (``ttft_hist`` as stored: string keys)."""
        agg = cls()
        for n in cls.INTS:
            setattr(agg, n, int(row[n] or 0))
        for n in cls.MONEY:
            setattr(agg, n, row[n] if row[n] is not None else _ZERO)
        agg.ttft_hist = hist_from_json(row.get("ttft_hist"))
        return agg

    def columns(self) -> dict[str, Any]:
        """The roll-up columns of this Agg (``ttft_hist`` with string keys, for JSON)."""
        out: dict[str, Any] = {n: getattr(self, n) for n in (*self.INTS, *self.MONEY)}
        out["ttft_hist"] = {str(b): c for b, c in sorted(self.ttft_hist.items()) if c}
        return out


def hist_from_json(stored: Mapping[str, int] | None) -> Counter[int]:
    return Counter({int(b): int(c) for b, c in (stored or {}).items() if c})


def daily_key(row: Mapping[str, Any]) -> tuple[str, Any, str, str, str, str]:
    """The ``ledger_daily`` key of a turn row: '' stands for a missing dimension."""
    return (
        row["tenant"],
        row["day"],
        row["tier"] or "",
        row["provider"] or "",
        row["model"] or "",
        row["rule"] or "",
    )


def session_key(row: Mapping[str, Any]) -> tuple[str, Any, str]:
    """The ``ledger_session_daily`` key of a turn row."""
    return (row["tenant"], row["day"], row["session_id"])
