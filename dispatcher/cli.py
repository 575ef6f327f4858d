"""The ``dispatcher`` command line: thin wrappers that parse, call and print."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from dispatcher.bench.command import group_default, load_command
from dispatcher.errors import PolicyError
from dispatcher.policy import Policy, load_policy
from dispatcher.settings import get_settings


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the command ran and found a problem (bad policy, bad dataset line)
    USAGE = 2  # bad arguments



T = TypeVar("T")
app = typer.Typer(
    help="Route each voice-bot turn to the right LLM tier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Policy file commands.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks: `dispatcher bench` runs the load test (also `bench load`); "
    "`bench route` times routing decisions; `bench ledger` the ledger writer."
)
app.add_typer(policy_app, name="policy")
keys_app = typer.Typer(help="API keys: each maps to a tenant; stored hashed.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
bench_app.command("load")(load_command)
bench_app.callback(invoke_without_command=True)(group_default(load_command))

out = Console()
err = Console(stderr=True)

PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", help="policy file (default: $DISPATCHER_POLICY or the built-in one)"),
]


def _policy(path: Path | None) -> Policy:
    source = path or get_settings().policy
    try:
        return load_policy(source)
    except PolicyError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(Exit.FAILED) from None


@policy_app.command("check")
def policy_check(file: Annotated[Path, typer.Argument(help="policy YAML file")]) -> None:
    """Validate a policy file: print every problem and exit 1, or a summary of the tiers."""
    try:
        policy = load_policy(file)
    except PolicyError as exc:
        for p in exc.problems:
            sys.stderr.write(f"{exc.source}: {p}\n")
        sys.stderr.write(f"{len(exc.problems)} problem(s) in {exc.source}\n")
        raise typer.Exit(Exit.FAILED) from None
    table = Table(title=f"{file} (version {policy.version}, prices as of {policy.prices_as_of})")
    for col in ("tier", "queue", "chain", "primary price in/out per 1M", "max out", "hedge ms"):
        table.add_column(col)
    for name, tier in policy.tiers.items():
        primary = policy.models[tier.models[0]].price
        table.add_row(
            name,
            policy.queue(name),
            " → ".join(tier.models),
            f"${primary.input} / ${primary.output}",
            str(tier.max_output_tokens),
            str(tier.hedge_ms or "-"),
        )
    out.print(table)
    out.print(
        f"{len(policy.rules)} rules, default tier {policy.default_tier}, "
        f"baseline model {policy.baseline_model}"
    )


@app.command()
def route(
    text: Annotated[str | None, typer.Argument(help="the user's turn")] = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state", help="conversation state as key=value, e.g. last_bot_act=ask_yes_no"
        ),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option("--after", help="session snapshot: the tier the previous turn reached"),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="JSON lines in (text, messages, state, session, id); decisions out"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the decision as JSON")] = False,
    policy_path: PolicyOpt = None,
) -> None:
    """Dry-run the router on one turn (or a file of turns) and show the rule that fired."""
    from dispatcher.domain import SessionSnapshot
    from dispatcher.evaluation import (
        DatasetError,
        decision_json,
        parse_example,
        parse_state_pairs,
        route_example,
    )
    from dispatcher.routing import Router

    policy = _policy(policy_path)
    router = Router(policy)
    if file is not None:
        failed = False
        with file.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    ex = parse_example(line, lineno)
                except DatasetError as exc:
                    failed = True
                    sys.stdout.write(json.dumps({"line": lineno, "error": str(exc)}) + "\n")
                    continue
                d = route_example(router, ex)
                sys.stdout.write(json.dumps(decision_json(ex.id, d)) + "\n")
        raise typer.Exit(Exit.FAILED if failed else Exit.OK)
    if text is None:
        err.print("give a TEXT or --file")
        raise typer.Exit(Exit.USAGE)
    try:
        st = parse_state_pairs(state or [])
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(Exit.USAGE) from None
    if after is not None and after not in policy.tiers:
        err.print(f"--after {after!r}: unknown tier (known: {', '.join(policy.tiers)})")
        raise typer.Exit(Exit.USAGE)
    session = SessionSnapshot(tier=after, turns_ago=1) if after else None
    d = router.route(text, (), st, session)
    if as_json:
        sys.stdout.write(json.dumps(decision_json(None, d)) + "\n")
        return
    out.print(
        f"tier [bold]{d.tier}[/bold]  model [bold]{d.model}[/bold]  "
        f"rule [bold]{d.rule}[/bold]  confidence {d.confidence:.2f}"
    )
    out.print(f"chain: {' → '.join(d.chain)}")
    out.print(f"features: {d.features}", highlight=False)


@app.command("eval")
def eval_cmd(
    dataset: Annotated[Path, typer.Argument(help="JSON lines with text and expected_tier")],
    plot: Annotated[Path | None, typer.Option("--plot", help="write a PNG here")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    mistakes: Annotated[int, typer.Option("--mistakes", help="show this many mistakes")] = 0,
    policy_path: PolicyOpt = None,
) -> None:
    """Routing quality on a labelled dataset: confusion matrix, rates, cost vs baseline."""
    from dispatcher.evaluation import DatasetError, evaluate, plot_report, read_examples

    policy = _policy(policy_path)
    try:
        examples = list(read_examples(dataset))
        report = evaluate(policy, examples)
    except (DatasetError, OSError) as exc:
        sys.stderr.write(f"{dataset}: {exc}\n")
        raise typer.Exit(Exit.FAILED) from None
    summary = report.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        table = Table(title=f"{dataset}: expected (rows) vs routed (columns)")
        table.add_column("expected")
        for t in report.tiers:
            table.add_column(t, justify="right")
        for e in report.tiers:
            table.add_row(e, *(str(report.matrix[e][r]) for r in report.tiers))
        out.print(table)
        for key in (
            "turns",
            "accuracy",
            "under_routed",
            "over_routed",
            "complex_to_fast",
            "complex_to_reasoning",
            "simple_to_reasoning_or_long",
        ):
            out.print(f"{key:30} {summary[key]}")
        out.print(
            f"cost of routed mix ${summary['routed_cost_usd']} vs all-baseline "
            f"${summary['baseline_cost_usd']} (saves {summary['savings_pct']}%)"
        )
    for ex, d in report.mistakes[:mistakes]:
        sys.stderr.write(
            f"{ex.id}: expected {ex.expected_tier} got {d.tier} ({d.rule}): {ex.text[:150]!r}\n"
        )
    if plot is not None:
        plot_report(report, plot)
        out.print(f"plot written to {plot}")


@bench_app.command("route")
def bench_route(
    iterations: Annotated[int, typer.Option("--iterations", "-n")] = 20000,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    policy_path: PolicyOpt = None,
) -> None:
    """Time routing decisions: p50/p99 per decision, for a 30-word turn and a mixed set."""
    from dispatcher.routing.bench import run_route_bench

    result = run_route_bench(_policy(policy_path), iterations)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    table = Table(title=f"routing decision time ({iterations} decisions per case)")
    for col in ("case", "words", "p50 µs", "p99 µs", "max µs", "decisions/s"):
        table.add_column(col, justify="right")
    for case in result["cases"]:
        table.add_row(
            case["name"],
            str(case["words"]),
            f"{case['p50_us']:.1f}",
            f"{case['p99_us']:.1f}",
            f"{case['max_us']:.1f}",
            f"{case['per_second']:,.0f}",
        )
    out.print(table)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="ingress processes")] = 1,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    """Run the ingress API (FastAPI on uvicorn)."""
    import uvicorn

    from dispatcher.serving import loop_and_http

    loop, http = loop_and_http()
    uvicorn.run(
        "dispatcher.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        loop=loop,
        http=http,
        access_log=False,
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    tier: Annotated[str, typer.Option(help="the tier whose queue (turns.<tier>) to consume")],
    concurrency: Annotated[int | None, typer.Option(help="concurrent turns per process")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "info",
) -> None:
    """Run the workers of one tier: ``--processes N``, ``--engine native|celery``, ``--grace S``.

    The native engine (default) takes the tier's Celery messages on each process's event
    loop; ``--engine celery`` runs ``celery -A workers worker -Q turns.<tier>`` instead.
    """
    policy = _policy(None)
    if tier not in policy.tiers:
        err.print(f"--tier {tier!r}: unknown tier (known: {', '.join(policy.tiers)})")
        raise typer.Exit(Exit.USAGE)
    argv = [sys.executable, "-m", "workers", "--tier", tier, "--loglevel", loglevel]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    # exec: the worker becomes this process, so signals and exit codes are its own
    os.execv(sys.executable, [*argv, *ctx.args])


def _with_redis(fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(redis)`` against the Redis of the settings."""
    from dispatcher.auth import with_redis

    url = get_settings().redis_url
    try:
        return with_redis(url, fn)
    except OSError as exc:
        err.print(f"cannot reach Redis at {url}: {exc}")
        raise typer.Exit(Exit.FAILED) from None


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="tenant the key belongs to")]) -> None:
    """Create an API key for a tenant and print it (it is shown only once)."""
    from dispatcher.auth import create_key

    try:
        key = _with_redis(lambda r: create_key(r, tenant))
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(Exit.USAGE) from None
    sys.stdout.write(key + "\n")


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None) -> None:
    """List key ids and their tenants (never the keys)."""
    from dispatcher.auth import list_keys

    table = Table("key id", "tenant")
    for info in _with_redis(lambda r: list_keys(r, tenant)):
        table.add_row(info.key_id, info.tenant)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="the key, or its id")]) -> None:
    """Revoke a key."""
    from dispatcher.auth import revoke_key

    if not _with_redis(lambda r: revoke_key(r, key)):
        err.print(f"no key matches {key[:8]}...")
        raise typer.Exit(Exit.FAILED)
    out.print("revoked")


@app.command()
def demo() -> None:
    """Start everything on this machine and play a scripted voice call through it."""
    from dispatcher.demo import run_demo

    # wide enough for the per-turn table even when output is not a terminal
    console = Console(width=max(out.width, 132))
    raise typer.Exit(run_demo(console))


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8900,
    ttft_ms: Annotated[int, typer.Option("--ttft-ms", help="default time to first token")] = 50,
    itl_ms: Annotated[int, typer.Option("--itl-ms", help="default time between tokens")] = 10,
    tokens: Annotated[int, typer.Option("--tokens", help="default answer length")] = 20,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    """Run the provider simulator: OpenAI, Anthropic and Gemini wire formats on one port."""
    from dispatcher.sim import SimDefaults
    from dispatcher.sim.server import run

    out.print(
        f"provider simulator on http://{host}:{port} "
        f"(ttft {ttft_ms} ms, itl {itl_ms} ms, {tokens} tokens)"
    )
    run(host, port, SimDefaults(ttft_ms=ttft_ms, itl_ms=itl_ms, tokens=tokens), log_level)


_LEDGER_COMMANDS = frozenset({"ledger", "migrate", "ledger-writer", "bench"})


def _add_ledger_commands() -> None:
    from dispatcher.ledger import cli as ledger_cli

    app.add_typer(ledger_cli.app, name="ledger")
    app.command("migrate")(ledger_cli.migrate_command)
    app.command("ledger-writer")(ledger_cli.writer_command)
    bench_app.command("ledger")(ledger_cli.bench_command)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # The ledger's commands import SQLAlchemy (most of a second): add them only when the
    # command line may need them, so that `dispatcher route` and the like start fast.
    if not args or args[0] in _LEDGER_COMMANDS or args[0].startswith("-"):
        _add_ledger_commands()
    app(args=args)


if __name__ == "__main__":
    main()
