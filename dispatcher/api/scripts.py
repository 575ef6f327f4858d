"""The ingress's Lua scripts, on the ingress's pipelined connection (EVALSHA, loaded once)."""

from __future__ import annotations

from dispatcher import resp

# KEYS[1] buffer, KEYS[2] meta, KEYS[3] the tier's queue, KEYS[4] session snapshot (optional)
# ARGV: route event, buffer ttl, tenant, deadline_at, meta ttl, sticky tier ('' = keep),
#       rule, session ttl, the Celery task message
# Returns nil when the turn was created (and enqueued), else the tenant that owns the
# existing turn. One round trip, atomic: no turn exists without its job, nor a job
# without its route event.
CREATE_TURN = """
local owner = redis.call('HGET', KEYS[2], 'tenant')
if owner then return owner end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'tenant', ARGV[3], 'deadline_at', ARGV[4], 'clients', 1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
if #KEYS >= 4 then
  local n = redis.call('HINCRBY', KEYS[4], 'n', 1)
  if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[4], 'tier', ARGV[6], 'at', n, 'rule', ARGV[7])
  end
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
redis.call('LPUSH', KEYS[3], ARGV[9])
return false
"""

# KEYS[1] meta; ARGV[1] +1 or -1. Counts the clients reading a turn, without bringing
# back (TTL-less) the hash of a turn that has expired. Returns the new count or nil.
ADD_CLIENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HINCRBY', KEYS[1], 'clients', ARGV[1])
end
return false
"""


class Scripts:
    """The scripts, bound to one pipelined connection."""

    def __init__(self, pipeline: resp.Pipeline) -> None:
        self.create_turn = pipeline.script(CREATE_TURN)
        self.add_client = pipeline.script(ADD_CLIENT)
