"""The benchmark's arithmetic: percentiles, summaries, differences, targets."""

from __future__ import annotations

import pytest

from dispatcher.bench.client import TurnSample
from dispatcher.bench.stats import difference, percentile, summarize
from dispatcher.bench.targets import check_targets


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([], 50, None),
        ([7.0], 99, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 90, 4.0),
        (list(range(1, 101)), 99, 99),
        ([5.0, 1.0, 3.0], 50, 3.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == expected


def test_summary_counts_errors_and_skips_them_in_latencies() -> None:
    samples = [
        TurnSample(ok=True, ttft_ms=50.0, total_ms=250.0, tokens=20, gaps_ms=[10.0, 12.0]),
        TurnSample(ok=True, ttft_ms=60.0, total_ms=260.0, tokens=20, gaps_ms=[11.0]),
        TurnSample(ok=False, error="HTTP 503: b'...'", total_ms=3.0),
    ]
    s = summarize(samples, wall_s=1.0)
    assert (s["turns"], s["ok"], s["errors"]) == (3, 2, 1)
    assert s["error_examples"] == ["HTTP 503: b'...'"]
    assert s["ttft_ms"] == {"p50": 50.0, "p90": 60.0, "p99": 60.0}
    assert s["gap_ms"]["p99"] == 12.0
    assert s["turns_per_s"] == 2.0


def test_difference_is_through_minus_direct() -> None:
    assert difference({"p50": 55.5, "p99": None}, {"p50": 50.0, "p99": 60.0}) == {
        "p50": 5.5, "p99": None}


def _phase(p50: float, p99: float, tps: float, cpu: float, errors: int = 0) -> dict:
    return {"added_ttft_ms": {"p50": p50, "p90": p99, "p99": p99}, "turns_per_s": tps,
            "throughput_vs_direct": tps / 200, "errors": errors,
            "cpu_ms_per_turn": {"ingress+workers": cpu}, "ingress_kib_per_stream": 50.0}


def test_targets_are_checked_per_endpoint_and_level() -> None:
    result = {
        "levels": [
            {"concurrency": 1, "through": {"chat": _phase(2.0, 9.0, 4.0, 4.0)}},
            {"concurrency": 50, "through": {"chat": _phase(8.0, 40.0, 190.0, 4.5)}},
            {"concurrency": 200, "through": {"chat": _phase(9.0, 50.0, 260.0, 6.0, errors=1)}},
        ],
        "idle_rss_mib": {"ingress": 70.0, "workers": 300.0},
        "routing": {"cases": [{"name": "mixed", "p99_us": 120.0}]},
    }
    met = {t["target"]: t["met"] for t in check_targets(result)}
    assert met["chat: added TTFT p50 at C=1 (ms)"] is True
    assert met["chat: added TTFT p99 at C=50 (ms)"] is False
    assert met["chat: throughput at C=50 vs direct"] is True
    assert met["chat: streams/s at C=200"] is True
    assert met["chat: errors at C=200"] is False
    assert met["chat: ingress+workers CPU per turn, worst C (ms)"] is False
    assert met["chat: ingress+workers CPU per turn at C=50 (ms)"] is True
    assert met["chat: ingress+workers CPU per turn at C=200 (ms)"] is False
    assert met["chat: ingress memory per open stream at C=200 (KiB)"] is True
    assert met["idle ingress + workers RSS (MiB)"] is True
    assert met["routing p99, mixed (µs)"] is True
