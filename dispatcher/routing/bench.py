"""Micro-benchmark of routing decisions (``dispatcher bench route``)."""

from __future__ import annotations

import gc
import time
from typing import Any

from dispatcher.domain import SessionSnapshot
from dispatcher.policy.models import Policy
from dispatcher.routing.router import Router

# A 30-word voice turn with no punctuation: the size the latency target is set for.
TURN_30_WORDS = (
    "uh so my router keeps dropping the connection like every hour since the firmware "
    "update last night and i already restarted it twice what should i try next"
)
MIXED = [
    ("yes", {}, None),
    ("uh yeah that works for me thanks", {"last_bot_act": "ask_yes_no"}, None),
    ("what time do you close on sundays", {}, None),
    ("i'd like to move my appointment from tuesday to thursday afternoon if possible", {}, None),
    ("ok do that", {}, SessionSnapshot("reasoning", 1)),
    ("write a python function that merges two sorted lists and explain its complexity", {}, None),
    ("can you summarize what we agreed on this call", {}, None),
]


def _time(
    router: Router, text: str, state: dict[str, Any], session: SessionSnapshot | None, n: int
) -> list[int]:
    samples = []
    route = router.route
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        route(text, (), state, session)
        samples.append(clock() - t0)
    return samples


def _stats(name: str, words: int, samples: list[int]) -> dict[str, Any]:
    samples.sort()
    n = len(samples)
    return {
        "name": name,
        "words": words,
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[min(n - 1, int(n * 0.99))] / 1000,
        "max_us": samples[-1] / 1000,
        "per_second": 1e9 / (sum(samples) / n),
    }


def run_route_bench(policy: Policy, iterations: int) -> dict[str, Any]:
    router = Router(policy)
    for text, state, session in MIXED:  # warm up regex caches
        router.route(text, (), state, session)
    gc_was_enabled = gc.isenabled()
    cases = []
    try:
        samples = _time(router, TURN_30_WORDS, {}, None, iterations)
        cases.append(_stats("30-word voice turn", len(TURN_30_WORDS.split()), samples))
        mixed: list[int] = []
        per = max(1, iterations // len(MIXED))
        for text, state, session in MIXED:
            mixed += _time(router, text, state, session, per)
        cases.append(_stats("mixed turns", 0, mixed))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {"iterations": iterations, "cases": cases}
