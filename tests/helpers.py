"""Small helpers the test suites share (``tests/`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 5.0, what: str = "the condition",
             interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises ``AssertionError`` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextlib.contextmanager
def writer_in_thread(redis: Any, engine: Any, config: Any, policy: Any = None
                     ) -> Iterator[Any]:
    """A :class:`LedgerWriter` running in a thread; stopped (and checked stopped) at exit."""
    from dispatcher.ledger.writer import LedgerWriter

    stop = threading.Event()
    writer = LedgerWriter(redis, engine, config, policy=policy, stop=stop)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        yield writer
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive(), "the ledger writer did not stop"


def refuse_connections(admin: Any, database: str, refuse: bool = True) -> None:
    """Make Postgres refuse (and drop) connections to ``database``, or accept them again."""
    from sqlalchemy import text

    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {not refuse!s}'))
        if refuse:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": database},
            )


def turn_job(*, chain: list[str], messages: list[dict[str, Any]], tier: str = "fast",
             tenant: str = "tenant-1", session_id: str = "session-1",
             policy_version: str = "test", deadline_s: float = 8.0,
             **changes: Any) -> dict[str, Any]:
    """A ``TurnJob`` dict as the ingress enqueues it (``dispatcher.turns``), fresh ids."""
    import hashlib
    import uuid

    now = time.time()
    prompt = str(messages[-1].get("content") or "")
    job: dict[str, Any] = {
        "turn_id": uuid.uuid4().hex,
        "tenant": tenant,
        "session_id": session_id,
        "tier": tier,
        "chain": chain,
        "rule": "test-rule",
        "confidence": 0.9,
        "params": {"messages": messages},
        "received_at": now,
        "deadline_at": now + deadline_s,
        "policy_version": policy_version,
        "speculative": False,
        "text_chars": len(prompt),
        "text_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
    }
    job.update(changes)
    return job
