"""Celery task messages built by hand, as kombu's Redis transport stores them.

``Celery.send_task`` is synchronous: with kombu it costs 1-7 ms per call (binding lookup,
a round trip, message building), so the ingress ran it in a thread, and the hop to the
thread plus the GIL cost more again. A message on the Redis transport is only one
``LPUSH`` of a JSON envelope onto the list named after the queue, so the ingress builds
that envelope itself (:func:`task_message`) and pushes it with its asyncio Redis client,
in the same Lua call that writes the turn's first event (:mod:`dispatcher.api.scripts`).

The envelope is Celery's task protocol 2 exactly as ``send_task(name, args=[job],
queue=q, task_id=turn_id, ignore_result=True)`` writes it (headers, properties with the
default exchange and the queue as routing key, the body as base64 JSON ``[args, kwargs,
embed]``); ``tests/unit/test_bench_message.py`` compares the two field by field and
``tests/integration/test_bench_enqueue.py`` has a real Celery worker consume it.
Priority 0 (the only one the workers use) is the list named after the queue itself.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from typing import Any, Final

import orjson

#: what ``send_task`` embeds after args and kwargs for a task without a canvas
_EMBED: Final = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class TaskMessages:
    """Builds protocol-2 messages for one producer process."""

    def __init__(self) -> None:
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"
        # Celery's reply_to is the producing app's oid; nothing replies (no result backend)
        self.reply_to = str(uuid.uuid4())

    def build(self, task: str, args: list[Any], *, task_id: str, queue: str,
              argsrepr: str) -> bytes:
        """The JSON envelope to ``LPUSH`` onto ``queue``."""
        body = base64.b64encode(orjson.dumps([args, {}, _EMBED])).decode("ascii")
        message = {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": argsrepr,
                "kwargsrepr": "{}",
                "origin": self.origin,
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": self.reply_to,
                "argsrepr": argsrepr,
                "kwargsrepr": "{}",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                # the transport's key for the message while unacked: unique per message
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return orjson.dumps(message)
