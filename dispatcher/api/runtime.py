"""What one ingress process holds while it runs: built by the lifespan, closed after it.

The Redis pool, the relay hub (one pub/sub connection), the Celery producer, the policy
with its compiled router, the metrics, and the background tasks the process started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from dispatcher import resp
from dispatcher.api.enqueue import TaskMessages
from dispatcher.api.metrics import Metrics
from dispatcher.api.relay import DEADLINE_MARGIN_S, IDLE_S, RelayHub
from dispatcher.api.scripts import Scripts
from dispatcher.errors import PolicyError
from dispatcher.policy import Policy, load_policy
from dispatcher.policy.models import SessionRule
from dispatcher.routing import Router
from dispatcher.settings import Settings
from dispatcher.turns import RUN_TURN_TASK, TurnJob

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tuning:
    """Timings of the relay and of disconnect handling (tests shorten them)."""

    idle_s: float = IDLE_S
    deadline_margin_s: float = DEADLINE_MARGIN_S
    #: A streaming client that went away is given this long to come back with
    #: ``Last-Event-ID`` before its turn is cancelled.
    disconnect_grace_s: float = 2.0
    keepalive_s: float = 15.0
    #: ``retry:`` sent at the start of every event stream (EventSource's reconnect delay).
    sse_retry_ms: int = 1000


@dataclass(frozen=True, slots=True)
class Routing:
    """A policy and everything derived from it; swapped whole on reload."""

    policy: Policy
    router: Router
    #: tiers a later short follow-up may stay on (the session rules' ``from_tiers``)
    sticky_tiers: frozenset[str]
    session_rules: frozenset[str]
    #: model id -> the first tier whose chain has it (where a forced model is queued)
    model_tier: dict[str, str]
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def from_policy(cls, policy: Policy) -> Routing:
        rules = [r for r in policy.rules if isinstance(r, SessionRule)]
        model_tier: dict[str, str] = {}
        for tier, spec in policy.tiers.items():
            for model in spec.models:
                model_tier.setdefault(model, tier)
        return cls(
            policy=policy,
            router=Router(policy),
            sticky_tiers=frozenset(t for r in rules for t in r.from_tiers),
            session_rules=frozenset(r.name for r in rules),
            model_tier=model_tier,
        )


class PolicyHolder:
    """The current :class:`Routing`; a reload that fails keeps the last good one."""

    def __init__(self, path: Path, metrics: Metrics | None = None) -> None:
        self.path = path
        self._metrics = metrics
        self.current = Routing.from_policy(load_policy(path))
        self.last_error: str | None = None

    def reload(self) -> bool:
        """Read the policy file again; return whether the new policy is now in use."""
        try:
            routing = Routing.from_policy(load_policy(self.path))
        except PolicyError as exc:
            self.last_error = str(exc)
            log.error("policy reload failed; keeping version %s: %s",
                      self.current.policy.version, exc)
            self._count("failed")
            return False
        self.current = routing
        self.last_error = None
        log.info("policy reloaded from %s: version %s", self.path, routing.policy.version)
        self._count("ok")
        return True

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.policy_reloads.labels(outcome).inc()


class Enqueuer:
    """Builds the :data:`RUN_TURN_TASK` messages of this ingress; never imports the workers.

    :func:`dispatcher.api.service.start_turn` pushes :meth:`message` in the same Lua call
    that creates the turn (one round trip, atomic; see :mod:`dispatcher.api.enqueue` for
    why not ``send_task``).
    """

    def __init__(self) -> None:
        self._messages = TaskMessages()

    def message(self, job: TurnJob, queue: str) -> bytes:
        turn_id = job["turn_id"]
        # Flower and worker logs show argsrepr; the prompt must not appear there.
        return self._messages.build(RUN_TURN_TASK, [job], task_id=turn_id, queue=queue,
                                    argsrepr=f"[turn {turn_id}]")


class Runtime:
    """The process's clients and state, shared by every request."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        hub: RelayHub,
        enqueuer: Enqueuer,
        policies: PolicyHolder,
        metrics: Metrics,
        tuning: Tuning,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.hub = hub
        self.enqueuer = enqueuer
        self.policies = policies
        self.metrics = metrics
        self.tuning = tuning
        #: the hot path's commands (API key, session, create+enqueue, count out): one
        #: auto-pipelined connection, a fraction of redis-py's CPU per command
        self.fast = resp.Pipeline(settings.redis_url)
        self.scripts = Scripts(self.fast)
        self._background: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, beyond the request that started it."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task %s failed: %r", task.get_name(), task.exception())

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for background tasks (cancellations in flight), then cancel the rest."""
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=timeout)
            for task in pending:
                task.cancel()
