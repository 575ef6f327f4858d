"""The ledger writer: Redis stream -> batched, idempotent upserts -> acknowledgement.

Workers ``XADD`` one event per turn to :data:`STREAM` and never wait on the database. The
writer reads the stream through the consumer group :data:`GROUP`, so several writers
share the work and an entry read by a writer that died is handed to another one:

1. entries come in batches (``XREADGROUP ... COUNT batch_size``); every
   ``claim_every_s``, entries pending for longer than ``claim_idle_ms`` (a writer killed
   mid-batch, or stuck) are taken over with ``XAUTOCLAIM``;
2. each entry is parsed (:class:`~dispatcher.ledger.events.LedgerEvent`); one that cannot
   be (bad JSON, no turn id) goes to the dead-letter stream :data:`DEAD_STREAM` with the
   reason, so it cannot block the stream;
3. the batch is written in one transaction (:func:`~dispatcher.ledger.repository.write_turns`:
   ``INSERT ... ON CONFLICT (turn_id) DO UPDATE`` plus the roll-ups), then committed;
4. only after the commit are the entries acknowledged (``XACK``) and deleted (``XDEL``).

So an entry is acknowledged only when its row is committed, and a row is written once
however often its entry is delivered: at-least-once delivery, idempotent writes.

When the database is unreachable the writer keeps its batch, retries with backoff (the
entries wait in the stream, unacknowledged) and resumes when the database is back. A row
the database refuses (a constraint) is isolated by halving the batch and dead-lettered
alone; the rest of the batch is written.

Why a plain process rather than a Celery task: the work is a loop over a stream with one
transaction per batch, and its delivery guarantees come from the consumer group itself
(pending entries, claim, ack after commit). A Celery task per event would add a broker
hop and a result per event, and a task per batch would re-implement the same loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from pydantic import ValidationError
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from dispatcher.domain import Usage
from dispatcher.ledger.events import LedgerEvent
from dispatcher.ledger.repository import WriteResult, register_policy, write_turns
from dispatcher.policy.models import Policy
from dispatcher.streaming import PREFIX

log = logging.getLogger(__name__)

STREAM = f"{PREFIX}:ledger"
FIELD = "event"
GROUP = "ledger-writer"
DEAD_STREAM = f"{PREFIX}:ledger:dead"
#: dead letters kept (approximately): enough to investigate, bounded
DEAD_MAXLEN = 100_000
#: entries per batch: large enough that the per-batch costs (lock, lookup, roll-ups,
#: commit) are spread thin, small enough to commit several times a second
DEFAULT_BATCH = 2000


class DatabaseUnavailable(Exception):
    """Raised inside the writer when the database cannot be reached (the batch is retried)."""


class _Stopping(Exception):
    """Raised when a stop is asked while a batch waits for the database (left pending)."""


@dataclass(frozen=True, slots=True)
class WriterConfig:
    stream: str = STREAM
    group: str = GROUP
    #: this writer's name in the group; default host-pid (a restart is a new consumer and
    #: takes over the old one's entries through XAUTOCLAIM)
    consumer: str | None = None
    batch_size: int = DEFAULT_BATCH
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    claim_every_s: float = 5.0
    dead_stream: str = DEAD_STREAM
    #: delete entries once acknowledged, so the stream holds only what is not yet written
    delete_acked: bool = True
    retry_initial_s: float = 0.25
    retry_max_s: float = 5.0
    #: consumers with nothing pending and idle this long are removed from the group
    reap_idle_ms: int = 3_600_000


@dataclass(slots=True)
class WriterStats:
    events: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    dead: int = 0
    batches: int = 0
    claimed: int = 0
    db_retries: int = 0
    redis_retries: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.events / elapsed if elapsed > 0 else 0.0


Entry = tuple[str, dict[bytes, bytes]]


@dataclass(slots=True)
class Batch:
    """Entries read together: their ids, the rows parsed from them, the dead letters."""

    entry_ids: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)
    dead: list[tuple[str, bytes, str]] = field(default_factory=list)


def _wait(future: Future[WriteResult] | None) -> None:
    if future is not None:
        future.result()  # re-raises what the database stage raised


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LedgerWriter:
    """Consumes the ledger stream into the database (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        engine: Engine,
        config: WriterConfig | None = None,
        *,
        policy: Policy | None = None,
        policy_loader: Callable[[], Policy] | None = None,
        on_batch: Callable[[WriterStats], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.config = config or WriterConfig()
        self.consumer = self.config.consumer or default_consumer()
        self.policy = policy
        self.policy_loader = policy_loader
        self._seen_versions: set[str] = set()
        self.on_batch = on_batch
        self.stop = stop or threading.Event()
        self.stats = WriterStats()
        self._policy_registered = policy is None
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        #: paging through this consumer's own pending entries (a restart under the same
        #: name); None once done
        self._own_cursor: str | None = "0"
        self._db_down_since: float | None = None

    # -- the loop -----------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer group (reading from the stream's start) if it is missing."""
        try:
            self.redis.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, *, until_idle: bool = False) -> WriterStats:
        """Write batches until :attr:`stop` is set (or, with ``until_idle``, until nothing
        is left to read or pending in the group).

        Two stages overlap: while a thread writes and commits batch N (waiting on the
        database), this thread reads and parses batch N+1. At most those two batches are
        held in memory; while the database is down the first stage waits too, so the
        backlog stays in Redis.
        """
        self._with_redis(self.ensure_group)
        log.info(
            "ledger writer %s: reading %s as group %s, batches of %d",
            self.consumer,
            self.config.stream,
            self.config.group,
            self.config.batch_size,
        )
        inflight: Future[WriteResult] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="ledger-db") as db:
            try:
                while not self.stop.is_set():
                    entries = self._with_redis(self._next_entries)
                    if entries:
                        batch = self.prepare(entries)
                        _wait(inflight)
                        inflight = db.submit(self.commit, batch)
                        continue
                    _wait(inflight)
                    inflight = None
                    if until_idle and self._idle():
                        break
                _wait(inflight)
            except _Stopping:
                log.warning(
                    "ledger writer %s: stopped while the database was down; the batch in "
                    "hand stays pending for the next writer",
                    self.consumer,
                )
        return self.stats

    def step(self) -> int:
        """One batch, synchronously: own pending first, then claimed, then new entries.
        Returns the number of entries handled."""
        entries = self._with_redis(self._next_entries)
        if not entries:
            return 0
        try:
            self.process(entries)
        except _Stopping:
            return 0
        return len(entries)

    def _idle(self) -> bool:
        pending = self._with_redis(
            lambda: self.redis.xpending(self.config.stream, self.config.group)
        )
        return not pending or int(pending["pending"]) == 0

    def _next_entries(self) -> list[Entry]:
        cfg = self.config
        if self._own_cursor is not None:
            # entries this consumer name read before a restart and never acknowledged
            entries = self._read(self._own_cursor)
            if entries:
                self._own_cursor = entries[-1][0]
                return entries
            self._own_cursor = None
        now = time.monotonic()
        if now >= self._next_claim:
            claimed = self._claim()
            if claimed:
                self.stats.claimed += len(claimed)
                return claimed
            self._next_claim = now + cfg.claim_every_s
        return self._read(">", block=cfg.block_ms)

    def _read(self, start: str, block: int | None = None) -> list[Entry]:
        cfg = self.config
        try:
            reply: Any = self.redis.xreadgroup(
                cfg.group, self.consumer, {cfg.stream: start}, count=cfg.batch_size, block=block
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # the stream or group was deleted: start again
            return []
        entries: list[Entry] = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                if fields is None:  # deleted while pending: nothing to write
                    self._ack([_text(entry_id)])
                    continue
                entries.append((_text(entry_id), fields))
        return entries

    def _claim(self) -> list[Entry]:
        cfg = self.config
        try:
            reply: Any = self.redis.xautoclaim(
                cfg.stream,
                cfg.group,
                self.consumer,
                min_idle_time=cfg.claim_idle_ms,
                start_id=self._claim_cursor,
                count=cfg.batch_size,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()
            return []
        cursor, items = _text(reply[0]), reply[1]
        self._claim_cursor = cursor
        if cursor == "0-0":
            self._reap_consumers()
        entries = [(_text(i), f) for i, f in items if f]
        if entries:
            log.warning(
                "ledger writer %s: took over %d entries pending longer than %d ms",
                self.consumer,
                len(entries),
                cfg.claim_idle_ms,
            )
        return entries

    def _reap_consumers(self) -> None:
        cfg = self.config
        consumers: Any = self.redis.xinfo_consumers(cfg.stream, cfg.group)
        for info in consumers:
            name = _text(info["name"])
            if name != self.consumer and info["pending"] == 0 and info["idle"] > cfg.reap_idle_ms:
                self.redis.xgroup_delconsumer(cfg.stream, cfg.group, name)

    # -- one batch ------------------------------------------------------------------------

    def process(self, entries: list[Entry]) -> WriteResult:
        """Parse, write (retrying while the database is down), then acknowledge."""
        return self.commit(self.prepare(entries))

    def prepare(self, entries: list[Entry]) -> Batch:
        """Parse entries into rows; entries that cannot be parsed become dead letters."""
        now = datetime.now(UTC)
        batch = Batch([e for e, _ in entries])
        for entry_id, fields in entries:
            raw = fields.get(FIELD.encode())
            if raw is None:
                shown = orjson.dumps({_text(k): _text(v) for k, v in fields.items()})
                batch.dead.append((entry_id, shown, f"no {FIELD!r} field"))
                continue
            try:
                event = LedgerEvent.parse(raw)
            except (ValueError, ValidationError) as exc:
                batch.dead.append((entry_id, raw, _reason(exc)))
                continue
            self._note_version(event.policy_version)
            batch.rows.append(
                event.to_row(stream_id=entry_id, now=now, pricer=self._price, raw=raw)
            )
            batch.row_ids.append(entry_id)
        return batch

    def commit(self, batch: Batch) -> WriteResult:
        """Write the batch's rows in one transaction, then dead-letter and acknowledge."""
        result = self._write(batch.rows, batch.row_ids, batch.dead)
        self._dead_letter(batch.dead)
        self._with_redis(lambda: self._ack(batch.entry_ids))
        st = self.stats
        st.events += len(batch.entry_ids)
        st.inserted += result.inserted
        st.updated += result.updated
        st.unchanged += result.unchanged
        st.dead += len(batch.dead)
        st.batches += 1
        if self.on_batch is not None:
            self.on_batch(st)
        return result

    def _write(
        self, rows: list[dict[str, Any]], ids: list[str], dead: list[tuple[str, bytes, str]]
    ) -> WriteResult:
        if not rows:
            return WriteResult()
        delay = self.config.retry_initial_s
        while True:
            try:
                result = self._commit(rows)
            except (IntegrityError, DataError) as exc:
                if len(rows) == 1:
                    log.error(
                        "turn %s: the database refused its row: %s",
                        rows[0]["turn_id"],
                        _reason(exc),
                    )
                    dead.append((ids[0], _row_json(rows[0]), _reason(exc)))
                    return WriteResult()
                half = len(rows) // 2
                first = self._write(rows[:half], ids[:half], dead)
                second = self._write(rows[half:], ids[half:], dead)
                return WriteResult(
                    first.inserted + second.inserted,
                    first.updated + second.updated,
                    first.unchanged + second.unchanged,
                )
            except DatabaseUnavailable as exc:
                self.stats.db_retries += 1
                if self._db_down_since is None:
                    self._db_down_since = time.monotonic()
                    log.warning(
                        "ledger writer %s: database unreachable (%s); %d events wait in the "
                        "stream, retrying",
                        self.consumer,
                        exc,
                        len(rows),
                    )
                if self.stop.wait(delay):
                    # the entries stay pending; another writer (or this one, restarted)
                    # writes them
                    raise _Stopping from exc
                delay = min(delay * 2, self.config.retry_max_s)
                continue
            if self._db_down_since is not None:
                log.warning(
                    "ledger writer %s: database back after %.1f s",
                    self.consumer,
                    time.monotonic() - self._db_down_since,
                )
                self._db_down_since = None
            return result

    def _commit(self, rows: list[dict[str, Any]]) -> WriteResult:
        try:
            with Session(self.engine) as session, session.begin():
                if not self._policy_registered and self.policy is not None:
                    register_policy(session, self.policy)
                result = write_turns(session, rows)
        except (OperationalError, InterfaceError) as exc:
            raise DatabaseUnavailable(_reason(exc)) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise DatabaseUnavailable(_reason(exc)) from exc
            raise
        self._policy_registered = True
        return result

    def _ack(self, ids: list[str]) -> None:
        if not ids:
            return
        cfg = self.config
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(cfg.stream, cfg.group, *ids)
        if cfg.delete_acked:
            pipe.xdel(cfg.stream, *ids)
        pipe.execute()

    def _dead_letter(self, dead: list[tuple[str, bytes, str]]) -> None:
        if not dead:
            return
        cfg = self.config

        def send() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for entry_id, raw, reason in dead:
                log.error("ledger entry %s dead-lettered: %s", entry_id, reason)
                pipe.xadd(
                    cfg.dead_stream,
                    {"event": raw, "error": reason, "entry_id": entry_id},
                    maxlen=DEAD_MAXLEN,
                    approximate=True,
                )
            pipe.execute()

        self._with_redis(send)

    # -- prices ---------------------------------------------------------------------------

    def _note_version(self, version: str | None) -> None:
        """An event of a policy version this writer has not loaded: the policy file may
        have changed since it started; read it again once, and register its prices if it
        is that version. (A row is written either way: it keeps its version, and the
        price reference resolves once some writer registers that version.)"""
        if (
            not version
            or self.policy_loader is None
            or version in self._seen_versions
            or (self.policy is not None and version == self.policy.version)
        ):
            return
        self._seen_versions.add(version)
        try:
            fresh = self.policy_loader()
        except Exception as exc:  # a bad file must not stop the ledger
            log.warning("ledger writer: cannot reload the policy: %s", exc)
            return
        if fresh.version == version:
            log.info("ledger writer: policy %s loaded, its prices will be registered", version)
            self.policy = fresh
            self._policy_registered = False

    def _price(self, version: str | None, model: str | None, usage: Usage) -> Decimal | None:
        """Cost of an event that carries none, when this writer's policy is the event's."""
        policy = self.policy
        if policy is None or (version and version != policy.version):
            return None
        if model is None:
            return policy.baseline_cost(usage)
        spec = policy.models.get(model)
        return None if spec is None else spec.cost(usage)

    # -- Redis outages --------------------------------------------------------------------

    def _with_redis(self, call: Callable[[], Any]) -> Any:
        delay = self.config.retry_initial_s
        warned = False
        while True:
            try:
                return call()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self.stats.redis_retries += 1
                if not warned:
                    log.warning(
                        "ledger writer %s: Redis unreachable (%s), retrying", self.consumer, exc
                    )
                    warned = True
                if self.stop.wait(delay):
                    return None
                delay = min(delay * 2, self.config.retry_max_s)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()
        )
        return f"invalid ledger event: {problems}"[:500]
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:500]


def _row_json(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, default=str)
