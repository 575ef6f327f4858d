"""Running the native engine: one process, or a supervised pool of them.

:func:`run_process` runs one worker process: the event loop (uvloop when importable), the
:class:`~workers.resources.Resources` on it, and a :class:`~workers.consumer.Consumer`.
``SIGTERM`` or ``SIGINT`` is a warm shutdown, as in Celery: take nothing more, let the
running turns finish within the grace period, then end the rest with ``worker_lost``; a
second signal ends them at once.

:func:`run_pool` runs ``processes`` such processes for the same queues (one event loop
each, so a tier can use every core) and restarts one that dies, after a pause that grows
while children keep dying; a signal is passed on to every child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from dispatcher import gctune
from dispatcher.policy import Policy
from dispatcher.settings import Settings
from workers.app import visibility_timeout
from workers.consumer import Consumer
from workers.resources import Resources, _new_loop

log = logging.getLogger(__name__)

#: Longest pause between attempts to reach Redis at start.
OPEN_RETRY_MAX_S = 5.0
#: Seconds the running turns get to finish after a stop signal.
DEFAULT_GRACE_S = 30.0
#: Restart back-off of a pool child that died: doubles per quick death, up to the cap.
RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0
#: A child that lived this long is healthy again: the back-off starts over.
HEALTHY_AFTER_S = 60.0


def run_process(settings: Settings, policy: Policy, tiers: Sequence[str], concurrency: int,
                grace_s: float = DEFAULT_GRACE_S) -> int:
    """Run one native worker process until it is signalled to stop; its exit code."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(settings, policy, tiers, concurrency, grace_s))
    finally:
        loop.close()


async def _serve(settings: Settings, policy: Policy, tiers: Sequence[str], concurrency: int,
                 grace_s: float) -> int:
    identity = {"engine": "native", "tiers": list(tiers), "concurrency": concurrency}
    loop = asyncio.get_running_loop()
    consumer: Consumer | None = None
    stopped = asyncio.Event()  # the first signal
    grace = asyncio.Event()  # a second signal: stop waiting for the running turns

    def on_signal(signum: int) -> None:
        if not stopped.is_set():
            stopped.set()
            running = consumer.running if consumer is not None else 0
            log.info("%s: warm shutdown, %d turn(s) running (signal again to end them)",
                     signal.Signals(signum).name, running)
            if consumer is not None:
                consumer.stop()
        else:
            grace.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    res = await _open(settings, policy, identity, stopped)
    if res is None:
        return 0
    queues = [policy.queue(t) for t in tiers]
    consumer = Consumer(res, queues, concurrency, visibility_timeout(policy))
    if stopped.is_set():
        consumer.stop()
    gctune.tune()
    log.info("worker %s (native engine; %s; up to %d turns at once) ready.",
             res.worker_id, ", ".join(queues), concurrency)
    try:
        await consumer.run()
        waiter = asyncio.ensure_future(grace.wait())
        drain = asyncio.ensure_future(consumer.drain(grace_s))
        await asyncio.wait({waiter, drain}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            drain.cancel()
            left = await consumer.drain(0)
        else:
            left = drain.result()
        waiter.cancel()
        if left:
            log.warning("%d turn(s) ended with worker_lost at shutdown", left)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await res.close()
    log.info("worker %s stopped after %d turn(s)", res.worker_id, consumer.taken)
    return 0


async def _open(settings: Settings, policy: Policy, identity: dict[str, Any],
                stopped: asyncio.Event) -> Resources | None:
    """Open the resources, waiting for Redis as long as it takes (None if stopped first)."""
    delay = 0.5
    while not stopped.is_set():
        try:
            return await Resources.open(settings, policy, identity=identity)
        except (OSError, RedisError) as exc:
            log.warning("Redis at %s is not answering (%s); retrying in %.1f s",
                        settings.redis_url, exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), delay)
        delay = min(delay * 2, OPEN_RETRY_MAX_S)
    return None


def run_pool(argv: Sequence[str], processes: int) -> int:
    """Run ``processes`` copies of ``python -m workers <argv>`` and keep them running."""
    command = [sys.executable, "-m", "workers", *argv]
    children: list[subprocess.Popen[bytes] | None] = [None] * processes
    started = [0.0] * processes
    backoff = [RESTART_MIN_S] * processes
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child is not None and child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def spawn(i: int) -> None:
        children[i] = subprocess.Popen(command)
        started[i] = time.monotonic()

    for i in range(processes):
        spawn(i)
    log.info("worker pool of %d processes: %s", processes,
             ", ".join(str(c.pid) for c in children if c is not None))
    code = 0
    while True:
        alive = 0
        for i, child in enumerate(children):
            if child is None:
                continue
            status = child.poll()
            if status is None:
                alive += 1
                continue
            if stopping:
                code = code or status
                children[i] = None
                continue
            lived = time.monotonic() - started[i]
            backoff[i] = RESTART_MIN_S if lived > HEALTHY_AFTER_S else min(
                backoff[i] * 2, RESTART_MAX_S)
            log.error("worker process %d exited with %d after %.0f s; restarting in %.1f s",
                      child.pid, status, lived, backoff[i])
            time.sleep(backoff[i])
            if not stopping:
                spawn(i)
                alive += 1
        if stopping and alive == 0:
            return code
        time.sleep(0.2)


def pool_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with any ``--processes`` option removed (what each child runs)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return out


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"[%(asctime)s: %(levelname)s/{os.getpid()}] %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: one line per provider call is noise, not news
    logging.getLogger("httpx").setLevel(logging.WARNING)
