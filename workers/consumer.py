"""The native engine: takes turns off the Celery queues on the process's own event loop.

Why not Celery's consumer (measured in ``docs/performance.md``)
---------------------------------------------------------------
With Celery's ``threads`` pool a turn crosses three threads before its first byte leaves
for the provider: kombu's ``BRPOP`` on the consumer thread, a pool thread, then
``run_coroutine_threadsafe`` onto the event loop that holds the streams. The consumer
thread and the hand-offs take GIL time from the one thread that streams every token,
and the wake-ups add milliseconds to the first token. This engine does the same job on
the loop itself, and keeps everything that makes the queue Celery's:

* the **messages** are Celery task protocol 2 on kombu's Redis transport: any producer
  (``send_task``, the ingress's own :mod:`dispatcher.api.enqueue`) feeds either engine,
  and a Celery worker and a native one can consume the same queue side by side;
* **late acks with kombu's bookkeeping**: a taken message is recorded in kombu's
  ``unacked`` hash and ``unacked_index`` sorted set (same key names and value layout)
  until its turn has ended, then removed (the ack). A process that dies leaves it there;
  after the broker's visibility timeout it is put back on its queue, by this engine
  (:meth:`Consumer.restore_visible`) or by any Celery worker, whichever looks first;
* **prefetch = concurrency**: a message is taken only when a slot is free, so a busy
  process never hoards turns another could start now.

Taking a message is one Lua call (:data:`TAKE`: ``RPOP`` and the unacked record,
atomically) while the queue has work; when it is empty the consumer blocks in ``BRPOP``
on a connection of its own and, like kombu, records the message after popping it: the
record goes out with the turn's first command (its claim) rather than a round trip
before it, which took 1-2 ms off the queue wait at load.
Redeliveries are harmless either way: :mod:`workers.claim` decides by turn id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson

from dispatcher import resp
from dispatcher.turns import RUN_TURN_TASK, TurnJob, job_problem
from workers.execute import execute
from workers.resources import Resources

log = logging.getLogger(__name__)

#: kombu's Redis transport keys (``Channel.unacked_key`` / ``unacked_index_key``)
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
#: kombu's binding table of an exchange: members ``routing_key\x06\x16pattern\x06\x16queue``
BINDING_PREFIX = "_kombu.binding."
BINDING_SEP = "\x06\x16"
#: How long one BRPOP blocks; also the longest a stop waits for the receiver.
BLOCK_S = 1
#: How often unacked messages past the visibility timeout are looked for, and how many
#: are restored per look (kombu's ``unacked_restore_limit`` is 10 per cycle).
RESTORE_EVERY_S = 30.0
RESTORE_BATCH = 100
#: Pause after a Redis error before taking again.
RETRY_DELAY_S = 0.5

# KEYS[1] unacked hash, KEYS[2] unacked index, KEYS[3..] queues (first non-empty wins);
# ARGV[1] now (epoch s), ARGV[2] optional: a message already popped (by BRPOP) to record.
# Returns {queue, message, tag or false}. The unacked value is kombu's
# ``[message, exchange, routing_key]`` with the message's bytes kept as they were.
TAKE = """
local queue, raw = nil, ARGV[2]
if raw then
  queue = KEYS[3]
else
  for i = 3, #KEYS do
    raw = redis.call('RPOP', KEYS[i])
    if raw then queue = KEYS[i]; break end
  end
  if not raw then return false end
end
local ok, m = pcall(cjson.decode, raw)
if not (ok and type(m) == 'table' and type(m['properties']) == 'table') then
  return {queue, raw, false}
end
local props = m['properties']
local tag = props['delivery_tag']
if type(tag) ~= 'string' then return {queue, raw, false} end
local info = props['delivery_info']
local ex, rk = '', queue
if type(info) == 'table' then
  if type(info['exchange']) == 'string' then ex = info['exchange'] end
  if type(info['routing_key']) == 'string' then rk = info['routing_key'] end
end
redis.call('ZADD', KEYS[2], ARGV[1], tag)
redis.call('HSET', KEYS[1], tag,
  '[' .. raw .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
return {queue, raw, tag}
"""

# KEYS[1] unacked hash, KEYS[2] unacked index, KEYS[3] queue; ARGV[1] tag, ARGV[2] the
# unacked value read before (compare-and-set: nobody acked or restored it meanwhile),
# ARGV[3] the message to put back on the queue's consuming end.
RESTORE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
"""


#: a message's delivery tag, or the pending record call that will tell it
Tag = str | None | asyncio.Future[Any]


class BadMessage(ValueError):
    """A message that is not a ``dispatcher.run_turn`` call with a usable job."""


def decode_task(raw: bytes) -> TurnJob:
    """The job of a protocol-2 ``dispatcher.run_turn`` message; :class:`BadMessage` if not."""
    try:
        message = orjson.loads(raw)
        headers = message["headers"]
        task = headers.get("task")
        if task != RUN_TURN_TASK:
            raise BadMessage(f"task {task!r} is not {RUN_TURN_TASK!r}")
        body = message["body"]
        encoding = message.get("properties", {}).get("body_encoding")
        if encoding == "base64":
            body = base64.b64decode(body)
        elif encoding is not None:
            raise BadMessage(f"body encoding {encoding!r} is not supported")
        if message.get("content-type", "application/json") != "application/json":
            raise BadMessage(f"content type {message.get('content-type')!r} is not JSON")
        args, kwargs, _ = orjson.loads(body)
    except BadMessage:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadMessage(f"not a Celery protocol-2 message: {exc}") from exc
    job = args[0] if args else kwargs.get("job")
    problem = job_problem(job)
    if problem is not None:
        raise BadMessage(problem)
    return job  # type: ignore[no-any-return]


class Consumer:
    """Takes turns from ``queues`` and runs up to ``concurrency`` of them at once."""

    def __init__(self, res: Resources, queues: Sequence[str], concurrency: int,
                 visibility_timeout: float) -> None:
        self.res = res
        self.queues = list(queues)
        self.concurrency = concurrency
        self.visibility_timeout = visibility_timeout
        self._take = res.pipeline.script(TAKE)
        self._restore = res.pipeline.script(RESTORE)
        self._blocking = resp.Pipeline(res.settings.redis_url)
        self._slots = asyncio.Semaphore(concurrency)
        self._turns: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.taken = 0

    @property
    def running(self) -> int:
        return len(self._turns)

    def stop(self) -> None:
        """Take no more messages; the turns already running go on."""
        self._stopping.set()

    async def run(self) -> None:
        """Take and start turns until :meth:`stop`; then return (turns may still run)."""
        restorer = asyncio.create_task(self._restore_forever(), name="unacked-restorer")
        try:
            while not self._stopping.is_set():
                if not await self._slot():
                    break
                try:
                    got = await self._receive()
                except (ConnectionError, OSError, resp.RespError) as exc:
                    self._slots.release()
                    log.warning("taking from %s failed (%r); retrying", self.queues, exc)
                    await self._pause(RETRY_DELAY_S)
                    continue
                if got is None:
                    self._slots.release()
                    continue
                self.taken += 1
                task = asyncio.create_task(self._handle(*got))
                self._turns.add(task)
                task.add_done_callback(self._turn_done)
        finally:
            restorer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await restorer
            await self._blocking.aclose()

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the running turns; cancel the rest. How many were."""
        if self._turns:
            await asyncio.wait(set(self._turns), timeout=timeout)
        left = list(self._turns)
        for task in left:
            task.cancel()  # each ends with worker_lost and is acked
        if left:
            await asyncio.wait(left, timeout=5)
        return len(left)

    # -- taking ---------------------------------------------------------------------------

    async def _slot(self) -> bool:
        """Wait for a free slot; False (and no slot held) if told to stop meanwhile."""
        if not self._slots.locked():
            await self._slots.acquire()
        else:
            acquiring = asyncio.ensure_future(self._slots.acquire())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not acquiring.done():
                acquiring.cancel()
                return False
        if self._stopping.is_set():
            self._slots.release()
            return False
        return True

    async def _receive(self) -> tuple[str, bytes, Tag] | None:
        if len(self.queues) > 1:  # round robin over the queues, as kombu's cycle does
            self.queues.append(self.queues.pop(0))
        keys = [UNACKED, UNACKED_INDEX, *self.queues]
        got = await self._take(keys=keys, args=[repr(time.time())])
        if got:
            queue, raw, tag = got
            return queue.decode(), raw, (tag.decode() if tag else None)
        popped = await self._blocking.call("BRPOP", *self.queues, BLOCK_S)
        if not popped:
            return None
        queue, raw = popped
        # The turn starts now; its unacked record goes out beside the turn's claim (same
        # connection, same write, ahead of the claim) instead of a round trip before it.
        record = asyncio.ensure_future(self._take(
            keys=[UNACKED, UNACKED_INDEX, queue], args=[repr(time.time()), raw]))
        return queue.decode(), raw, record

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        self._turns.discard(task)
        self._slots.release()

    async def _handle(self, queue: str, raw: bytes, tag: Tag) -> None:
        try:
            try:
                job = decode_task(raw)
            except BadMessage as exc:
                log.error("%s: message dropped: %s", queue, exc)
                return
            await execute(job, self.res)
        except asyncio.CancelledError:
            pass  # stopped: execute has ended the turn with its terminal event
        except Exception:
            # Redis unusable mid-turn: nothing more can be published; ack as Celery would
            # (task_acks_on_failure_or_timeout), the claim settles any redelivery.
            log.exception("%s: turn failed", queue)
        finally:
            if isinstance(tag, asyncio.Future):
                tag = await self._recorded(tag)
            if tag is not None:
                await self._ack(tag)

    @staticmethod
    async def _recorded(record: asyncio.Future[Any]) -> str | None:
        """The tag of a message recorded after a BRPOP (None if it has none, or failed)."""
        try:
            got = await asyncio.shield(record)
        except (ConnectionError, OSError, resp.RespError) as exc:
            log.warning("recording a taken message failed (%r)", exc)
            return None
        return got[2].decode() if got and got[2] else None

    async def _ack(self, tag: str) -> None:
        pipeline = self.res.pipeline
        try:
            await asyncio.gather(pipeline.call("ZREM", UNACKED_INDEX, tag),
                                 pipeline.call("HDEL", UNACKED, tag))
        except (ConnectionError, OSError, resp.RespError) as exc:
            # left unacked: restored after the visibility timeout, then found finished
            log.warning("ack of %s failed (%r)", tag, exc)

    # -- restoring what dead consumers left ------------------------------------------------

    async def _restore_forever(self) -> None:
        while True:
            try:
                restored = await self.restore_visible()
                if restored:
                    log.warning("restored %d unacked message(s) past the visibility timeout",
                                restored)
            except (ConnectionError, OSError, resp.RespError) as exc:
                log.warning("restoring unacked messages failed (%r)", exc)
            await asyncio.sleep(RESTORE_EVERY_S)

    async def restore_visible(self, now: float | None = None) -> int:
        """Put messages unacked for longer than the visibility timeout back on their queue.

        As kombu's ``QoS.restore_visible``: the message is marked redelivered and pushed on
        the consuming end of its queue; a message acked meanwhile is left alone.
        """
        pipeline = self.res.pipeline
        ceil = (now if now is not None else time.time()) - self.visibility_timeout
        tags = await pipeline.call("ZRANGEBYSCORE", UNACKED_INDEX, "-inf", repr(ceil),
                                   "LIMIT", 0, RESTORE_BATCH)
        restored = 0
        for tag in tags or []:
            value = await pipeline.call("HGET", UNACKED, tag)
            if value is None:
                await pipeline.call("ZREM", UNACKED_INDEX, tag)
                continue
            try:
                message, exchange, routing_key = json.loads(value)
                with contextlib.suppress(KeyError, TypeError):
                    message["headers"]["redelivered"] = True
                    message["properties"]["delivery_info"]["redelivered"] = True
            except (ValueError, TypeError) as exc:
                log.error("unacked message %s is unreadable (%s); dropped", tag, exc)
                await asyncio.gather(pipeline.call("HDEL", UNACKED, tag),
                                     pipeline.call("ZREM", UNACKED_INDEX, tag))
                continue
            for queue in await self._queues_of(exchange, routing_key):
                restored += await self._restore(
                    keys=[UNACKED, UNACKED_INDEX, queue],
                    args=[tag, value, json.dumps(message)],
                )
        return restored

    async def _queues_of(self, exchange: str | None, routing_key: str) -> list[str]:
        """kombu's ``_lookup``: the default exchange routes by queue name."""
        if not exchange or exchange == routing_key:
            return [routing_key]
        members = await self.res.pipeline.call("SMEMBERS", BINDING_PREFIX + exchange)
        queues = []
        for member in members or []:
            rk, _, queue = member.decode().split(BINDING_SEP)
            if rk == routing_key:
                queues.append(queue)
        return queues or [routing_key]
