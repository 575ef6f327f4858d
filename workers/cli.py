"""``python -m workers --tier fast [--processes N] [--concurrency N] [--engine native|celery]``.

Consumes ``turns.<tier>`` (``--tier`` may be repeated). The default ``native`` engine
takes the Celery messages on the process's event loop (:mod:`workers.consumer`); the
``celery`` engine runs a Celery worker with the threads pool (:mod:`workers.resources`
says why that pool). Both read the same queues and may run side by side.
``--processes N`` runs N such processes under a supervisor (:mod:`workers.native`).
``dispatcher worker --tier ...`` execs this.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from enum import IntEnum

from dispatcher.errors import ConfigError, PolicyError
from dispatcher.policy import load_policy
from dispatcher.settings import get_settings
from workers.app import DEFAULT_CONCURRENCY, create_celery
from workers.native import DEFAULT_GRACE_S, configure_logging, pool_argv, run_pool, run_process


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the worker could not start or stopped on an error
    USAGE = 2  # bad arguments, unknown tier, bad policy


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    p.add_argument(
        "--tier", action="append", required=True, help="tier to serve (repeat for several)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"turns held at once by this process (default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument(
        "--engine",
        choices=("native", "celery"),
        default="native",
        help="native: the event loop takes the Celery messages itself (default); "
        "celery: a Celery worker with the threads pool",
    )
    p.add_argument(
        "--processes", type=int, default=1, help="worker processes for these tiers (default 1)"
    )
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help=f"seconds running turns get after a stop signal (native; default {DEFAULT_GRACE_S:g})",
    )
    p.add_argument("--loglevel", default="info", help="debug, info, warning, error")
    p.add_argument("--hostname", default=None, help="Celery node name (default tier-pid@host)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    for name in ("concurrency", "processes"):
        if getattr(args, name) < 1:
            sys.stderr.write(f"--{name} must be at least 1, got {getattr(args, name)}\n")
            return Exit.USAGE
    settings = get_settings()
    try:
        policy = load_policy(settings.policy)
    except PolicyError as exc:
        sys.stderr.write(f"{exc}\n")
        return Exit.USAGE
    unknown = [t for t in args.tier if t not in policy.tiers]
    if unknown:
        sys.stderr.write(
            f"unknown tier {', '.join(unknown)} in {settings.policy}; "
            f"known: {', '.join(policy.tiers)}\n"
        )
        return Exit.USAGE
    if args.processes > 1:
        configure_logging(args.loglevel)
        return run_pool(pool_argv(argv), args.processes)
    identity = {"engine": args.engine, "tiers": list(args.tier), "concurrency": args.concurrency}
    if args.engine == "native":
        configure_logging(args.loglevel)
        try:
            return run_process(settings, policy, args.tier, args.concurrency, args.grace)
        except (ConfigError, OSError) as exc:
            sys.stderr.write(f"the worker could not start: {exc}\n")
            return Exit.FAILED
    queues = ",".join(policy.queue(t) for t in args.tier)
    hostname = args.hostname or f"{'+'.join(args.tier)}-{os.getpid()}@%h"
    try:
        app = create_celery(settings, identity)
        app.worker_main(
            [
                "worker",
                "--queues",
                queues,
                "--pool",
                "threads",
                "--concurrency",
                str(args.concurrency),
                "--loglevel",
                args.loglevel,
                "--hostname",
                hostname,
                "--without-gossip",
                "--without-mingle",
            ]
        )
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return Exit.FAILED
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int | None) else Exit.FAILED
    return Exit.OK
