"""Relaying a turn's events from Redis to one client, exactly once and in order.

One :class:`RelayHub` per process owns one pub/sub connection. It subscribes to a turn's
channel when a request asks (:meth:`RelayHub.subscribe`), waits for Redis to confirm the
subscription, and routes each message to the asyncio queues of that turn's subscribers
as its bytes arrive; nothing polls.

Pub/sub is at-most-once (a message published while the connection is down is gone), so
the buffer list of :mod:`dispatcher.streaming` is the source of truth and pub/sub only a
fast path. A :class:`TurnRelay` keeps the next ``seq`` it owes its client and

- hands on a message whose ``seq`` is the expected one;
- drops a message whose ``seq`` is lower (a duplicate: already read from the buffer);
- on a higher ``seq`` (a gap: messages were lost) reads the missing range from the buffer
  first: the worker's script pushes before it publishes, so the range is there;
- when nothing has come for ``idle_s`` (the last messages, the terminal one included,
  may have been lost) or the hub reconnected, reads the buffer from the expected ``seq``;
- stops right after the terminal event (``done`` or ``error``), so exactly one is given;
- when the turn's deadline (plus a margin) passes first, gives an ``error`` event with
  code ``deadline_exceeded`` in its place and cancels the turn.

The client's position is the only state, so a reconnect with ``Last-Event-ID: n`` is a
new relay that starts at ``n + 1`` and reads the buffer before listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dispatcher import resp, streaming
from dispatcher.api._compat import aw

log = logging.getLogger(__name__)

#: Read the buffer when no message came for this long.
IDLE_S: Final = 0.5
#: How long a turn may outlive its deadline before the ingress gives up on it.
DEADLINE_MARGIN_S: Final = 1.5
#: How long :meth:`RelayHub.subscribe` waits for Redis to confirm a subscription.
CONFIRM_TIMEOUT_S: Final = 2.0
#: The hub stays subscribed to this channel so that its connection is always in
#: subscribed mode and the reader always has something to read.
HUB_CHANNEL: Final = f"{streaming.PREFIX}:relay:hub"


class _Resync:
    """Put in every queue after a reconnect: read the buffer now, messages may be lost."""


RESYNC: Final = _Resync()

QueueItem = bytes | _Resync


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a turn as delivered to a client."""

    seq: int
    type: str
    data: dict[str, Any]
    raw: bytes
    source: str  # "pubsub", "buffer" or "ingress"

    @property
    def terminal(self) -> bool:
        return self.type in streaming.TERMINAL


class Subscription:
    """One relay's interest in one turn channel: a queue the hub fills."""

    __slots__ = ("_closed", "_hub", "channel", "queue", "turn_id")

    def __init__(self, hub: RelayHub, turn_id: str) -> None:
        self._hub = hub
        self._closed = False
        self.turn_id = turn_id
        self.channel = streaming.channel(turn_id).encode()
        self.queue: asyncio.Queue[QueueItem] = asyncio.Queue()

    async def close(self) -> None:
        """Leave the channel (the hub unsubscribes when the last subscriber leaves)."""
        if not self._closed:
            self._closed = True
            await self._hub._release(self)


class RelayHub:
    """The process's one pub/sub connection, shared by every turn being relayed.

    The connection is a :class:`dispatcher.resp.Subscriber`: messages are parsed where the
    bytes arrive and put straight into the subscribers' queues (redis-py's ``PubSub``
    spent a task wake-up, a parser round and a dict per message).
    """

    def __init__(self, redis_url: str) -> None:
        #: the connection's name in ``CLIENT LIST``
        self.client_name = f"dispatcher-relay-{os.getpid()}-{id(self):x}"
        self._subscriber = resp.Subscriber(redis_url, HUB_CHANNEL, self._on_message,
                                           self._on_reconnect, self.client_name)
        self._subs: dict[bytes, set[Subscription]] = {}
        self._started = False
        self.reconnects = 0

    async def start(self) -> None:
        """Start the connection; it connects (and reconnects) on its own.

        Redis being down at start is not fatal: the process starts, ``/readyz`` says 503,
        and the hub subscribes as soon as Redis answers.
        """
        self._started = True
        await self._subscriber.start(CONFIRM_TIMEOUT_S)

    async def stop(self) -> None:
        """Close the connection."""
        self._started = False
        await self._subscriber.aclose()

    @property
    def connected(self) -> bool:
        return self._subscriber.connected

    @property
    def channels(self) -> int:
        """How many turn channels are subscribed now."""
        return len(self._subs)

    async def subscribe(self, turn_id: str) -> Subscription:
        """Subscribe to the turn's channel and return once Redis has confirmed it.

        Messages published after this returns reach the subscription's queue. If Redis
        does not confirm in time the subscription is returned anyway: the relay's buffer
        reads make up for anything missed.
        """
        if not self._started:
            raise RuntimeError("the relay hub is not started")
        sub = Subscription(self, turn_id)
        subs = self._subs.get(sub.channel)
        if subs is None:
            self._subs[sub.channel] = {sub}
        else:
            subs.add(sub)
        try:
            await asyncio.wait_for(self._subscriber.subscribe(sub.channel), CONFIRM_TIMEOUT_S)
        except TimeoutError:
            log.warning("turn %s: no subscription confirmation in %ss", turn_id, CONFIRM_TIMEOUT_S)
        except BaseException:
            await sub.close()
            raise
        return sub

    async def _release(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.channel]
            # messages still in flight for the channel are dropped; a reconnect subscribes
            # only to the channels still wanted
            self._subscriber.unsubscribe(sub.channel)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        for sub in self._subs.get(channel, ()):
            sub.queue.put_nowait(data)

    def _on_reconnect(self) -> None:
        # Anything published while the connection was down is lost, so every relay reads
        # its buffer.
        self.reconnects += 1
        log.info("relay hub reconnected; %d turn channel(s) resync from their buffers",
                 len(self._subs))
        for subs in self._subs.values():
            for sub in subs:
                sub.queue.put_nowait(RESYNC)


async def cancel_turn(redis: Redis, turn_id: str) -> None:
    """Mark the turn cancelled and tell every worker process (streaming.py's protocol)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(streaming.cancel_key(turn_id), b"1", ex=streaming.CANCEL_TTL_S)
        pipe.publish(streaming.CANCEL_CHANNEL, turn_id)
        await pipe.execute()


Counter = Callable[[str, str], None]


class TurnRelay:
    """The events of one turn after ``after``, exactly once, in ``seq`` order.

    Iterating yields :class:`Event` objects, and ``None`` whenever ``idle_s`` passed with
    nothing to deliver (a chance to send a keep-alive). The iteration ends after the
    terminal event; the subscription is closed then, or when the iterator is closed.
    """

    def __init__(
        self,
        redis: Redis,
        sub: Subscription,
        *,
        after: int = -1,
        deadline_at: float | None = None,
        read_first: bool = True,
        idle_s: float = IDLE_S,
        margin_s: float = DEADLINE_MARGIN_S,
        count: Counter | None = None,
        on_deadline: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._sub = sub
        self._buffer = streaming.buffer_key(sub.turn_id)
        self.turn_id = sub.turn_id
        self.expected = after + 1
        self._give_up_at = None if deadline_at is None else deadline_at + margin_s
        self._read_first = read_first
        self._idle_s = idle_s
        self._count = count
        self._on_deadline = on_deadline
        self._iterator: AsyncGenerator[Event | None, None] | None = None
        self.finished = False

    def __aiter__(self) -> AsyncGenerator[Event | None, None]:
        # One iterator per relay, however many times it is iterated (e.g. a first event
        # read by one task, the rest streamed by another): it owns the position.
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def aclose(self) -> None:
        """Stop relaying: close the iterator (if one started) and the subscription."""
        if self._iterator is not None:
            with contextlib.suppress(RuntimeError):  # still running in a cancelled task
                await self._iterator.aclose()
        await self._sub.close()

    async def _events(self) -> AsyncGenerator[Event | None, None]:
        try:
            if self._read_first:
                for event in await self._read_buffer():
                    yield self._deliver(event)
                    if self.finished:
                        return
            queue = self._sub.queue
            while True:
                batch = await self._next_batch(queue)
                if batch is None:
                    yield None
                    continue
                for event in batch:
                    yield self._deliver(event)
                    if self.finished:
                        return
        finally:
            await self._sub.close()

    def _deliver(self, event: Event) -> Event:
        self.expected = event.seq + 1
        if event.terminal:
            self.finished = True
        if self._count is not None:
            self._count(event.type, event.source)
        return event

    async def _next_batch(self, queue: asyncio.Queue[QueueItem]) -> list[Event] | None:
        """The next events in order; ``None`` after an idle period with nothing new."""
        while True:
            timeout = self._idle_s
            if self._give_up_at is not None:
                left = self._give_up_at - time.time()
                if left <= 0:
                    return [await self._deadline_exceeded()]
                timeout = min(timeout, left)
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(timeout):
                        item = await queue.get()
                except TimeoutError:
                    # Quiet: the last messages may have been lost; the buffer knows.
                    batch = await self._read_buffer()
                    return batch or None
            if isinstance(item, _Resync):
                batch = await self._read_buffer()
                if batch:
                    return batch
                continue
            try:
                event = _decode(item, "pubsub")
            except ValueError as exc:
                log.warning("turn %s: dropped a malformed event: %s", self.turn_id, exc)
                continue
            if event.seq < self.expected:
                continue  # a duplicate of one already delivered from the buffer
            if event.seq == self.expected:
                return [event]
            # A gap: fill it from the buffer, which holds everything up to event.seq.
            batch = await self._read_buffer(stop=event.seq)
            if not batch or batch[-1].seq != event.seq:
                have = batch[-1].seq if batch else self.expected - 1
                if have < event.seq - 1:
                    log.warning(
                        "turn %s: events %d..%d are missing from the buffer; skipping them",
                        self.turn_id, have + 1, event.seq - 1,
                    )
                batch.append(event)
            return batch

    async def _read_buffer(self, stop: int = -1) -> list[Event]:
        """The buffer's contiguous events from the expected ``seq`` to ``stop``."""
        try:
            raws = await aw(self._redis.lrange(self._buffer, self.expected, stop))
        except (RedisError, OSError) as exc:
            log.warning("turn %s: reading the buffer failed: %s", self.turn_id, exc)
            return []
        events: list[Event] = []
        want = self.expected
        for raw in raws:
            try:
                event = _decode(raw, "buffer")
            except ValueError as exc:
                log.warning("turn %s: malformed event in the buffer: %s", self.turn_id, exc)
                break
            if event.seq < want:
                continue
            if event.seq > want:
                break  # the list index is the seq; anything else is not ours to guess
            events.append(event)
            want += 1
            if event.terminal:
                break
        return events

    async def _deadline_exceeded(self) -> Event:
        log.warning("turn %s: no terminal event by its deadline; giving up", self.turn_id)
        if self._on_deadline is not None:
            try:
                await self._on_deadline(self.turn_id)
            except (RedisError, OSError) as exc:
                log.warning("turn %s: cancelling after the deadline failed: %s",
                            self.turn_id, exc)
        data: dict[str, Any] = {
            "seq": self.expected,
            "type": "error",
            "turn_id": self.turn_id,
            "code": "deadline_exceeded",
            "message": "the turn did not finish within its deadline",
            "attempts": [],
        }
        return Event(self.expected, "error", data, streaming.encode(data), "ingress")


def _decode(raw: bytes | str, source: str) -> Event:
    data = streaming.decode(raw)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ValueError("a turn event must have a string type")
    body = raw if isinstance(raw, bytes) else raw.encode()
    return Event(data["seq"], kind, data, body, source)
