"""Percentiles and the summary of one phase (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dispatcher.bench.client import TurnSample

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{p}": _r(percentile(values, p)) for p in PERCENTILES}


def summarize(samples: Sequence[TurnSample], wall_s: float) -> dict[str, Any]:
    """Turns, errors (with up to 5 distinct messages), TTFT spread, turns/s, gap p99."""
    ok = [s for s in samples if s.ok]
    errors = [s.error or "unknown" for s in samples if not s.ok]
    ttft = [s.ttft_ms for s in ok if s.ttft_ms is not None]
    gaps = [g for s in ok for g in s.gaps_ms]
    return {
        "turns": len(samples),
        "ok": len(ok),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "wall_s": round(wall_s, 3),
        "turns_per_s": round(len(ok) / wall_s, 1) if wall_s > 0 else None,
        "ttft_ms": spread(ttft),
        "total_ms": spread([s.total_ms for s in ok]),
        "gap_ms": {"p50": _r(percentile(gaps, 50)), "p99": _r(percentile(gaps, 99))},
        "tokens_per_turn": round(sum(s.tokens for s in ok) / len(ok), 1) if ok else None,
    }


def difference(through: dict[str, float | None], direct: dict[str, float | None]
               ) -> dict[str, float | None]:
    """``through - direct`` for each percentile present in both."""
    out: dict[str, float | None] = {}
    for key, value in through.items():
        base = direct.get(key)
        out[key] = None if value is None or base is None else _r(value - base)
    return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
