"""``run_load_bench``: start (or attach to) the stack, load it direct then through, measure.

For each concurrency C, in one run and against one simulator:

1. **direct**: C users stream the simulator's ``/v1/chat/completions`` themselves;
2. **through**, for each endpoint asked (``chat``: the ingress's ``/v1/chat/completions``
   with ``model: auto``; ``turns``: its native ``/v1/turns``): the same users, the same
   text, the same client code, through ingress, Redis and a worker.

Each phase reports the client's view (TTFT percentiles, turns/s, inter-token gaps,
errors), the CPU time per turn of each process group and the peak RSS of each group
(:mod:`dispatcher.bench.procs`). Through phases also carry the difference to direct.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from dispatcher.bench import procs
from dispatcher.bench.client import Target, openai_target, turns_target
from dispatcher.bench.defaults import DEFAULT_TEXT, ENDPOINTS
from dispatcher.bench.load import PhaseRun, run_phase
from dispatcher.bench.stats import difference, summarize
from dispatcher.bench.targets import check_targets
from dispatcher.errors import ConfigError
from dispatcher.providers import SIM_KEY
from dispatcher.settings import get_settings

#: A short FAQ-style voice turn: the router sends it to the fast tier.
BENCH_TENANT = "bench"

#: (phase name, turns done so far, turns in the phase) -> None; for progress bars.
Progress = Callable[[str, int, int], None]


@dataclass
class LoadBenchConfig:
    """What to run. ``turns=None`` picks ``max(100, 10 * C)`` turns per phase."""

    concurrency: Sequence[int] = (1, 10, 50, 200)
    turns: int | None = None
    endpoints: Sequence[str] = ENDPOINTS
    ttft_ms: int = 50
    itl_ms: int = 10
    tokens: int = 20
    text: str = DEFAULT_TEXT
    timeout_s: float = 30.0
    redis_url: str | None = None
    #: attach to a running stack instead of starting one (all three needed)
    ingress_url: str | None = None
    sim_url: str | None = None
    api_key: str | None = None
    worker_concurrency: int | None = None
    #: worker processes per tier, and the publishers' coalescing window (None: settings')
    worker_processes: int = 1
    worker_engine: str = "native"
    coalesce_ms: float | None = None
    ingress_workers: int = 1
    ledger_writer: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    def turns_for(self, c: int) -> int:
        return self.turns if self.turns is not None else max(100, 10 * c)


@dataclass
class _Attached:
    ingress_url: str
    sim_url: str
    redis_url: str
    api_key: str
    groups: procs.Groups
    started: bool


def run_load_bench(config: LoadBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole benchmark and return its results as plain JSON-able data."""
    for endpoint in config.endpoints:
        if endpoint not in ENDPOINTS:
            raise ConfigError(f"unknown endpoint {endpoint!r}; use one of {', '.join(ENDPOINTS)}")
    if any(c < 1 for c in config.concurrency):
        raise ConfigError(f"concurrency must be at least 1, got {list(config.concurrency)}")
    with _stack(config) as st:
        return _run(config, st, progress)


@contextlib.contextmanager
def _stack(config: LoadBenchConfig) -> Iterator[_Attached]:
    if config.ingress_url or config.sim_url:
        if not (config.ingress_url and config.sim_url and config.api_key):
            raise ConfigError("attaching needs --ingress-url, --sim-url and --api-key together")
        redis_url = config.redis_url or os.environ.get(
            "DISPATCHER_REDIS_URL", "redis://127.0.0.1:6379/0")
        _set_sim_latency(config.sim_url, config)
        roots = {
            "ingress": _pid_of(config.ingress_url),
            "workers": procs.pids_by_cmdline("-m workers", "--tier"),
            "sim": _pid_of(config.sim_url),
            "redis": _redis_pid(redis_url),
        }
        yield _Attached(config.ingress_url, config.sim_url, redis_url, config.api_key,
                        procs.Groups(roots), started=False)
        return
    from dispatcher.stack import running_stack

    sim_args = ["--ttft-ms", str(config.ttft_ms), "--itl-ms", str(config.itl_ms),
                "--tokens", str(config.tokens)]
    env = dict(config.extra_env)
    if config.coalesce_ms is None:  # what the workers will read: record it with the result
        config.coalesce_ms = get_settings().coalesce_ms
    env["DISPATCHER_COALESCE_MS"] = repr(float(config.coalesce_ms))
    with running_stack(
        redis_url=config.redis_url,
        sim_args=sim_args,
        worker_concurrency=config.worker_concurrency,
        worker_args=["--processes", str(config.worker_processes),
                     "--engine", config.worker_engine],
        ingress_workers=config.ingress_workers,
        ledger_writer=config.ledger_writer,
        extra_env=env,
    ) as stack:
        pids = stack.pids()
        roots = {
            "ingress": [pids["ingress"]],
            "workers": [pid for name, pid in pids.items() if name.startswith("worker-")],
            "sim": [pids["sim"]],
            "redis": [pids["redis"]] if "redis" in pids else _redis_pid(stack.redis_url),
        }
        if "ledger-writer" in pids:
            roots["ledger_writer"] = [pids["ledger-writer"]]
        yield _Attached(stack.ingress_url, stack.sim_url, stack.redis_url,
                        _create_key(stack.redis_url), procs.Groups(roots), started=True)


def _run(config: LoadBenchConfig, st: _Attached, progress: Progress | None) -> dict[str, Any]:
    model = _probe_model(st, config.text)
    idle_rss = st.groups.rss_mib()
    levels = []
    runner = _runner()
    try:
        for c in config.concurrency:
            turns = config.turns_for(c)
            direct_targets = [openai_target("direct", st.sim_url, model, config.text, SIM_KEY)] * c
            direct = _phase(runner, "direct", c, direct_targets, turns, config, st, progress)
            level: dict[str, Any] = {"concurrency": c, "turns": turns, "direct": direct,
                                     "through": {}}
            for endpoint in config.endpoints:
                targets = _through_targets(endpoint, st, config.text, c)
                through = _phase(runner, endpoint, c, targets, turns, config, st, progress)
                through["added_ttft_ms"] = difference(through["ttft_ms"], direct["ttft_ms"])
                through["throughput_vs_direct"] = _ratio(through["turns_per_s"],
                                                         direct["turns_per_s"])
                grown = through["peak_rss_mib"].get("ingress", 0) - idle_rss.get("ingress", 0)
                through["ingress_kib_per_stream"] = round(max(grown, 0) * 1024 / c, 1)
                level["through"][endpoint] = through
            levels.append(level)
    finally:
        runner.close()
    result: dict[str, Any] = {
        "config": {k: v for k, v in asdict(config).items() if k not in ("api_key", "extra_env")},
        "model": model,
        "cpus": os.cpu_count(),
        "started_stack": st.started,
        "processes": {name: len(pids) for name, pids in st.groups.members().items()},
        "idle_rss_mib": _round(idle_rss),
        "hwm_rss_mib": _round(st.groups.rss_mib("VmHWM")),
        "levels": levels,
        "routing": _route_bench(),
    }
    result["targets"] = check_targets(result)
    return result


def _phase(
    runner: asyncio.Runner, name: str, c: int, targets: Sequence[Target], turns: int,
    config: LoadBenchConfig, st: _Attached, progress: Progress | None,
) -> dict[str, Any]:
    label = f"C={c} {name}"
    before: dict[str, procs.Snapshot] = {}
    done = 0

    def on_start() -> None:
        before["cpu"] = st.groups.snapshot()
        before["client"] = procs.Snapshot({"client": procs.cpu_seconds(os.getpid())})

    def on_turn(_: object) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(label, done, turns)

    if progress is not None:
        progress(label, 0, turns)
    with procs.RssSampler(st.groups) as sampler:
        run: PhaseRun = runner.run(
            run_phase(targets, turns, timeout=config.timeout_s, on_start=on_start,
                      on_turn=on_turn))
        after = st.groups.snapshot()
        client_after = procs.cpu_seconds(os.getpid())
    summary = summarize(run.samples, run.wall_s)
    n = max(len(run.samples), 1)
    cpu = {g: round((after.cpu.get(g, 0.0) - s) * 1000 / n, 3)
           for g, s in before["cpu"].cpu.items()}
    cpu["client"] = round((client_after - before["client"].cpu["client"]) * 1000 / n, 3)
    if "ingress" in cpu and "workers" in cpu:
        cpu["ingress+workers"] = round(cpu["ingress"] + cpu["workers"], 3)
    summary["cpu_ms_per_turn"] = cpu
    summary["peak_rss_mib"] = _round(sampler.peak)
    summary["warmup_errors"] = len(run.warmup_errors)
    return summary


def _through_targets(endpoint: str, st: _Attached, text: str, c: int) -> list[Target]:
    if endpoint == "chat":
        return [openai_target("chat", st.ingress_url, "auto", text, st.api_key)] * c
    # one voice session per user, as a bot would send: the session's memory is read and
    # updated on every turn, as in production
    return [turns_target(st.ingress_url, text, st.api_key, f"bench-{c}-{i}") for i in range(c)]


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _probe_model(st: _Attached, text: str) -> str:
    """The model the ingress routes ``text`` to (the direct phase calls the same one)."""
    from dispatcher.client import stream_turn

    async def go() -> Any:
        async with httpx.AsyncClient() as client:
            body = {"session_id": "bench-probe", "text": text}
            return await stream_turn(client, st.ingress_url, st.api_key, body, timeout=30)

    result = asyncio.run(go())
    terminal = result.terminal
    if terminal is None or terminal.event != "done":
        raise ConfigError(f"a probe turn through {st.ingress_url} failed: "
                          f"{terminal.data if terminal else 'no terminal event'}")
    return str(terminal.data.get("model") or result.route.get("model"))


def _create_key(redis_url: str) -> str:
    from dispatcher.auth import create_key

    async def go() -> str:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        try:
            return await create_key(client, BENCH_TENANT)
        finally:
            await client.aclose()

    return asyncio.run(go())


def _set_sim_latency(sim_url: str, config: LoadBenchConfig) -> None:
    body = {"model": "*", "ttft_ms": config.ttft_ms, "itl_ms": config.itl_ms,
            "tokens": config.tokens}
    httpx.post(f"{sim_url}/admin/latency", json=body, timeout=5).raise_for_status()


def _pid_of(url: str) -> list[int]:
    port = urlsplit(url).port
    pid = procs.listening_pid(port) if port else None
    return [pid] if pid else []


def _redis_pid(url: str) -> list[int]:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        pid = int(info["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return []
    finally:
        client.close()
    return [pid] if os.path.exists(f"/proc/{pid}") else []


def _route_bench() -> dict[str, Any]:
    from dispatcher.policy import load_policy
    from dispatcher.routing.bench import run_route_bench
    from dispatcher.settings import get_settings

    return run_route_bench(load_policy(get_settings().policy), 5000)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _round(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in values.items()}
