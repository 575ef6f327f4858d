"""Per-process resources: one asyncio event loop in a thread, and what lives on it.

Why this design (DESIGN §5 asks to pick and justify the pool)
-------------------------------------------------------------
An LLM turn is seconds of waiting on a socket and microseconds of work per token. A
worker process must hold hundreds of such streams at once.

* **prefork** holds one stream per process: 200 streams would need 200 processes.
* **gevent/eventlet** monkey-patch the whole process; redis-py's and httpx's asyncio
  paths, uvloop and anyio do not mix with a patched stdlib, and a missed patch blocks
  every stream of the process.
* **asyncio inside each task** (``asyncio.run`` per task) would build a loop, an HTTP
  pool and a Redis pool per turn: no keep-alive reuse, a TLS handshake per call, and
  hundreds of loops competing for the GIL.

So: **one event loop per process** (uvloop when importable) holds every stream. The
default engine (:mod:`workers.consumer`) takes the Celery messages on that loop itself;
with ``--engine celery``, Celery's ``threads`` pool (concurrency 256 by default) runs each
task in a thread that only submits :func:`workers.execute.execute` to the loop and blocks
on the ``concurrent.futures.Future`` (measured against each other in
``docs/performance.md``).
Either way the loop multiplexes every stream over one pooled ``httpx.AsyncClient``
(keep-alive connections shared by all turns, :mod:`dispatcher.providers.transport`), one
auto-pipelined RESP connection for the per-token path, and one ``redis.asyncio`` pool for
the rest; under Celery a blocked thread costs a few tens of KB of stack and no CPU.

The native engine opens :class:`Resources` on its own loop (:mod:`workers.native`); under
Celery the loop runs in a thread of its own, started when the worker starts
(``worker_init`` for the threads pool, ``worker_process_init`` in each child if someone
runs prefork), never at import and never inherited across a fork;
:meth:`ProcessLoop.start` also notices a changed pid.

On the loop live the adapters of every provider of the policy (``make_client`` with
``env=os.environ`` and ``sim_url``), a single subscription to ``dispatcher:cancel`` that
cancels the asyncio task of a cancelled turn at once, and one lease renewer for every
running turn (see :mod:`workers.claim`), and the process's announcement in Redis
(``dispatcher:workers:<host>:<pid>``: engine, tiers, concurrency, running turns).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import orjson
import redis.asyncio as aioredis

from dispatcher import resp
from dispatcher.policy import Policy, load_policy
from dispatcher.providers import HttpAdapter, make_client, new_http_client
from dispatcher.settings import Settings, get_settings
from dispatcher.streaming import APPEND_AND_PUBLISH, CANCEL_CHANNEL, cancel_key, state_key
from workers.claim import CLAIM, LEASE_S, RENEW, RENEW_EVERY_S

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Redis connections of one process: a flush or a claim holds one for a round trip.
REDIS_CONNECTIONS = 256
#: How long opening the resources may take before the worker gives up starting.
START_TIMEOUT_S = 30.0
#: How long a cancel heard for a turn not running here is remembered.
UNCLAIMED_CANCEL_S = 60.0
#: A worker process announces itself under ``WORKER_KEY_PREFIX + worker id`` (JSON: pid,
#: parent pid, host, engine, tiers, concurrency, running turns), refreshed every
#: ``ANNOUNCE_EVERY_S``; the key expires ``ANNOUNCE_TTL_S`` after the process stops.
WORKER_KEY_PREFIX = "dispatcher:workers:"
ANNOUNCE_EVERY_S = 5.0
ANNOUNCE_TTL_S = 15


class Resources:
    """Everything a turn needs, owned by the process's event loop."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        http: httpx.AsyncClient,
        redis: aioredis.Redis,
        clients: dict[str, HttpAdapter],
        identity: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        #: what the announcement says besides the pid and the running count (tiers, engine)
        self.identity = dict(identity or {})
        self.policy = policy
        self.http = http
        self.redis = redis
        self.clients = clients
        # The per-token path (APPEND_AND_PUBLISH) and the claim go over one auto-pipelined
        # connection (dispatcher.resp): the scripts of every turn of this process share a
        # write per loop iteration, at a fraction of redis-py's per-command CPU.
        self.pipeline = resp.Pipeline(settings.redis_url)
        self.append_script = self.pipeline.script(APPEND_AND_PUBLISH)
        self.claim_script = self.pipeline.script(CLAIM)
        self.renew_script = redis.register_script(RENEW)
        #: the cancel channel, on the same lean subscriber the ingress's relay uses
        self._cancels = resp.Subscriber(
            settings.redis_url, CANCEL_CHANNEL, self._on_cancel, self._on_cancels_reconnected,
            client_name=f"dispatcher-cancels-{os.getpid()}")
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        #: turn id -> (owner id, the asyncio task running it)
        self.running: dict[str, tuple[str, asyncio.Task[Any]]] = {}
        #: turns whose cancellation came from the cancel channel (not a shutdown)
        self.cancel_requested: set[str] = set()
        #: cancels heard for turns not (yet) running here: turn id -> loop time heard
        self._unclaimed_cancels: dict[str, float] = {}
        self._background: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, settings: Settings, policy: Policy | None = None,
                   identity: dict[str, Any] | None = None) -> Resources:
        """Build the clients on the running loop and start the background tasks."""
        policy = policy or load_policy(settings.policy)
        http = new_http_client()
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=REDIS_CONNECTIONS, timeout=10
        )
        redis = aioredis.Redis(connection_pool=pool)
        try:
            await redis.ping()
            clients = {
                name: make_client(name, cfg, http, env=os.environ, sim_url=settings.sim_url)
                for name, cfg in policy.providers.items()
            }
        except BaseException:
            await http.aclose()
            await redis.aclose()
            raise
        res = cls(settings, policy, http, redis, clients, identity)
        await res._start_background()
        log.info(
            "worker %s: %d providers, policy %s, sim %s",
            res.worker_id,
            len(clients),
            policy.version,
            settings.sim_url or "off",
        )
        return res

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._cancels.aclose()
        with contextlib.suppress(Exception):
            await self.redis.delete(WORKER_KEY_PREFIX + self.worker_id)
        await self.http.aclose()
        await self.pipeline.aclose()
        await self.redis.aclose(close_connection_pool=True)

    def new_owner(self) -> str:
        """A unique owner id for one execution of one turn."""
        return f"{self.worker_id}:{uuid.uuid4().hex[:12]}"

    def track(self, turn_id: str, owner: str, task: asyncio.Task[Any]) -> None:
        self.running[turn_id] = (owner, task)

    def heard_cancel(self, turn_id: str) -> bool:
        """Whether a cancel of ``turn_id`` arrived before it was tracked."""
        return self._unclaimed_cancels.pop(turn_id, None) is not None

    def untrack(self, turn_id: str) -> None:
        self.running.pop(turn_id, None)
        self.cancel_requested.discard(turn_id)

    def request_cancel(self, turn_id: str) -> bool:
        """Cancel the running turn ``turn_id`` now; False if this process does not run it."""
        entry = self.running.get(turn_id)
        if entry is None or entry[1].done():
            # It may be between its claim and its tracking here: remember it for a while.
            self._unclaimed_cancels[turn_id] = asyncio.get_running_loop().time()
            return False
        self.cancel_requested.add(turn_id)
        entry[1].cancel()
        log.info("turn %s: cancel requested, provider call stopped", turn_id)
        return True

    # -- background -----------------------------------------------------------------------

    async def _start_background(self) -> None:
        self._background = [
            asyncio.create_task(self._renew_leases(), name="lease-renewer"),
            asyncio.create_task(self._announce(), name="announcer"),
        ]
        # A turn must not start before cancels can reach it.
        if not await self._cancels.start(START_TIMEOUT_S):
            raise TimeoutError(f"no subscription to {CANCEL_CHANNEL} within {START_TIMEOUT_S:g} s")

    def _on_cancel(self, channel: bytes, data: bytes) -> None:
        self.request_cancel(data.decode())

    def _on_cancels_reconnected(self) -> None:
        log.warning("cancel subscription was lost and is back; rechecking running turns")
        task = asyncio.create_task(self._recheck_cancels(), name="cancel-recheck")
        self._background.append(task)

    async def _announce(self) -> None:
        key = WORKER_KEY_PREFIX + self.worker_id
        while True:
            record = {
                **self.identity,
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "host": socket.gethostname(),
                "running": len(self.running),
                "at": time.time(),
            }
            try:
                await self.redis.set(key, orjson.dumps(record), ex=ANNOUNCE_TTL_S)
            except Exception as exc:
                log.warning("announcing the worker failed (%r)", exc)
            await asyncio.sleep(ANNOUNCE_EVERY_S)

    async def _recheck_cancels(self) -> None:
        """Cancels published while the subscription was down are still in their keys."""
        turn_ids = list(self.running)
        if not turn_ids:
            return
        flags = await asyncio.gather(*(self.redis.exists(cancel_key(t)) for t in turn_ids))
        for turn_id, flag in zip(turn_ids, flags, strict=True):
            if flag:
                self.request_cancel(turn_id)

    async def _renew_leases(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            horizon = loop.time() - UNCLAIMED_CANCEL_S
            for turn_id, heard in list(self._unclaimed_cancels.items()):
                if heard < horizon:
                    del self._unclaimed_cancels[turn_id]
            entries = list(self.running.items())
            if not entries:
                continue
            try:
                results = await asyncio.gather(
                    *(
                        self.renew_script(keys=[state_key(turn_id)], args=[owner, LEASE_S])
                        for turn_id, (owner, _) in entries
                    )
                )
            except Exception as exc:
                log.warning("lease renewal failed (%r); retrying in %ss", exc, RENEW_EVERY_S)
                continue
            for (turn_id, _), ok in zip(entries, results, strict=True):
                if not ok:
                    log.warning("turn %s: lease lost to another worker", turn_id)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ProcessLoop:
    """The process's I/O thread: its event loop and the :class:`Resources` on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: Settings | None = None
        self._identity: dict[str, Any] = {}
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._resources: Resources | None = None

    def configure(self, settings: Settings, identity: dict[str, Any] | None = None) -> None:
        """Remember the settings the worker started with (used by :meth:`start`)."""
        self._settings = settings
        if identity is not None:
            self._identity = dict(identity)

    def start(self) -> Resources:
        """Start the loop and open the resources, once per process (idempotent)."""
        with self._lock:
            if self._resources is not None and self._pid == os.getpid():
                return self._resources
            # After a fork the parent's thread does not exist here: start afresh.
            settings = self._settings or get_settings()
            loop = _new_loop()
            thread = threading.Thread(
                target=self._run, args=(loop,), name="dispatcher-io", daemon=True
            )
            thread.start()
            future = asyncio.run_coroutine_threadsafe(
                Resources.open(settings, identity=self._identity), loop)
            try:
                resources = future.result(START_TIMEOUT_S)
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(5)
                raise
            self._loop, self._thread, self._resources = loop, thread, resources
            self._pid = os.getpid()
            return resources

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the process loop and block the calling thread until it ends."""
        loop = self._loop
        if loop is None or self._pid != os.getpid():
            coro.close()
            raise RuntimeError("the worker's event loop is not running; call start() first")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the resources and stop the loop (at worker shutdown)."""
        with self._lock:
            loop, thread, resources = self._loop, self._thread, self._resources
            self._loop = self._thread = self._resources = None
            if loop is None or self._pid != os.getpid():
                return
            if resources is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(resources.close(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout)


#: The one loop of this process.
host = ProcessLoop()
