"""Idempotence by turn id: who may run a turn, decided atomically in Redis.

A turn's state hash (:func:`dispatcher.streaming.state_key`) holds ``owner`` (claimed with
``HSETNX``), ``lease_until`` (Redis server time, seconds; refreshed while the owner runs)
and, once the terminal event is written, ``finished_at`` and ``status``.

A delivery of a turn gets one verdict from :data:`CLAIM`:

=========== ============================================================================
claimed     nobody had it: run it
finished    its terminal event is in the buffer (or the hash says so): do nothing
busy        another owner holds a live lease (a duplicate delivery): do nothing
takeover    the previous owner's lease ran out before it published anything: run it
lost        the previous owner died after publishing events: end the turn with one
            ``error`` (``worker_lost``) rather than stream the answer a second time
=========== ============================================================================

Leases use the Redis server's clock, so workers on machines with skewed clocks agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dispatcher.resp import ScriptCall
from dispatcher.streaming import buffer_key, cancel_key, state_key

#: How long a lease lasts without renewal, and how often running turns renew theirs.
LEASE_S = 30
RENEW_EVERY_S = 10
#: How long the state hash outlives its last write: longer than any redelivery delay.
STATE_TTL_S = 24 * 3600

Verdict = Literal["claimed", "finished", "busy", "takeover", "lost"]

# KEYS[1] state hash, KEYS[2] event buffer, KEYS[3] cancel flag; ARGV[1] owner,
# ARGV[2] lease s, ARGV[3] ttl s. Returns {verdict, LLEN of the buffer (the buffer index is
# the next seq), whether the turn is already cancelled} in one round trip.
CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = redis.call('LLEN', KEYS[2])
local cancelled = redis.call('EXISTS', KEYS[3])
if redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then
  return {'finished', n, cancelled}
end
if n > 0 then
  local ok, ev = pcall(cjson.decode, redis.call('LINDEX', KEYS[2], -1))
  if ok and type(ev) == 'table' and (ev['type'] == 'done' or ev['type'] == 'error') then
    return {'finished', n, cancelled}
  end
end
local lease = tostring(now + tonumber(ARGV[2]))
if redis.call('HSETNX', KEYS[1], 'owner', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'lease_until', lease, 'claimed_at', tostring(now))
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {'claimed', n, cancelled}
end
local held = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') or 0
if held > now then
  return {'busy', n, cancelled}
end
local previous = redis.call('HGET', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_until', lease,
           'previous_owner', previous, 'claimed_at', tostring(now))
redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
if n > 1 then
  return {'lost', n, cancelled}
end
return {'takeover', n, cancelled}
"""

# KEYS[1] state hash; ARGV[1] owner, ARGV[2] lease s. 1 if renewed, 0 if not the owner.
RENEW = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'lease_until', tostring(now + tonumber(ARGV[2])))
return 1
"""


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: Verdict
    #: the buffer's length: the seq of the next event (0 when the route event is missing)
    buffered: int
    #: the turn's cancel flag was already set
    cancelled: bool = False


async def claim(script: ScriptCall, turn_id: str, owner: str) -> Claim:
    """Decide whether ``owner`` runs ``turn_id`` (see the module table)."""
    raw = await script(
        keys=[state_key(turn_id), buffer_key(turn_id), cancel_key(turn_id)],
        args=[owner, LEASE_S, STATE_TTL_S],
    )
    verdict = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
    return Claim(verdict, int(raw[1]), bool(raw[2]))  # type: ignore[arg-type]
