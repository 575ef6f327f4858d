"""``dispatcher bench load`` (and the ``bench`` group's default): the typer command."""

from __future__ import annotations

import inspect
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# the runner and the report pull in httpx, redis and matplotlib: they are imported when the
# command runs, so that `dispatcher route` and friends start fast
from dispatcher.bench.defaults import DEFAULT_TEXT, ENDPOINTS
from dispatcher.errors import DispatcherError

#: exit codes, as dispatcher.cli's
OK, FAILED, USAGE = 0, 1, 2


def load_command(
    concurrency: Annotated[
        list[int] | None,
        typer.Option("--concurrency", "-c",
                     help="concurrent streams; repeat (default 1 10 50 200)"),
    ] = None,
    turns: Annotated[
        int | None,
        typer.Option("--turns", "-n", help="turns per phase (default max(100, 10 x C))"),
    ] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", "-e", help="ingress endpoint: chat or turns; repeat "
                     "(default both)"),
    ] = None,
    ttft_ms: Annotated[int, typer.Option("--ttft-ms", help="simulator time to first token")] = 50,
    itl_ms: Annotated[int, typer.Option("--itl-ms", help="simulator time between tokens")] = 10,
    tokens: Annotated[int, typer.Option("--tokens", help="simulator answer length")] = 20,
    text: Annotated[str, typer.Option("--text", help="the user turn sent")] = DEFAULT_TEXT,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds per turn")] = 30.0,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis to use (default: the settings')")
    ] = None,
    ingress_url: Annotated[
        str | None, typer.Option("--ingress-url", help="attach: a running ingress")
    ] = None,
    sim_url: Annotated[
        str | None, typer.Option("--sim-url", help="attach: its simulator")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="attach: an API key of the ingress")
    ] = None,
    worker_concurrency: Annotated[
        int | None, typer.Option("--worker-concurrency", help="turns per worker process")
    ] = None,
    worker_processes: Annotated[
        int, typer.Option("--worker-processes", min=1, help="worker processes per tier")
    ] = 1,
    worker_engine: Annotated[
        str, typer.Option("--worker-engine", help="native or celery (see `dispatcher worker`)")
    ] = "native",
    coalesce_ms: Annotated[
        float | None, typer.Option("--coalesce-ms", min=0,
                                   help="workers' coalescing window (default: the settings')")
    ] = None,
    ledger_writer: Annotated[
        bool, typer.Option("--ledger-writer/--no-ledger-writer",
                           help="also run the ledger writer (needs `dispatcher migrate`)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    plot_file: Annotated[
        Path | None, typer.Option("--plot", help="write a PNG: added TTFT and throughput vs C")
    ] = None,
) -> None:
    """Load test: closed-loop streams direct to the simulator, then through the dispatcher."""
    from dispatcher.bench.report import plot, results_table, targets_table
    from dispatcher.bench.runner import LoadBenchConfig, run_load_bench

    if worker_engine not in ("native", "celery"):
        Console(stderr=True).print(
            f"--worker-engine must be native or celery, not {worker_engine!r}")
        raise typer.Exit(USAGE)
    config = LoadBenchConfig(
        concurrency=tuple(concurrency or (1, 10, 50, 200)),
        turns=turns,
        endpoints=tuple(endpoint or ENDPOINTS),
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        tokens=tokens,
        text=text,
        timeout_s=timeout,
        redis_url=redis_url,
        ingress_url=ingress_url,
        sim_url=sim_url,
        api_key=api_key,
        worker_concurrency=worker_concurrency,
        worker_processes=worker_processes,
        worker_engine=worker_engine,
        coalesce_ms=coalesce_ms,
        ledger_writer=ledger_writer,
    )
    err = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    tasks: dict[str, object] = {}
    try:
        with Progress(*columns, console=err, refresh_per_second=4, transient=as_json) as bar:
            err.print(f"starting the stack (Redis, simulator, ingress, {worker_processes} worker "
                      "process(es) per tier)..."
                      if ingress_url is None else f"attaching to {ingress_url}")

            def progress(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.update(tasks[label], completed=done)  # type: ignore[arg-type]

            result = run_load_bench(config, progress)
    except DispatcherError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(FAILED) from None
    if plot_file is not None:
        plot(result, plot_file)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    out = Console() if sys.stdout.isatty() else Console(width=200)
    out.print(results_table(result))
    out.print(targets_table(result))
    if plot_file is not None:
        out.print(f"plot written to {plot_file}")


def group_default(command: Callable[..., None] = load_command) -> Callable[..., None]:
    """A typer group callback that runs ``command`` when no subcommand is named.

    ``bench_app.callback(invoke_without_command=True)(group_default())`` makes
    ``dispatcher bench [OPTIONS]`` the load test while ``dispatcher bench route`` still
    works; the callback takes exactly ``command``'s options.
    """
    sig = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)

    def callback(ctx: typer.Context, **kwargs: Any) -> None:
        if ctx.invoked_subcommand is None:
            command(**kwargs)

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  annotation=typer.Context)
    params = [p.replace(annotation=hints[p.name]) for p in sig.parameters.values()]
    callback.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[ctx_param, *params], return_annotation=None)
    callback.__annotations__ = {"ctx": typer.Context, **{p.name: hints[p.name] for p in params}}
    callback.__doc__ = command.__doc__
    return callback
