"""``dispatcher bench ledger``: how fast the writer fills Postgres, and how fast it is read.

1. **Writer**: a backlog of ``events`` ledger events is put on a private Redis stream,
   then a :class:`~dispatcher.ledger.writer.LedgerWriter` drains it into a throwaway
   Postgres database (consumer group, batches, upserts, roll-ups, ack after commit).
   Reported: rows per second, and the process's resident memory before and at its peak
   while draining (it reads ``batch_size`` entries at a time, so it stays flat).
2. **Summary**: the table is topped up to ``summary_rows`` turns (spread over 30 days,
   written through the same repository function in large batches), then
   ``ledger summary`` is timed for every ``group_by``, for a window with partial days at
   both ends, and for one session's roll-up; also the command line end to end.

The database (``ledger_bench_<random>``) and the stream are removed afterwards unless
``keep`` is set.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from dispatcher.domain import Usage
from dispatcher.ledger import migrate, queries
from dispatcher.ledger.db import make_engine
from dispatcher.ledger.events import LedgerEvent
from dispatcher.ledger.repository import register_policy, write_turns
from dispatcher.ledger.writer import DEFAULT_BATCH, LedgerWriter, WriterConfig, WriterStats
from dispatcher.policy import Policy, load_policy
from dispatcher.settings import DEFAULT_POLICY_PATH

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DAYS = 30
STATUSES = ("completed",) * 90 + ("failed",) * 4 + ("cancelled",) * 5 + ("refused",)


class BenchError(Exception):
    """Raised when the benchmark cannot run (no Postgres, no Redis); says why."""


# -- synthetic turns ---------------------------------------------------------------------


class TurnFactory:
    """Plausible ledger events: 3 tenants, calls of ~8 turns, the policy's rules with their
    tiers, the tiers' models and prices (costs exact, from the policy), TTFT from a
    log-normal distribution. ``total`` turns arrive in order over the last ``spread_s``
    seconds, as they would: a call's turns are seconds apart, and the day fills up in
    time order."""

    def __init__(
        self, policy: Policy, seed: int = 7, spread_s: float = DAYS * 86400, total: int = 1000
    ) -> None:
        self.policy = policy
        self.rng = random.Random(seed)
        self.start = time.time() - spread_s
        self.step = spread_s / max(total, 1)
        self.rules = [(r.name, r.tier) for r in policy.rules if r.tier in policy.tiers]
        self.rules.append(("default", policy.default_tier))
        self.n = 0

    def event(self) -> dict[str, Any]:
        rng, policy = self.rng, self.policy
        self.n += 1
        rule, tier = rng.choice(self.rules)
        chain = list(policy.tiers[tier].models)
        model_id = chain[0] if rng.random() < 0.93 else chain[-1]
        model = policy.models[model_id]
        status = rng.choice(STATUSES)
        usage = Usage(
            input_tokens=rng.randint(20, 4000),
            output_tokens=0 if status == "refused" else rng.randint(1, 600),
            cached_input_tokens=rng.choice((0, 0, 0, 512, 1024)),
            reasoning_tokens=rng.choice((0, 0, 0, 0, 64)),
        )
        usage = Usage(
            usage.input_tokens,
            usage.output_tokens,
            min(usage.cached_input_tokens, usage.input_tokens),
            min(usage.reasoning_tokens, usage.output_tokens),
        )
        received = self.start + (self.n + rng.random()) * self.step
        ttft = None if status in ("refused", "failed") else rng.lognormvariate(6.0, 0.5)
        total = (ttft or 50.0) + rng.uniform(100, 3000)
        speculative = rng.random() < 0.1
        return {
            "schema": 1,
            "turn_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "tenant": f"tenant-{self.n // 8 % 3}",
            "session_id": f"call-{self.n // 8}",
            "tier": tier,
            "rule": rule,
            "confidence": round(rng.random(), 3),
            "chain": chain,
            "attempts": [
                {
                    "provider": model.provider,
                    "model": model_id,
                    "outcome": "ok" if status == "completed" else "failed",
                    "error_class": None if status == "completed" else "server_error",
                    "ttft_ms": None if ttft is None else round(ttft, 1),
                    "retry_after": None,
                    "hedge": False,
                }
            ],
            "provider": model.provider,
            "model": model_id,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cached_input_tokens": usage.cached_input_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
            },
            "usage_estimated": status == "cancelled",
            "cost_usd": format(model.cost(usage), "f"),
            "baseline_cost_usd": format(policy.baseline_cost(usage), "f"),
            "received_at": received,
            "started_at": received + 0.004,
            "first_token_at": None if ttft is None else received + ttft / 1000,
            "finished_at": received + total / 1000,
            "queue_wait_ms": 4.0,
            "ttft_ms": None if ttft is None else round(ttft, 1),
            "total_ms": round(total, 1),
            "status": status,
            "error_code": None if status == "completed" else "no_provider_available",
            "finish_reason": "stop" if status == "completed" else None,
            "last_resort": False,
            "speculative": speculative,
            "text_chars": rng.randint(2, 400),
            "text_sha256": "0" * 64,
            "answer_chars": rng.randint(0, 2000),
            "policy_version": policy.version,
            "worker": "bench",
        }

    def events(self, count: int) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            yield self.event()


# -- memory -----------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory:
    """Samples resident memory in a thread; ``peak`` is the highest seen."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s = every_s
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


# -- the benchmark ------------------------------------------------------------------------


def _progress(console: Console, label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _admin_url(database_url: str, console: Console) -> str:
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        console.print(
            f"DISPATCHER_DATABASE_URL is {url.get_backend_name()}; benchmarking the local "
            f"Postgres {LOCAL_POSTGRES}",
            highlight=False,
        )
        url = make_url(LOCAL_POSTGRES)
    return url.render_as_string(hide_password=False)


def _timed(call: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best of ``repeat`` wall times in ms, and the last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times), result


def run_ledger_bench(
    *,
    database_url: str,
    redis_url: str,
    events: int = 100_000,
    summary_rows: int = 1_000_000,
    batch_size: int = DEFAULT_BATCH,
    keep: bool = False,
    console: Console | None = None,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """Run both parts (see the module docstring) and return the figures."""
    from redis import Redis
    from redis.exceptions import RedisError

    console = console or Console(stderr=True)
    policy = policy or load_policy(DEFAULT_POLICY_PATH)
    admin_url = _admin_url(database_url, console)
    name = f"ledger_bench_{uuid.uuid4().hex[:10]}"
    bench_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        raise BenchError(
            f"cannot create a database on {make_url(admin_url).render_as_string()}: {exc}"
        ) from None
    redis = Redis.from_url(redis_url, socket_timeout=30)
    try:
        redis.ping()
    except RedisError as exc:
        raise BenchError(f"cannot reach Redis at {redis_url}: {exc}") from None
    stream = f"dispatcher:ledger:bench:{name}"
    result: dict[str, Any] = {
        "database": name,
        "batch_size": batch_size,
        "cpus": os.cpu_count(),
        # other work on the machine skews the figures: say how busy it was
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    engine = make_engine(bench_url, writer=True)
    try:
        migrate.upgrade(engine)
        with Session(engine) as session, session.begin():
            register_policy(session, policy)
        # the writer drains live traffic (the last ten minutes' turns); the history it is
        # summarised with spans 30 days, in time order
        live = TurnFactory(policy, seed=7, spread_s=600, total=events)
        result["writer"] = _bench_writer(
            console, redis, engine, stream, live, events, batch_size, policy
        )
        history = TurnFactory(policy, seed=8, total=max(summary_rows - events, 1))
        result["fill"] = _fill(console, engine, history, summary_rows - events)
        result["summary"] = _bench_summary(console, engine, bench_url)
    finally:
        engine.dispose()
        redis.delete(stream, f"{stream}:dead")
        redis.close()
        if not keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return result


def _bench_writer(
    console: Console,
    redis: Any,
    engine: Any,
    stream: str,
    factory: TurnFactory,
    events: int,
    batch_size: int,
    policy: Policy,
) -> dict[str, Any]:
    with _progress(console, "backlog: XADD") as progress:
        task = progress.add_task("xadd", total=events, rate="")
        sent = 0
        while sent < events:
            pipe = redis.pipeline(transaction=False)
            n = min(5000, events - sent)
            for ev in factory.events(n):
                pipe.xadd(stream, {"event": orjson.dumps(ev)})
            pipe.execute()
            sent += n
            progress.update(task, completed=sent)
    backlog = int(redis.xlen(stream))
    before = rss_mb()
    config = WriterConfig(
        stream=stream,
        group="bench",
        consumer="bench-1",
        block_ms=100,
        batch_size=batch_size,
        dead_stream=f"{stream}:dead",
    )
    with _progress(console, "writer: drain") as progress, PeakMemory() as memory:
        task = progress.add_task("drain", total=backlog, rate="")

        def on_batch(stats: WriterStats) -> None:
            progress.update(task, completed=stats.events, rate=f"{stats.rate():,.0f} rows/s")

        writer = LedgerWriter(redis, engine, config, policy=policy, on_batch=on_batch)
        t0 = time.perf_counter()
        stats = writer.run(until_idle=True)
        elapsed = time.perf_counter() - t0
    with Session(engine) as session:
        rows = int(session.scalar(text("SELECT count(*) FROM ledger_turns")) or 0)
    return {
        "events": backlog,
        "rows": rows,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(stats.events / elapsed),
        "batches": stats.batches,
        "left_in_stream": int(redis.xlen(stream)),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(memory.peak, 1),
    }


def _fill(console: Console, engine: Any, factory: TurnFactory, rows: int) -> dict[str, Any]:
    if rows <= 0:
        return {"rows": 0}
    batch = 5000
    written = 0
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    with _progress(console, "fill: write_turns") as progress:
        task = progress.add_task("fill", total=rows, rate="")
        while written < rows:
            n = min(batch, rows - written)
            rows_ = [
                LedgerEvent.model_validate(ev).to_row(stream_id=None, now=now)
                for ev in factory.events(n)
            ]
            with Session(engine) as session, session.begin():
                write_turns(session, rows_)
            written += n
            rate = written / (time.perf_counter() - t0)
            progress.update(task, completed=written, rate=f"{rate:,.0f} rows/s")
    elapsed = time.perf_counter() - t0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return {"rows": written, "seconds": round(elapsed, 1), "rows_per_s": round(written / elapsed)}


def _bench_summary(console: Console, engine: Any, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Session(engine) as session:
        out["rows"] = int(session.scalar(text("SELECT count(*) FROM ledger_turns")) or 0)
        out["rollup_rows"] = int(session.scalar(text("SELECT count(*) FROM ledger_daily")) or 0)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        cases: list[tuple[str, dict[str, Any]]] = [
            (f"group_by={g or '(none)'}", {"group_by": tuple(g.split(",")) if g else ()})
            for g in ("", "tier", "model", "provider", "rule", "day", "session", "tier,day")
        ]
        cases.append(
            (
                "since/until mid-day, group_by=tier",
                {
                    "since": today - timedelta(days=20, hours=-13, minutes=-37),
                    "until": today - timedelta(days=2, hours=-9, minutes=-15),
                    "group_by": ("tier",),
                },
            )
        )
        cases.append(("tenant-1, group_by=model", {"tenant": "tenant-1", "group_by": ("model",)}))
        timings = []
        for label, kw in cases:
            tenant = kw.pop("tenant", None)

            def run(kw: dict[str, Any] = kw, tenant: str | None = tenant) -> queries.Summary:
                return queries.summary(session, tenant=tenant, **kw)

            ms, res = _timed(run)
            timings.append({"case": label, "ms": round(ms, 1), "turns": res.total.agg.turns})
            console.print(f"  summary {label}: {ms:,.1f} ms", highlight=False)
        out["queries"] = timings
        ms, _ = _timed(
            lambda: queries.session_report(session, session_id="call-4242", tenant="tenant-1")
        )
        out["session_report_ms"] = round(ms, 1)
        # a summary computed from the raw rows, for comparison (what the roll-up saves)
        t0 = time.perf_counter()
        session.execute(
            text(
                "SELECT tier, count(*), sum(cost_usd), percentile_cont(0.5) WITHIN GROUP "
                "(ORDER BY ttft_ms) FROM ledger_turns GROUP BY tier"
            )
        ).all()
        out["raw_scan_group_by_tier_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    env = {**os.environ, "DISPATCHER_DATABASE_URL": url}
    code = "from dispatcher.ledger.cli import app; app()"
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code, "summary", "--group-by", "tier", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        walls.append((time.perf_counter() - t0) * 1000)
        if proc.returncode != 0:
            raise BenchError(f"ledger summary failed: {proc.stderr.strip()}")
    out["cli_wall_ms"] = round(min(walls), 1)
    out["cli_wall_median_ms"] = round(statistics.median(walls), 1)
    return out


def render(result: dict[str, Any], console: Console) -> None:
    w, f, s = result["writer"], result["fill"], result["summary"]
    console.print(
        f"{result['cpus']} CPUs, load average at start {result['load_average_at_start']}",
        highlight=False,
    )
    console.print(
        f"[bold]writer[/bold]: {w['events']:,} events drained in {w['seconds']} s = "
        f"[bold]{w['rows_per_s']:,} rows/s[/bold] (batches of {result['batch_size']}), "
        f"{w['rows']:,} rows, {w['left_in_stream']} left in the stream; "
        f"memory {w['rss_before_mb']} MB before, {w['rss_peak_mb']} MB at peak"
    )
    if f.get("rows"):
        console.print(f"[bold]fill[/bold]: {f['rows']:,} more rows at {f['rows_per_s']:,} rows/s")
    table = Table(
        title=f"ledger summary over {s['rows']:,} turns ({s['rollup_rows']:,} roll-up rows)"
    )
    table.add_column("query")
    table.add_column("best of 3, ms", justify="right")
    for q in s["queries"]:
        table.add_row(q["case"], f"{q['ms']:,.1f}")
    table.add_row("session roll-up (one call)", f"{s['session_report_ms']:,.1f}")
    table.add_row(
        "raw GROUP BY tier + percentile (no roll-up)", f"{s['raw_scan_group_by_tier_ms']:,.1f}"
    )
    table.add_row("CLI `ledger summary --group-by tier` end to end", f"{s['cli_wall_ms']:,.1f}")
    console.print(table)
