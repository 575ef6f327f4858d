"""``python -m workers --tier fast [--concurrency N] [--loglevel info]``: one worker process.

Consumes ``turns.<tier>`` (``--tier`` may be repeated) with the threads pool; see
:mod:`workers.resources` for why. ``dispatcher worker --tier ...`` execs this.
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
    p.add_argument("--loglevel", default="info", help="debug, info, warning, error")
    p.add_argument("--hostname", default=None, help="Celery node name (default tier-pid@host)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.concurrency < 1:
        sys.stderr.write(f"--concurrency must be at least 1, got {args.concurrency}\n")
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
    queues = ",".join(policy.queue(t) for t in args.tier)
    hostname = args.hostname or f"{'+'.join(args.tier)}-{os.getpid()}@%h"
    try:
        app = create_celery(settings)
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
