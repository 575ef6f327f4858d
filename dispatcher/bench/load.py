"""One phase of the load: C closed-loop users stream a fixed number of turns at a target.

Every user first streams one warm-up turn (connections open, code paths warm); then
``on_start`` runs (the caller snapshots CPU time), and the users take turns from a shared
count until it is used up: each starts its next turn as soon as the last one ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dispatcher.bench.client import Target, TurnSample, User


@dataclass(slots=True)
class PhaseRun:
    samples: list[TurnSample]
    wall_s: float
    warmup_errors: list[str]


async def run_phase(
    targets: Sequence[Target],
    turns: int,
    *,
    timeout: float,
    on_start: Callable[[], None] = lambda: None,
    on_turn: Callable[[TurnSample], None] = lambda s: None,
) -> PhaseRun:
    """Run ``turns`` turns with one user per target (the concurrency is ``len(targets)``)."""
    users = [User(t, timeout) for t in targets]
    try:
        warm = await asyncio.gather(*(u.turn() for u in users))
        remaining = turns
        samples: list[TurnSample] = []

        async def loop(user: User) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                sample = await user.turn()
                samples.append(sample)
                on_turn(sample)

        on_start()
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(u) for u in users))
        wall = time.perf_counter() - t0
    finally:
        for user in users:
            user.close()
    return PhaseRun(samples, wall, [s.error or "" for s in warm if not s.ok])
