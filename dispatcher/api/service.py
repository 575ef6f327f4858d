"""Starting, resuming and cancelling turns: the ingress side of the streaming contract.

Starting a turn, in order (each step before the next):

1. subscribe to the turn's channel and read the session snapshot (concurrently);
2. route (pure);
3. one Lua call: write the ``route`` event as seq 0 into the buffer, record the turn's
   owner and deadline, update the session snapshot, and enqueue the
   :class:`~dispatcher.turns.TurnJob` on the tier's queue (``LPUSH`` of the Celery
   message, :mod:`dispatcher.api.enqueue`): one round trip, all or nothing.

So by the time a worker can publish anything, the relay is listening and the buffer
exists. A turn id the caller already used (``turn_id`` in the body) is not started again:
its events are replayed from the buffer instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis

from dispatcher import streaming
from dispatcher.api._compat import aw, text
from dispatcher.api.errors import ApiError
from dispatcher.api.relay import Event, Subscription, TurnRelay, cancel_turn
from dispatcher.api.runtime import Routing, Runtime
from dispatcher.domain import Decision, SessionSnapshot
from dispatcher.turns import ChatParams, TurnJob

log = logging.getLogger(__name__)

#: The turn's owner and deadline, for resumes, cancels and the deadline backstop.
META_TTL_S: Final = streaming.CANCEL_TTL_S


def meta_key(turn_id: str) -> str:
    """Hash: tenant, deadline_at, and clients (how many are reading the turn now)."""
    return f"{streaming.PREFIX}:turn:{turn_id}:meta"



@dataclass(slots=True)
class TurnInput:
    """One turn as an endpoint understood it."""

    tenant: str
    endpoint: str
    text: str  # what routing reads: the user's turn
    route_history: Sequence[Mapping[str, Any]]  # the conversation before it, for routing
    job_messages: list[dict[str, Any]]  # what the provider gets
    session_id: str | None = None
    state: Mapping[str, Any] = field(default_factory=dict)
    tier: str | None = None
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    speculative: bool = False
    turn_id: str | None = None
    after: int = -1  # Last-Event-ID of a resume, -1 for none
    received_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class Started:
    """A turn being relayed: its route and the relay that yields what follows."""

    turn_id: str
    route: dict[str, Any]
    relay: TurnRelay
    received_at: float
    created: bool
    #: the route event to send first (a fresh turn; a resume reads it from the buffer)
    first: Event | None = None

    @property
    def tier(self) -> str:
        return str(self.route.get("tier", ""))

    @property
    def model(self) -> str:
        return str(self.route.get("model", ""))


def session_redis_key(tenant: str, session_id: str) -> str:
    # Sessions are the callers' ids: two tenants may well both have a session "1".
    return streaming.session_key(f"{tenant}:{session_id}")


def snapshot_from(raw: Sequence[bytes | None]) -> SessionSnapshot | None:
    """The router's view of a session from ``HMGET n tier at rule`` (None when unknown)."""
    n, tier, at, rule = raw
    if n is None or tier is None or at is None:
        return None
    return SessionSnapshot(
        tier=tier.decode(),
        turns_ago=int(n) + 1 - int(at),
        rule=rule.decode() if rule is not None else None,
    )


def sticky_tier(routing: Routing, decision: Decision) -> str:
    """The tier the session should remember after ``decision``, or '' to keep what it has.

    A turn routed by the session rule itself does not renew the memory: hysteresis holds a
    tier for the policy's number of turns after the complex turn, not forever.
    """
    if decision.rule.split("+", 1)[0] in routing.session_rules:
        return ""
    return decision.tier if decision.tier in routing.sticky_tiers else ""


def check_names(routing: Routing, turn: TurnInput) -> None:
    """Refuse a forced tier or model the policy does not know, naming it."""
    policy = routing.policy
    if turn.model is not None and turn.model not in policy.models:
        raise ApiError(404, "model_not_found",
                       f"The model `{turn.model}` does not exist", param="model")
    if turn.tier is not None and turn.tier not in policy.tiers:
        known = ", ".join(policy.tiers)
        raise ApiError(422, "unknown_tier", f"unknown tier {turn.tier!r} (known: {known})",
                       param="tier")


def decide(routing: Routing, turn: TurnInput, session: SessionSnapshot | None) -> Decision:
    """Route the turn, or honour a forced tier or model."""
    check_names(routing, turn)
    if turn.model is not None:
        tier = routing.model_tier.get(turn.model, routing.policy.default_tier)
        return Decision(tier=tier, chain=(turn.model,), rule="model-override", confidence=1.0)
    return routing.router.route(turn.text, turn.route_history, turn.state, session, turn.tier)


def build_job(
    routing: Routing, turn: TurnInput, decision: Decision, turn_id: str
) -> TurnJob:
    policy = routing.policy
    spec = policy.tiers[decision.tier]
    params: ChatParams = {"messages": turn.job_messages}
    params["max_tokens"] = turn.params.get("max_tokens") or spec.max_output_tokens
    extra = turn.params
    if extra.get("temperature") is not None:
        params["temperature"] = extra["temperature"]
    if extra.get("stop"):
        params["stop"] = extra["stop"]
    if extra.get("tools"):
        params["tools"] = extra["tools"]
    if extra.get("tool_choice") is not None:
        params["tool_choice"] = extra["tool_choice"]
    return TurnJob(
        turn_id=turn_id,
        tenant=turn.tenant,
        session_id=turn.session_id or "",
        tier=decision.tier,
        chain=list(decision.chain),
        rule=decision.rule,
        confidence=decision.confidence,
        params=params,
        received_at=turn.received_at,
        # the message is built and pushed right after this, in the same Lua call
        enqueued_at=time.time(),
        deadline_at=turn.received_at + spec.deadline_ms / 1000,
        policy_version=policy.version or "",
        speculative=turn.speculative,
        text_chars=len(turn.text),
        text_sha256=hashlib.sha256(turn.text.encode("utf-8")).hexdigest(),
    )


def route_event(routing: Routing, decision: Decision, turn_id: str) -> dict[str, Any]:
    model = decision.chain[0]
    return {
        "seq": 0,
        "type": "route",
        "turn_id": turn_id,
        "tier": decision.tier,
        "model": model,
        "provider": routing.policy.models[model].provider,
        "rule": decision.rule,
        "confidence": decision.confidence,
    }


async def start_turn(rt: Runtime, turn: TurnInput) -> Started:
    """Route, subscribe, write seq 0, enqueue; or resume the caller's existing turn."""
    routing = rt.policies.current  # this turn keeps this policy even if it is reloaded
    turn_id = turn.turn_id or uuid.uuid4().hex
    skey = session_redis_key(turn.tenant, turn.session_id) if turn.session_id else None
    check_names(routing, turn)  # before touching Redis
    sub, session = await _subscribe_and_read(rt, turn_id, skey)
    try:
        decision = decide(routing, turn, session)
        job = build_job(routing, turn, decision, turn_id)
        route = route_event(routing, decision, turn_id)
        raw_route = streaming.encode(route)
        queue = routing.policy.queue(decision.tier)
        keys = [streaming.buffer_key(turn_id), meta_key(turn_id), queue]
        if skey is not None:
            keys.append(skey)
        started = time.perf_counter()
        # a RedisError here is the app's 503 redis_unavailable: nothing was written
        owner = await rt.scripts.create_turn(
            keys=keys,
            args=[
                raw_route, streaming.BUFFER_TTL_S, turn.tenant, repr(job["deadline_at"]),
                META_TTL_S, sticky_tier(routing, decision), decision.rule,
                routing.policy.session.ttl_s, rt.enqueuer.message(job, queue),
            ],
        )
        if owner is not None:
            return await _existing(rt, turn, turn_id, owner, sub)
        rt.metrics.enqueue.observe(time.perf_counter() - started)
    except BaseException:
        await sub.close()
        raise
    rt.metrics.turns.labels(decision.tier, turn.endpoint).inc()
    log.info("turn %s: tier %s model %s rule %s", turn_id, decision.tier, decision.model,
             decision.rule)
    relay = _relay(rt, sub, after=0, deadline_at=job["deadline_at"], read_first=False)
    first = Event(0, "route", route, raw_route, "ingress")
    rt.metrics.count_event("route", "ingress")
    return Started(turn_id, route, relay, turn.received_at, created=True, first=first)


async def _subscribe_and_read(
    rt: Runtime, turn_id: str, skey: str | None
) -> tuple[Subscription, SessionSnapshot | None]:
    """Subscribe to the turn's channel while reading the session snapshot."""
    if skey is None:
        return await rt.hub.subscribe(turn_id), None
    sub_result: Subscription | BaseException
    read_result: Any
    sub_result, read_result = await asyncio.gather(
        rt.hub.subscribe(turn_id), rt.fast.call("HMGET", skey, "n", "tier", "at", "rule"),
        return_exceptions=True,
    )
    if isinstance(sub_result, BaseException):
        raise sub_result
    if isinstance(read_result, BaseException):
        await sub_result.close()
        raise read_result
    return sub_result, snapshot_from(read_result)


async def _existing(
    rt: Runtime, turn: TurnInput, turn_id: str, owner: bytes, sub: Subscription
) -> Started:
    if owner.decode() != turn.tenant:
        raise ApiError(409, "turn_id_taken", f"turn id {turn_id!r} is already in use")
    return await _resume_with(rt, turn_id, turn.after, sub, turn.received_at)


async def resume_turn(rt: Runtime, tenant: str, turn_id: str, after: int) -> Started:
    """Replay a turn's events after ``after`` from its buffer, then relay it live."""
    owner, _ = await aw(rt.redis.hmget(meta_key(turn_id), ["tenant", "deadline_at"]))
    if owner is None or text(owner) != tenant:
        raise ApiError(404, "turn_not_found", f"no turn {turn_id!r} (or its events expired)")
    sub = await rt.hub.subscribe(turn_id)
    try:
        return await _resume_with(rt, turn_id, after, sub, time.time())
    except BaseException:
        await sub.close()
        raise


async def _resume_with(
    rt: Runtime, turn_id: str, after: int, sub: Subscription, received_at: float
) -> Started:
    async with rt.redis.pipeline(transaction=False) as pipe:
        pipe.lindex(streaming.buffer_key(turn_id), 0)
        pipe.hget(meta_key(turn_id), "deadline_at")
        raw_route, deadline = await pipe.execute()
    if raw_route is None:
        raise ApiError(404, "turn_not_found", f"the events of turn {turn_id!r} have expired")
    # counted in, so that another client's disconnect does not cancel the turn under it
    await rt.scripts.add_client(keys=[meta_key(turn_id)], args=[1])
    route = streaming.decode(raw_route)
    deadline_at = float(deadline) if deadline is not None else None
    relay = _relay(rt, sub, after=after, deadline_at=deadline_at, read_first=True)
    log.info("turn %s: resumed after event %d", turn_id, after)
    return Started(turn_id, route, relay, received_at, created=False)


def _relay(
    rt: Runtime, sub: Subscription, *, after: int, deadline_at: float | None, read_first: bool
) -> TurnRelay:
    return TurnRelay(
        rt.redis, sub, after=after, deadline_at=deadline_at, read_first=read_first,
        idle_s=rt.tuning.idle_s, margin_s=rt.tuning.deadline_margin_s,
        count=rt.metrics.count_event, on_deadline=lambda tid: cancel_turn(rt.redis, tid),
    )


async def cancel(rt: Runtime, tenant: str, turn_id: str) -> None:
    """``DELETE /v1/turns/{id}``: set the cancel key and tell the workers."""
    owner = await aw(rt.redis.hget(meta_key(turn_id), "tenant"))
    if owner is None or text(owner) != tenant:
        raise ApiError(404, "turn_not_found", f"no turn {turn_id!r}")
    await cancel_turn(rt.redis, turn_id)
    log.info("turn %s: cancelled by the caller", turn_id)


async def release(rt: Runtime, started: Started, *, disconnected: bool, grace_s: float) -> None:
    """A client stopped reading the turn: close its relay and count it out.

    A client that went away before the terminal event cancels the turn, unless another
    client is reading it (a late subscriber) or one comes back with ``Last-Event-ID``
    within ``grace_s``.
    """
    await started.relay.aclose()
    left = await _detach(rt, started.turn_id)
    if not disconnected or started.relay.finished:
        return
    rt.metrics.disconnects.inc()
    if grace_s <= 0:
        await _cancel_if_unread(rt, started.turn_id, left)
    else:
        rt.spawn(_cancel_after(rt, started.turn_id, grace_s), name=f"orphan:{started.turn_id}")


async def _detach(rt: Runtime, turn_id: str) -> int | None:
    try:
        left = await rt.scripts.add_client(keys=[meta_key(turn_id)], args=[-1])
        return None if left is None else int(left)
    except Exception as exc:
        log.warning("turn %s: could not count a client out: %s", turn_id, exc)
        return None


async def _cancel_after(rt: Runtime, turn_id: str, grace_s: float) -> None:
    await asyncio.sleep(grace_s)
    clients = await aw(rt.redis.hget(meta_key(turn_id), "clients"))
    await _cancel_if_unread(rt, turn_id, None if clients is None else int(clients))


async def _cancel_if_unread(rt: Runtime, turn_id: str, clients: int | None) -> None:
    if clients is not None and clients > 0:
        log.info("turn %s: its client went away; %d other(s) still reading", turn_id, clients)
        return
    if await _finished(rt.redis, turn_id):
        return  # ended meanwhile (a resumed client read it to the end): nothing to stop
    await cancel_turn(rt.redis, turn_id)
    log.info("turn %s: cancelled, its client went away", turn_id)


async def _finished(redis: Redis, turn_id: str) -> bool:
    last = await aw(redis.lindex(streaming.buffer_key(turn_id), -1))
    if last is None:
        return False
    try:
        return streaming.decode(last).get("type") in streaming.TERMINAL
    except ValueError:
        return False
