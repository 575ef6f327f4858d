"""Walking a tier's chain of models: attempts, failover before the first token, hedging.

Each attempt streams one provider call in its own asyncio task. The first attempt to
yield an event (text, tool call, or an empty answer's finish) *wins*: its events go to the
turn's sink, every other running attempt is cancelled (its connection closed). Before a
winner exists, a failing attempt is replaced by the next model of the chain, invisibly to
the caller; after, the winner's failure ends the turn (the caller has heard part of it).

* ``ContextTooLong`` moves on only to models with a larger context window;
* errors with ``failover = False`` (``ContentFiltered``, ``ProviderBadRequest``) stop the
  walk: a refusal or a bad request is returned, never routed around;
* with ``hedge_ms``, if no first event came ``hedge_ms`` after the walk began, the next
  model starts too (once per turn); the first to answer wins, both are recorded;
* the turn's deadline bounds the wait for a first event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

from dispatcher.errors import ContextTooLong, ProviderError, ProviderRateLimited
from dispatcher.policy.models import Policy
from dispatcher.providers import ChatRequest, HttpAdapter, StreamEvent

log = logging.getLogger(__name__)

Outcome = Literal[
    "ok",  # streamed to the end
    "failed",  # failed before its first token (failover)
    "failed_mid_stream",  # failed after its first token (the turn ends with an error)
    "refused",  # a non-failover error: content filter or bad request
    "hedge_lost",  # the other attempt answered first
    "cancelled",  # the turn was cancelled, or the deadline passed, while it ran
    "skipped",  # not called: context window too small, or unknown to this policy
    "running",
]

Sink = Callable[["Attempt", StreamEvent], None]


@dataclass(slots=True)
class Attempt:
    """One call to one provider+model, and how it went."""

    model: str
    provider: str
    request: ChatRequest | None = None
    outcome: Outcome = "running"
    error: ProviderError | None = None
    error_class: str | None = None
    ttft_ms: float | None = None  # from this attempt's start to its first event
    retry_after: float | None = None
    hedge: bool = False
    events: int = 0  # stream events received (an estimate of output tokens)
    started: float = 0.0  # loop time
    first_at: float | None = None  # loop time
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        """The attempt as the ``done``/``error`` events and the ledger list it."""
        return {
            "provider": self.provider,
            "model": self.model,
            "outcome": self.outcome,
            "error_class": self.error_class,
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "retry_after": self.retry_after,
            "hedge": self.hedge,
        }

    def fail(self, exc: ProviderError, outcome: Outcome) -> None:
        self.error, self.error_class, self.outcome = exc, exc.error_class, outcome
        if isinstance(exc, ProviderRateLimited):
            self.retry_after = exc.retry_after


@dataclass(frozen=True, slots=True)
class WalkResult:
    """How the walk ended: ``won`` (see ``winner.outcome``), ``exhausted``, ``refused``,
    or ``deadline`` (no first event before the turn's deadline)."""

    kind: Literal["won", "exhausted", "refused", "deadline"]
    winner: Attempt | None = None
    refusal: Attempt | None = None


class ChainWalk:
    """Runs the attempts of one turn; ``attempts`` lists them in the order they started."""

    def __init__(
        self,
        *,
        chain: list[str],
        policy: Policy,
        clients: dict[str, HttpAdapter],
        make_request: Callable[[str], ChatRequest],
        sink: Sink,
        first_token_deadline: float,  # loop time
        hedge_ms: int | None,
        turn_id: str,
    ) -> None:
        self._queue = deque(chain)
        self._policy = policy
        self._clients = clients
        self._make_request = make_request
        self._sink = sink
        self._deadline = first_token_deadline
        self._hedge_s = hedge_ms / 1000 if hedge_ms else None
        self._turn_id = turn_id
        self._min_window = 0  # only models with a larger window may follow a ContextTooLong
        self.attempts: list[Attempt] = []
        self.winner: Attempt | None = None
        self._running: dict[asyncio.Task[None], Attempt] = {}

    async def run(self) -> WalkResult:
        loop = asyncio.get_running_loop()
        try:
            if self._start_next() is None:
                return WalkResult("exhausted")
            hedge_at = loop.time() + self._hedge_s if self._hedge_s and self._queue else None
            while self._running:
                timeout = None
                if self.winner is None:
                    wake = self._deadline if hedge_at is None else min(hedge_at, self._deadline)
                    timeout = max(wake - loop.time(), 0)
                done, _ = await asyncio.wait(
                    self._running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if self.winner is not None:
                        continue
                    if loop.time() >= self._deadline:
                        return WalkResult("deadline")
                    if hedge_at is not None and loop.time() >= hedge_at:
                        hedge_at = None
                        hedge = self._start_next()
                        if hedge is not None:
                            hedge.hedge = True
                            log.info("turn %s: hedging with %s", self._turn_id, hedge.model)
                    continue
                for task in done:
                    attempt = self._running.pop(task)
                    if attempt is self.winner:
                        return WalkResult("won", attempt)
                    if attempt.outcome == "refused":
                        return WalkResult("refused", refusal=attempt)
                    if isinstance(attempt.error, ContextTooLong):
                        window = self._policy.models[attempt.model].context_window
                        self._min_window = max(self._min_window, window)
                if self.winner is None and not self._running and self._start_next() is None:
                    return WalkResult("exhausted")
            return WalkResult("exhausted")  # pragma: no cover - the loop returns first
        finally:
            await self._stop_all()

    def _start_next(self) -> Attempt | None:
        while self._queue:
            model_id = self._queue.popleft()
            model = self._policy.models.get(model_id)
            client = self._clients.get(model.provider) if model else None
            if model is None or client is None:
                self._skip(model_id, model.provider if model else "?", "unknown_model")
                continue
            if model.context_window <= self._min_window:
                self._skip(model_id, model.provider, "context_too_long")
                continue
            attempt = Attempt(model_id, model.provider, self._make_request(model_id))
            attempt.started = asyncio.get_running_loop().time()
            attempt.task = asyncio.create_task(
                self._run_attempt(attempt, client), name=f"attempt:{self._turn_id}:{model_id}"
            )
            self._running[attempt.task] = attempt
            self.attempts.append(attempt)
            return attempt
        return None

    def _skip(self, model_id: str, provider: str, why: str) -> None:
        attempt = Attempt(model_id, provider, outcome="skipped")
        attempt.error_class = why
        self.attempts.append(attempt)

    def _claim_win(self, attempt: Attempt) -> bool:
        if self.winner is None:
            self.winner = attempt
            for task, other in self._running.items():
                if other is not attempt:
                    other.outcome = "hedge_lost"
                    task.cancel()
            return True
        return self.winner is attempt

    async def _run_attempt(self, attempt: Attempt, client: HttpAdapter) -> None:
        loop = asyncio.get_running_loop()
        assert attempt.request is not None
        try:
            async with aclosing(client.stream(attempt.request)) as stream:
                async for event in stream:
                    if attempt.first_at is None:
                        attempt.first_at = loop.time()
                        attempt.ttft_ms = (attempt.first_at - attempt.started) * 1000
                        if not self._claim_win(attempt):
                            attempt.outcome = "hedge_lost"
                            return
                    attempt.events += 1
                    self._sink(attempt, event)
            attempt.outcome = "ok"
        except ProviderError as exc:
            if not exc.failover:
                attempt.fail(exc, "refused")
            else:
                attempt.fail(exc, "failed" if attempt.first_at is None else "failed_mid_stream")
            log.info(
                "turn %s: %s/%s %s: %s",
                self._turn_id,
                attempt.provider,
                attempt.model,
                attempt.outcome,
                exc,
            )
        except asyncio.CancelledError:
            if attempt.outcome == "running":
                attempt.outcome = "cancelled"
            raise
        except Exception as exc:  # a bug in an adapter or the sink: fail over, loudly
            log.exception("turn %s: attempt on %s crashed", self._turn_id, attempt.model)
            err = ProviderError(repr(exc), provider=attempt.provider, model=attempt.model)
            err.error_class = "internal"
            attempt.fail(err, "failed" if attempt.first_at is None else "failed_mid_stream")

    async def _stop_all(self) -> None:
        """Cancel whatever still runs and wait until each connection is closed."""
        tasks = list(self._running)
        self._running.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
