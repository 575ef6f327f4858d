"""Starting the whole stack on one machine: Redis, the simulator, the ingress, the workers.

Used by ``dispatcher demo`` and ``dispatcher bench``. Every process it starts is a child
that it stops again (SIGTERM, then SIGKILL) when the context ends, on an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from dispatcher.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_reachable(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class Child:
    """One started process, its output captured to a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Stack:
    """Addresses of a running stack."""

    redis_url: str
    sim_url: str
    ingress_url: str
    database_url: str
    children: list[Child]
    workdir: Path
    started_redis: bool

    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for c in self.children}


class Launcher:
    """Starts children with a common environment and stops them all on exit."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str]) -> Child:
        log = self.workdir / f"{name}.log"
        fh = log.open("wb")
        proc = subprocess.Popen(
            list(argv),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
            start_new_session=True,
        )
        fh.close()
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()


def wait_until(
    check: Callable[[], object], what: str, timeout: float, child: Child | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.proc.poll() is not None:
            raise ConfigError(
                f"{child.name} exited with {child.proc.returncode}:\n{child.output()[-2000:]}"
            )
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    tail = child.output()[-2000:] if child is not None else ""
    raise ConfigError(f"{what} did not become ready within {timeout:.0f} s\n{tail}")


def _wait_for_workers(broker_url: str, workers: list[Child], timeout: float = 60) -> None:
    """Until every worker process announced itself in Redis (``workers.resources``)."""
    import orjson
    import redis

    prefix = "dispatcher:workers:"
    client = redis.Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for w in workers:
                if w.proc.poll() is not None:
                    raise ConfigError(
                        f"{w.name} exited with {w.proc.returncode}:\n{w.output()[-2000:]}"
                    )
            pids = {w.proc.pid for w in workers}
            up = set()
            for key in client.scan_iter(match=prefix + "*", count=1000):
                raw: bytes | None = client.get(key)  # type: ignore[assignment]
                if raw is None:
                    continue
                record = orjson.loads(raw)
                for pid in (record.get("pid"), record.get("ppid")):
                    if pid in pids:
                        up.add(pid)
            if len(up) >= len(pids):
                return
            time.sleep(0.1)
        raise ConfigError(f"only some workers answered within {timeout:.0f} s")
    finally:
        client.close()


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


@contextlib.contextmanager
def running_stack(
    *,
    redis_url: str | None = None,
    database_url: str | None = None,
    tiers: Sequence[str] = ("fast", "standard", "reasoning", "long_context"),
    sim_args: Sequence[str] = (),
    worker_concurrency: int | None = None,
    worker_args: Sequence[str] = (),
    ingress_workers: int = 1,
    ledger_writer: bool = True,
    policy: str | None = None,
    workdir: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start (or attach to) Redis, then the simulator, ingress, workers and ledger writer."""
    tmp = workdir or Path(tempfile.mkdtemp(prefix="dispatcher-"))
    env = dict(os.environ)
    env.update(extra_env or {})
    py = sys.executable
    launcher = Launcher(tmp, env)
    started_redis = False
    try:
        url = redis_url or env.get("DISPATCHER_REDIS_URL", "redis://127.0.0.1:6379/0")
        if not redis_reachable(url):
            server = shutil.which("redis-server")
            if server is None:
                raise ConfigError(
                    f"no Redis answers at {url} and redis-server is not installed; install it "
                    "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
                    "or set DISPATCHER_REDIS_URL to a running Redis"
                )
            port = free_port()
            child = launcher.start(
                "redis",
                [
                    server,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
            )
            url = f"redis://127.0.0.1:{port}/0"
            wait_until(lambda: redis_reachable(url), "redis-server", 10, child)
            started_redis = True
        db_url = (
            database_url or env.get("DISPATCHER_DATABASE_URL") or (f"sqlite:///{tmp / 'ledger.db'}")
        )
        env.update(DISPATCHER_REDIS_URL=url, DISPATCHER_DATABASE_URL=db_url)
        if policy:
            env["DISPATCHER_POLICY"] = policy

        sim_port = free_port()
        sim = launcher.start(
            "sim", [py, "-m", "dispatcher", "sim", "--port", str(sim_port), *sim_args]
        )
        sim_url = f"http://127.0.0.1:{sim_port}"
        env["DISPATCHER_SIM_URL"] = sim_url
        wait_until(lambda: _http_ok(f"{sim_url}/health"), "simulator", 20, sim)

        if ledger_writer:
            migrate = subprocess.run(
                [py, "-m", "dispatcher", "migrate"],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                check=False,
            )
            if migrate.returncode != 0:
                raise ConfigError(f"dispatcher migrate failed:\n{migrate.stderr[-2000:]}")
            launcher.start("ledger-writer", [py, "-m", "dispatcher", "ledger-writer"])

        workers = []
        for tier in tiers:
            argv = [py, "-m", "workers", "--tier", tier, "--loglevel", "warning"]
            if worker_concurrency:
                argv += ["--concurrency", str(worker_concurrency)]
            argv += list(worker_args)
            workers.append(launcher.start(f"worker-{tier}", argv))

        port = free_port()
        ingress = launcher.start(
            "ingress",
            [
                py,
                "-m",
                "dispatcher",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(ingress_workers),
            ],
        )
        ingress_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _http_ok(f"{ingress_url}/readyz"), "ingress", 30, ingress)
        _wait_for_workers(url, workers)
        yield Stack(url, sim_url, ingress_url, db_url, launcher.children, tmp, started_redis)
    finally:
        launcher.stop_all()
