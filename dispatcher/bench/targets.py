"""The performance targets of issue 6, checked against a benchmark result (pure)."""

from __future__ import annotations

from typing import Any

#: (concurrency, percentile, limit in ms) for the added time to first token
ADDED_TTFT = ((1, "p50", 5.0), (1, "p99", 15.0), (10, "p50", 5.0), (10, "p99", 15.0),
              (50, "p99", 30.0))
THROUGHPUT_AT_50 = 0.90  # of direct
STREAMS_AT_200 = 250.0
CPU_MS_PER_TURN = 5.0  # ingress + workers
KIB_PER_STREAM = 100.0
IDLE_RSS_MIB = 400 / 1.048576  # "400 MB" in MiB
ROUTE_P99_US = 200.0


def _check(name: str, value: float | None, limit: float, *, at_least: bool = False
           ) -> dict[str, Any]:
    met = value is not None and (value >= limit if at_least else value <= limit)
    return {"target": name, "value": value, "limit": limit,
            "op": ">=" if at_least else "<=", "met": met}


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target and endpoint for the concurrencies the run measured."""
    out: list[dict[str, Any]] = []
    levels = {lv["concurrency"]: lv for lv in result["levels"]}
    endpoints = sorted({e for lv in result["levels"] for e in lv["through"]})
    for endpoint in endpoints:
        for c, p, limit in ADDED_TTFT:
            if c in levels and endpoint in levels[c]["through"]:
                added = levels[c]["through"][endpoint]["added_ttft_ms"][p]
                out.append(_check(f"{endpoint}: added TTFT {p} at C={c} (ms)", added, limit))
        if 50 in levels and endpoint in levels[50]["through"]:
            ratio = levels[50]["through"][endpoint]["throughput_vs_direct"]
            out.append(_check(f"{endpoint}: throughput at C=50 vs direct", ratio,
                              THROUGHPUT_AT_50, at_least=True))
        if 200 in levels and endpoint in levels[200]["through"]:
            through = levels[200]["through"][endpoint]
            out.append(_check(f"{endpoint}: streams/s at C=200", through["turns_per_s"],
                              STREAMS_AT_200, at_least=True))
            out.append(_check(f"{endpoint}: errors at C=200", through["errors"], 0))
        cpu = {lv["concurrency"]: lv["through"][endpoint]["cpu_ms_per_turn"].get(
                   "ingress+workers") for lv in result["levels"] if endpoint in lv["through"]}
        cpu = {c: v for c, v in cpu.items() if v is not None}
        if cpu:
            # the strict reading (any load, C=1 included), and each measured level
            out.append(_check(f"{endpoint}: ingress+workers CPU per turn, worst C (ms)",
                              max(cpu.values()), CPU_MS_PER_TURN))
            for c in sorted(cpu):
                out.append(_check(f"{endpoint}: ingress+workers CPU per turn at C={c} (ms)",
                                  cpu[c], CPU_MS_PER_TURN))
        top = max((lv for lv in result["levels"] if endpoint in lv["through"]),
                  key=lambda lv: lv["concurrency"], default=None)
        if top is not None and top["concurrency"] >= 10:
            out.append(_check(
                f"{endpoint}: ingress memory per open stream at C={top['concurrency']} (KiB)",
                top["through"][endpoint]["ingress_kib_per_stream"], KIB_PER_STREAM))
    idle = result.get("idle_rss_mib", {})
    if "ingress" in idle and "workers" in idle:
        out.append(_check("idle ingress + workers RSS (MiB)",
                          round(idle["ingress"] + idle["workers"], 1), round(IDLE_RSS_MIB, 1)))
    routing = result.get("routing") or {}
    for case in routing.get("cases", ()):
        out.append(_check(f"routing p99, {case['name']} (µs)", round(case["p99_us"], 1),
                          ROUTE_P99_US))
    return out
