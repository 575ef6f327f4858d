"""``dispatcher bench`` keeps working: C=1, 20 turns, the whole stack as processes.

Not a timed test: it checks that every phase ran without errors and that the numbers are
sane (positive, ordered percentiles, CPU and memory read from /proc).
"""

from __future__ import annotations

import os

import pytest
import redis

from dispatcher.bench import LoadBenchConfig, run_load_bench

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/10"


def _redis_or_skip() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required in CI: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")


def _sane_phase(phase: dict, turns: int) -> None:
    assert phase["turns"] == turns and phase["errors"] == 0, phase["error_examples"]
    ttft = phase["ttft_ms"]
    # the simulator's first token takes 50 ms; nothing can be faster
    assert 45 <= ttft["p50"] <= ttft["p90"] <= ttft["p99"] < 5000
    assert phase["turns_per_s"] > 0
    assert phase["tokens_per_turn"] >= 1
    assert phase["gap_ms"]["p99"] is not None and phase["gap_ms"]["p99"] >= 0
    assert all(v >= 0 for v in phase["cpu_ms_per_turn"].values())


def test_bench_at_one_stream_gives_sane_numbers() -> None:
    _redis_or_skip()
    redis.Redis.from_url(REDIS_URL).flushdb()
    result = run_load_bench(LoadBenchConfig(concurrency=(1,), turns=20, redis_url=REDIS_URL))
    (level,) = result["levels"]
    assert level["concurrency"] == 1
    _sane_phase(level["direct"], 20)
    assert set(level["through"]) == {"chat", "turns"}
    for through in level["through"].values():
        _sane_phase(through, 20)
        # what the dispatcher adds is a difference of the two, in milliseconds
        assert through["added_ttft_ms"]["p50"] == pytest.approx(
            through["ttft_ms"]["p50"] - level["direct"]["ttft_ms"]["p50"], abs=0.02)
        assert through["cpu_ms_per_turn"]["ingress"] > 0
        assert through["cpu_ms_per_turn"]["workers"] > 0
        assert through["peak_rss_mib"]["ingress"] > 10
        assert through["peak_rss_mib"]["workers"] > 10
    assert result["idle_rss_mib"]["ingress"] > 10
    assert result["model"]
    names = {t["target"] for t in result["targets"]}
    assert "chat: added TTFT p50 at C=1 (ms)" in names
    assert all(isinstance(t["met"], bool) for t in result["targets"])
