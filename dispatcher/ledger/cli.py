"""``dispatcher ledger ...``, ``dispatcher migrate``, ``dispatcher ledger-writer``: thin wrappers.

Wiring into ``dispatcher/cli.py``::

    from dispatcher.ledger import cli as ledger_cli

    app.add_typer(ledger_cli.app, name="ledger")
    app.command("migrate")(ledger_cli.migrate_command)
    app.command("ledger-writer")(ledger_cli.writer_command)
    bench_app.command("ledger")(ledger_cli.bench_command)

Or call the plain functions :func:`migrate` and :func:`run_writer` from commands of your
own. Settings are read when a command runs (``get_settings()``), never at import. Errors
are one sentence on stderr with a named exit code (:class:`Exit`).
"""

from __future__ import annotations

import csv
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from dispatcher.ledger import queries
from dispatcher.ledger.db import make_engine, redacted
from dispatcher.ledger.params import (
    GROUP_BY_CHOICES,
    LedgerQueryError,
    parse_group_by,
    parse_limit,
    parse_time,
    split_window,
)
from dispatcher.settings import Settings, get_settings

#: keep in step with dispatcher.ledger.writer.DEFAULT_BATCH (not imported: see below)
DEFAULT_BATCH = 2000

if TYPE_CHECKING:
    # the writer (Redis), Alembic and the benchmark are imported by the commands that use
    # them: `ledger summary` starts in a fraction of a second
    from dispatcher.ledger.writer import WriterConfig, WriterStats

log = logging.getLogger(__name__)


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the command ran and found a problem
    USAGE = 2  # bad arguments
    UNAVAILABLE = 3  # the database (or Redis) cannot be reached, or is not migrated


app = typer.Typer(
    help="Query the cost ledger: summaries, turns, sessions, exports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# piped or redirected output is not cut to 80 columns: a cost is never shown as "0.00…"
out = Console(width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True)


# -- plain functions ------------------------------------------------------------------------


def migrate(settings: Settings, revision: str = "head") -> str | None:
    """Upgrade the ledger database of ``settings`` to ``revision``; return the revision."""
    from dispatcher.ledger import migrate as migrations

    return migrations.upgrade(settings.database_url, revision)


def run_writer(
    settings: Settings,
    *,
    batch_size: int = DEFAULT_BATCH,
    consumer: str | None = None,
    claim_idle_ms: int = 30_000,
    until_idle: bool = False,
    show_progress: bool | None = None,
    stop: threading.Event | None = None,
) -> WriterStats:
    """Run the ledger writer until SIGTERM/SIGINT (or, ``until_idle``, the stream is drained).

    A first signal finishes the batch in hand (commit, then ack) and exits; entries not
    yet committed stay pending for the next writer.
    """
    from redis import Redis

    from dispatcher.errors import PolicyError
    from dispatcher.ledger.writer import LedgerWriter, WriterConfig
    from dispatcher.policy import load_policy

    def load() -> Any:
        return load_policy(settings.policy)

    try:
        policy = load()
    except PolicyError as exc:
        log.warning("ledger writer: no prices registered, the policy is invalid: %s", exc)
        policy = None
    config = WriterConfig(consumer=consumer, batch_size=batch_size, claim_idle_ms=claim_idle_ms)
    stop = stop or threading.Event()
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=config.block_ms / 1000 + 10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    engine = make_engine(settings.database_url, writer=True)
    _refuse_unmigrated(engine, settings.database_url)
    interactive = sys.stderr.isatty() if show_progress is None else show_progress
    with _signals(stop), _writer_progress(interactive, until_idle, redis, config) as on_batch:
        writer = LedgerWriter(
            redis,
            engine,
            config,
            policy=policy,
            policy_loader=load,
            on_batch=on_batch,
            stop=stop,
        )
        try:
            return writer.run(until_idle=until_idle)
        finally:
            engine.dispose()
            redis.close()


class LedgerNotMigrated(Exception):
    """Raised when the writer's database is reachable but has no ledger tables."""


def _refuse_unmigrated(engine: Engine, url: str) -> None:
    # a database that is down is waited for (the events wait in Redis); one that is up
    # without the tables would only fill the log, so the writer refuses to start
    try:
        migrated = inspect(engine).has_table("ledger_turns")
    except (OperationalError, InterfaceError):
        return
    if not migrated:
        engine.dispose()
        raise LedgerNotMigrated(
            f"the ledger database {redacted(url)} has no tables yet: run `dispatcher migrate`"
        )


@contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("ledger writer: %s, stopping after this batch", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def _writer_progress(
    interactive: bool, until_idle: bool, redis: Any, config: WriterConfig
) -> Iterator[Any]:
    if not interactive:
        yield None
        return
    backlog: int | None = None
    if until_idle:
        try:
            backlog = int(redis.xlen(config.stream))
        except Exception:  # progress is a nicety: no total without Redis
            backlog = None
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]ledger writer[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = progress.add_task("write", total=backlog, detail="")

    def on_batch(stats: WriterStats) -> None:
        progress.update(
            task,
            completed=stats.events,
            detail=(
                f"{stats.rate():,.0f}/s  new {stats.inserted:,}  updated {stats.updated:,}  "
                f"dup {stats.unchanged:,}  dead {stats.dead}"
            ),
        )

    with progress:
        yield on_batch


# -- helpers for the commands ----------------------------------------------------------------


def _fail(code: Exit, message: str) -> typer.Exit:
    err.print(message, highlight=False, markup=False)
    return typer.Exit(code)


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.database_url)
    try:
        _require_migrated(engine, settings.database_url)
        with Session(engine) as session:
            yield session
    except (OperationalError, InterfaceError) as exc:
        raise _fail(
            Exit.UNAVAILABLE,
            f"cannot reach the ledger database {redacted(settings.database_url)}: "
            f"{str(exc.orig or exc).strip().splitlines()[0]}",
        ) from None
    finally:
        engine.dispose()


def _require_migrated(engine: Engine, url: str) -> None:
    if not inspect(engine).has_table("ledger_turns"):
        raise _fail(
            Exit.UNAVAILABLE,
            f"the ledger database {redacted(url)} has no tables yet: run `dispatcher migrate`",
        )


def _times(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    now = datetime.now(UTC)
    try:
        return parse_time("--since", since, now), parse_time("--until", until, now)
    except LedgerQueryError as exc:
        raise _fail(Exit.USAGE, str(exc)) from None


def _json_line(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data).decode() + "\n")


def render_summary(summary: queries.Summary, console: Console | None = None) -> None:
    """Print a summary as a table (``dispatcher demo`` ends with this)."""
    console = console or out
    data = summary.as_dict()
    window = f"{data['since'] or 'start'} → {data['until'] or 'now'}"
    table = Table(title=f"ledger summary ({window})")
    for dim in summary.group_by:
        table.add_column(dim, overflow="fold")
    for col in (
        "turns",
        "in tok",
        "out tok",
        "cost $",
        "baseline $",
        "saved $",
        "saved %",
        "p50 ttft ms",
        "p95 ttft ms",
    ):
        table.add_column(col, justify="right", overflow="fold")
    rows = data["groups"] if summary.group_by else []
    for g in [*rows, data["total"]]:
        is_total = g is data["total"]
        keys = [
            ("total" if is_total and i == 0 else "") if is_total else str(g["group"][d] or "-")
            for i, d in enumerate(summary.group_by)
        ]
        table.add_row(
            *keys,
            f"{g['turns']:,}",
            f"{g['input_tokens']:,}",
            f"{g['output_tokens']:,}",
            g["cost_usd"],
            g["baseline_cost_usd"],
            g["savings_usd"],
            g["savings_pct"] or "-",
            _ms(g["ttft_p50_ms"]),
            _ms(g["ttft_p95_ms"]),
            style="bold" if is_total else None,
        )
    console.print(table)
    if summary.more:
        console.print(f"{summary.more} more group(s) not shown (--limit)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def demo_summary(database_url: str, console: Console | None = None) -> None:
    """Print the ledger summary of ``database_url`` by tier (for ``dispatcher demo``)."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            render_summary(queries.summary(session, tenant=None, group_by=("tier",)), console)
    finally:
        engine.dispose()


# -- commands ------------------------------------------------------------------------------

TenantOpt = Annotated[
    str | None, typer.Option("--tenant", help="only this tenant (default: every tenant)")
]


@app.command("summary")
def summary_command(
    since: Annotated[str | None, typer.Option(help="from (inclusive): 2024-11-15, ISO, 7d")] = None,
    until: Annotated[str | None, typer.Option(help="to (exclusive): same forms")] = None,
    group_by: Annotated[
        str | None,
        typer.Option("--group-by", help=f"comma-separated: {', '.join(GROUP_BY_CHOICES)}"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many groups")] = None,
    tenant: TenantOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Turns, tokens, cost, baseline, savings and p50/p95 TTFT per group."""
    settings = get_settings()
    start, end = _times(since, until)
    try:
        dims = parse_group_by(group_by)
        top = parse_limit(limit)
        split_window(start, end)
    except LedgerQueryError as exc:
        raise _fail(Exit.USAGE, str(exc).replace("group_by:", "--group-by:")) from None
    with _session(settings) as session:
        result = queries.summary(
            session, tenant=tenant, since=start, until=end, group_by=dims, limit=top
        )
    if as_json:
        sys.stdout.write(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_summary(result)


@app.command("turns")
def turns_command(
    session_id: Annotated[str | None, typer.Option("--session", help="one session's turns")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="at most this many")] = 50,
    tenant: TenantOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The latest turns (or one session's, in order)."""
    settings = get_settings()
    with _session(settings) as session:
        turns = queries.list_turns(session, tenant=tenant, session_id=session_id, limit=limit)
        rows = [queries.turn_dict(t) for t in turns]
    if as_json:
        for row in rows:
            _json_line(row)
        return
    table = Table(
        title=f"{len(rows)} turn(s)" + (f" of session {session_id}" if session_id else "")
    )
    for col in (
        "turn",
        "received (UTC)",
        "tenant",
        "session",
        "tier",
        "rule",
        "model",
        "status",
        "cost $",
        "ttft ms",
        "total ms",
    ):
        justify: Literal["right", "left"] = (
            "right" if col.endswith("ms") or col == "cost $" else "left"
        )
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        table.add_row(
            r["turn_id"],
            r["received_at"][:23].replace("T", " "),
            r["tenant"],
            r["session_id"],
            r["tier"] or "-",
            r["rule"] or "-",
            r["model"] or "-",
            r["status"] + (" (spec)" if r["speculative"] else ""),
            r["cost_usd"],
            _ms(r["ttft_ms"]),
            _ms(r["total_ms"]),
        )
    out.print(table)


@app.command("session")
def session_command(
    session_id: Annotated[str, typer.Argument(help="the session (call) id")],
    tenant: TenantOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The per-call roll-up: turns, cost, cancelled speculative cost, cost per minute, TTFT."""
    settings = get_settings()
    with _session(settings) as session:
        report = queries.session_report(session, session_id=session_id, tenant=tenant)
    if report is None:
        raise _fail(Exit.FAILED, f"session {session_id!r} has no turns in the ledger")
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    out.print(f"[bold]session {session_id}[/bold]  {report['started_at']} → {report['ended_at']}")
    lines = [
        ("turns", f"{report['turns']} ({report['speculative_turns']} speculative)"),
        ("statuses", ", ".join(f"{k} {v}" for k, v in report["statuses"].items())),
        ("tiers", ", ".join(f"{k or '-'} {v}" for k, v in report["tiers"].items())),
        (
            "cost",
            f"${report['cost_usd']} (baseline ${report['baseline_cost_usd']}, "
            f"saved {report['savings_pct'] or '-'}%)",
        ),
        ("cancelled speculative", f"${report['cancelled_speculative_cost_usd']}"),
        ("cost per minute", f"${report['cost_per_minute_usd'] or '-'}"),
        ("ttft p50 / p95", f"{_ms(report['ttft_p50_ms'])} / {_ms(report['ttft_p95_ms'])} ms"),
    ]
    for label, value in lines:
        out.print(f"  {label:22} {value}", highlight=False)
    table = Table()
    for col in ("turn", "received (UTC)", "tier", "model", "status", "cost $", "ttft ms"):
        table.add_column(col, overflow="fold")
    for t in report["turn_list"]:
        table.add_row(
            t["turn_id"],
            t["received_at"][:23].replace("T", " "),
            t["tier"] or "-",
            t["model"] or "-",
            t["status"] + (" (spec)" if t["speculative"] else ""),
            t["cost_usd"],
            _ms(t["ttft_ms"]),
        )
    out.print(table)


@app.command("export")
def export_command(
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "jsonl",
    since: Annotated[str | None, typer.Option(help="from (inclusive)")] = None,
    until: Annotated[str | None, typer.Option(help="to (exclusive)")] = None,
    tenant: TenantOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here (default: stdout)")
    ] = None,
) -> None:
    """Every turn of the window, streamed (memory stays flat for millions of rows)."""
    if fmt not in ("csv", "jsonl"):
        raise _fail(Exit.USAGE, f"--format: {fmt!r} is not csv or jsonl")
    settings = get_settings()
    start, end = _times(since, until)
    with _session(settings) as session:
        total = queries.count_turns(session, tenant=tenant, since=start, until=end)
        rows = queries.iter_turns(session, tenant=tenant, since=start, until=end)
        if output is None:
            written = _export(rows, fmt, sys.stdout, total)
        else:
            with output.open("w", encoding="utf-8", newline="") as fh:
                written = _export(rows, fmt, fh, total)
    if output is not None:
        err.print(f"{written:,} turn(s) written to {output}")


def _export(rows: Iterator[dict[str, Any]], fmt: str, fh: IO[str], total: int) -> int:
    show = err.is_terminal
    progress = Progress(
        TextColumn("export"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
    )
    written = 0
    with progress:
        task = progress.add_task("export", total=total)
        if fmt == "csv":
            writer = csv.DictWriter(fh, fieldnames=queries.EXPORT_COLUMNS)
            writer.writeheader()
            for row in rows:
                row["chain"] = orjson.dumps(row["chain"]).decode()
                row["attempts"] = orjson.dumps(row["attempts"]).decode()
                writer.writerow(row)
                written += 1
                if written % 5000 == 0:
                    progress.update(task, completed=written)
        else:
            for row in rows:
                fh.write(orjson.dumps(row).decode())
                fh.write("\n")
                written += 1
                if written % 5000 == 0:
                    progress.update(task, completed=written)
        progress.update(task, completed=written)
    return written


def migrate_command(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Create or upgrade the ledger's tables (Alembic) in $DISPATCHER_DATABASE_URL."""
    settings = get_settings()
    try:
        now = migrate(settings, revision)
    except (OperationalError, InterfaceError) as exc:
        raise _fail(
            Exit.UNAVAILABLE,
            f"cannot reach the ledger database {redacted(settings.database_url)}: "
            f"{str(exc.orig or exc).strip().splitlines()[0]}",
        ) from None
    out.print(f"ledger database {redacted(settings.database_url)} at revision {now}")


def writer_command(
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=10_000)] = DEFAULT_BATCH,
    consumer: Annotated[
        str | None, typer.Option(help="name in the consumer group (default: host-pid)")
    ] = None,
    claim_idle_ms: Annotated[
        int, typer.Option("--claim-idle-ms", min=1, help="take over entries pending this long")
    ] = 30_000,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="exit once the stream is drained")
    ] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="default: when a terminal")
    ] = None,
) -> None:
    """Write ledger events from the Redis stream to the database, in batches, idempotently."""
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        stats = run_writer(
            settings,
            batch_size=batch_size,
            consumer=consumer,
            claim_idle_ms=claim_idle_ms,
            until_idle=until_idle,
            show_progress=progress,
        )
    except LedgerNotMigrated as exc:
        raise _fail(Exit.UNAVAILABLE, str(exc)) from None
    err.print(
        f"ledger writer: {stats.events:,} events, {stats.inserted:,} new rows, "
        f"{stats.updated:,} updated, {stats.unchanged:,} duplicates, {stats.dead} dead-lettered"
    )


def bench_command(
    events: Annotated[int, typer.Option(help="backlog the writer drains")] = 100_000,
    summary_rows: Annotated[
        int, typer.Option("--summary-rows", help="rows summarised")
    ] = 1_000_000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = DEFAULT_BATCH,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", help="a Postgres server; a throwaway database is made on it"
        ),
    ] = None,
    keep: Annotated[bool, typer.Option(help="keep the benchmark database")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Writer rows/s into Postgres, a backlog drained in bounded memory, summary time."""
    from dispatcher.ledger.bench import BenchError, run_ledger_bench

    settings = get_settings()
    try:
        result = run_ledger_bench(
            database_url=database_url or settings.database_url,
            redis_url=settings.redis_url,
            events=events,
            summary_rows=summary_rows,
            batch_size=batch_size,
            keep=keep,
            console=err,
        )
    except BenchError as exc:
        raise _fail(Exit.USAGE, str(exc)) from None
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from dispatcher.ledger.bench import render

    render(result, out)


def standalone() -> typer.Typer:
    """The ledger's commands as one program (``python -m dispatcher.ledger.cli``): the same
    commands ``dispatcher`` wires, usable on their own."""
    root = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    root.add_typer(app, name="ledger")
    root.command("migrate")(migrate_command)
    root.command("ledger-writer")(writer_command)
    root.command("bench-ledger")(bench_command)
    return root


if __name__ == "__main__":
    standalone()()
