"""The streaming contract between workers and the ingress: names, event encoding, publish.

Every turn has

- a **channel** ``dispatcher:turn:{id}`` on which the worker publishes events (pub/sub is
  at-most-once: a subscriber that is not listening at that moment misses them);
- a **buffer** ``dispatcher:turn:{id}:events``, a Redis list holding every event of the turn
  in order, kept for ``BUFFER_TTL_S`` after the last write. The list index *is* the
  event's ``seq``: event ``seq`` n sits at index n. A relay that sees a gap in ``seq``
  (or hears nothing for a while) reads the missing range from the buffer, so a client gets
  every event exactly once and in order, and a reconnect with ``Last-Event-ID: n`` resumes
  at n + 1.

Seq 0 is the ``route`` event, written to the buffer by the ingress before it enqueues the
turn. Workers append seq 1, 2, ... with :data:`APPEND_AND_PUBLISH`, which writes and
publishes several events in one round trip, in order, atomically. The last event of every
turn is exactly one terminal event: ``done`` or ``error``.

Event bodies are compact JSON objects: ``{"seq": n, "type": t, ...fields}``. Types:

========== ===============================================================================
route      turn_id, tier, model, provider, rule, confidence
token      text                         (consecutive deltas may be coalesced into one)
sentence   text                         (a complete sentence, for text-to-speech)
tool_call  index, id, name, arguments   (OpenAI-style delta of one tool call)
failover   from_model, to_model, reason (a model failed after streaming had begun)
done       turn_id, usage, cost_usd (string), ttft_ms, total_ms, model, provider,
           attempts, finish_reason, text
error      turn_id, code, message, attempts
========== ===============================================================================

Cancelling: the ingress sets ``dispatcher:turn:{id}:cancel`` (with a TTL) and publishes the
turn id on ``dispatcher:cancel``; every worker process listens there and stops the
provider call of that turn at once; a worker that picks up a turn already cancelled skips it.
"""

from __future__ import annotations

from typing import Any

import orjson

PREFIX = "dispatcher"
BUFFER_TTL_S = 600
CANCEL_CHANNEL = f"{PREFIX}:cancel"
CANCEL_TTL_S = 900
TERMINAL = frozenset({"done", "error"})


def channel(turn_id: str) -> str:
    return f"{PREFIX}:turn:{turn_id}"


def buffer_key(turn_id: str) -> str:
    return f"{PREFIX}:turn:{turn_id}:events"


def cancel_key(turn_id: str) -> str:
    return f"{PREFIX}:turn:{turn_id}:cancel"


def state_key(turn_id: str) -> str:
    """Hash of the turn's processing state: owner, started, finished (idempotence)."""
    return f"{PREFIX}:turn:{turn_id}:state"


def session_key(session_id: str) -> str:
    """The router's session snapshot (tier reached, turn counter)."""
    return f"{PREFIX}:session:{session_id}"


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def decode(raw: bytes | str) -> dict[str, Any]:
    event = orjson.loads(raw)
    if not isinstance(event, dict) or not isinstance(event.get("seq"), int):
        raise ValueError("a turn event must be a JSON object with an integer seq")
    return event


# KEYS[1] buffer list, KEYS[2] channel; ARGV[1] ttl seconds; ARGV[2..] encoded events.
# One round trip for any number of events; RPUSH then PUBLISH keeps buffer and channel in
# the same order, and a reader that sees seq n on the channel finds 0..n in the buffer.
APPEND_AND_PUBLISH = """
for i = 2, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
  redis.call('PUBLISH', KEYS[2], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('LLEN', KEYS[1])
"""
