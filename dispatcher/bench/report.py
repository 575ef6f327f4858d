"""Showing a load benchmark result: a rich table, the targets, and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def results_table(result: dict[str, Any]) -> Table:
    """One row per concurrency and path: the client's view, then the processes'."""
    cfg = result["config"]
    table = Table(
        title=(f"dispatcher bench: {cfg['tokens']}-token answers, simulator TTFT "
               f"{cfg['ttft_ms']} ms, {cfg['itl_ms']} ms between tokens; model "
               f"{result['model']}; {result['cpus']} CPUs"
               + (f"; {cfg.get('worker_processes', 1)} {cfg.get('worker_engine', 'native')} "
                  "worker process(es) per tier, events "
                  f"coalesced over {cfg['coalesce_ms']:g} ms"
                  if cfg.get("coalesce_ms") is not None else "")),
        caption=("TTFT at the client; + = through minus direct; CPU ms per turn from "
                 "/proc utime+stime; RSS = peak during the phase"),
    )
    for col in ("C", "path", "turns", "err", "TTFT p50", "p90", "p99", "+p50", "+p90", "+p99",
                "turns/s", "vs direct", "gap p99", "CPU ingress", "CPU workers", "CPU redis",
                "RSS ingress MiB", "RSS workers MiB"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for level in result["levels"]:
        rows = [("direct", level["direct"]), *level["through"].items()]
        for i, (name, phase) in enumerate(rows):
            ttft, added = phase["ttft_ms"], phase.get("added_ttft_ms", {})
            cpu, rss = phase["cpu_ms_per_turn"], phase["peak_rss_mib"]
            through = name != "direct"
            table.add_row(
                str(level["concurrency"]) if i == 0 else "",
                name,
                str(phase["turns"]),
                str(phase["errors"]),
                _f(ttft["p50"]), _f(ttft["p90"]), _f(ttft["p99"]),
                _signed(added.get("p50")), _signed(added.get("p90")), _signed(added.get("p99")),
                _f(phase["turns_per_s"]),
                f"{phase['throughput_vs_direct'] * 100:.0f}%" if through
                and phase.get("throughput_vs_direct") is not None else "",
                _f(phase["gap_ms"]["p99"]),
                _f(cpu.get("ingress"), 2) if through else "",
                _f(cpu.get("workers"), 2) if through else "",
                _f(cpu.get("redis"), 2),
                _f(rss.get("ingress")) if through else "",
                _f(rss.get("workers")) if through else "",
                end_section=i == len(rows) - 1,
            )
    return table


def targets_table(result: dict[str, Any]) -> Table:
    table = Table(title="targets (issue 6)")
    for col in ("target", "value", "limit", "met"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for t in result["targets"]:
        value = t["value"]
        shown = "-" if value is None else (f"{value:.3g}" if isinstance(value, float) else
                                           str(value))
        table.add_row(t["target"], shown, f"{t['op']} {t['limit']:g}",
                      "[green]yes[/green]" if t["met"] else "[red]no[/red]")
    return table


def plot(result: dict[str, Any], path: Path) -> None:
    """Added TTFT percentiles and throughput against concurrency, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    cs = [lv["concurrency"] for lv in levels]
    endpoints = sorted({e for lv in levels for e in lv["through"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"p50": "-", "p90": "--", "p99": ":"}
    for endpoint in endpoints:
        for p, style in styles.items():
            ys = [lv["through"].get(endpoint, {}).get("added_ttft_ms", {}).get(p)
                  for lv in levels]
            left.plot(cs, [y if y is not None else float("nan") for y in ys], style,
                      marker="o", label=f"{endpoint} {p}")
    left.axhline(0, color="grey", linewidth=0.5)
    left.set(xscale="log", xlabel="concurrent streams", ylabel="added TTFT (ms)",
             title="time to first token added by the dispatcher")
    left.legend(fontsize="small")
    right.plot(cs, [lv["direct"]["turns_per_s"] for lv in levels], "k-", marker="o",
               label="direct (simulator)")
    for endpoint in endpoints:
        right.plot(cs, [lv["through"].get(endpoint, {}).get("turns_per_s") for lv in levels],
                   marker="o", label=f"through ({endpoint})")
    right.set(xscale="log", xlabel="concurrent streams", ylabel="turns per second",
              title="throughput")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
