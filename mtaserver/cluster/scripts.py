"""The Lua scripts that make cluster-wide shaping atomic, and the keys they touch.

Each script runs inside Redis as one step, so nodes racing for the last connection slot or
the last token cannot both win. redis-py's ``Script`` sends them with EVALSHA and loads the
source once on NOSCRIPT (a restarted or flushed Redis), so a delivery costs the script's
hash, not its text.

**Whose time.** Every timestamp in Redis is Redis's own clock (``TIME`` inside the script):
nodes' clocks may disagree by seconds, and a lease or a bucket refill measured by one clock
for all nodes cannot be skewed by any of them. Callers pass durations, never instants. A
script also accepts an explicit ``now_ms`` (tests drive a fake clock through it; 0 means
"ask Redis").

Keys of one destination share a hash tag (``{gmail.com}``), so the scripts also work on a
Redis Cluster, where one script may only touch keys of one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

_NOW = """
local now = tonumber(ARGV[1])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: leases (zset id→expiry), bucket (hash tokens, ts), suspension (hash until, by)
# ARGV: now_ms, lease_id, max_connections, lease_ms, rate_per_s (0 = unlimited), burst,
#       reuse ('1': the delivery goes over a pooled connection that holds a lease already:
#       suspension and token only, no new lease)
# → {0, 0} granted | {1, ms_left, by} suspended | {2, ms_to_first_expiry} no slot |
#   {3, ms_to_token} rate
ACQUIRE = (
    _NOW
    + """
local susp = redis.call('HMGET', KEYS[3], 'until', 'by')
local till = tonumber(susp[1]) or 0
if till > now then return {1, till - now, susp[2] or ''} end
local reuse = ARGV[7] == '1'
if not reuse then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {2, math.max(1, tonumber(first[2]) - now)}
  end
end
local rate = tonumber(ARGV[5])
if rate > 0 then
  local burst = tonumber(ARGV[6])
  local b = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
    ts = now
  end
  tokens = math.min(tokens, burst)
  if tokens < 1 then return {3, math.max(1, math.ceil((1 - tokens) * 1000 / rate))} end
  redis.call('HSET', KEYS[2], 'tokens', string.format('%.6f', tokens - 1), 'ts', ts)
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 60000)
end
if reuse then return {0, 0} end
local lease = tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {0, 0}
"""
)

# KEYS: leases; ARGV: now_ms, lease_ms, id... → number of leases now held
# Registration after an outage: a lease that expired while Redis was unreachable is added
# again whatever the count (the connection is open, and opened within limit / nodes).
RENEW = (
    _NOW
    + """
local lease = tonumber(ARGV[2])
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], now + lease, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], lease * 2)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: leases; ARGV: now_ms, lease_ms, max_connections, id... → {leases held, lost id...}
# The periodic renewal of the leases a node holds (connections open, idle ones included).
# A lease found expired (the node could not renew in time) is taken again only if a slot
# is free: meanwhile another node may have taken it, and the limit wins. The ids that
# could not be kept come back: their connections must close.
KEEP = (
    _NOW
    + """
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
local out = {0}
for _, id in ipairs(gone) do
  if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[1], now + lease, id)
  else
    out[#out + 1] = id
  end
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
out[1] = redis.call('ZCARD', KEYS[1])
return out
"""
)

# KEYS: suspension; ARGV: now_ms, duration_ms, by → ms left of the suspension in force
# A shorter suspension never shortens a longer one already set by another node.
SUSPEND = (
    _NOW
    + """
local till = now + tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'until')) or 0
if till > cur then
  redis.call('HSET', KEYS[1], 'until', till, 'by', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
  return tonumber(ARGV[2])
end
return cur - now
"""
)

# KEYS: nodes (zset id→last_seen), node (hash), fingerprints (hash id→fingerprint)
# ARGV: now_ms, id, version, started_at, counts (JSON), keep_ms, fingerprint, alive_ms,
#       strict (1: write nothing on a conflict), shaping (JSON)
# → {now_ms, id of an alive node whose fingerprint differs or '', its fingerprint}
# The check and the write are one step, so two nodes starting at once with different
# secrets cannot both find an empty registry: the second sees the first.
HEARTBEAT = (
    _NOW
    + """
local keep = tonumber(ARGV[6])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - keep)
for _, id in ipairs(stale) do redis.call('HDEL', KEYS[3], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - keep)
local other, theirs = '', ''
local function parts(s)
  local t, n = {}, 0
  for k, v in string.gmatch(s, '([^,=]+)=([^,]+)') do t[k] = v; n = n + 1 end
  return t, n
end
-- "key=fp,key=fp": only the secrets both nodes use are compared (a node without tracking
-- signs no links); a fingerprint without keys is compared whole.
local function clash(a, b)
  local pa, na = parts(a)
  local pb, nb = parts(b)
  if na == 0 or nb == 0 then return a ~= b end
  for k, v in pairs(pa) do
    if pb[k] ~= nil and pb[k] ~= v then return true end
  end
  return false
end
if ARGV[7] ~= '' then
  local alive = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[8]), '+inf')
  for _, id in ipairs(alive) do
    local fp = redis.call('HGET', KEYS[3], id)
    if id ~= ARGV[2] and fp and fp ~= '' and clash(ARGV[7], fp) then
      other, theirs = id, fp
      break
    end
  end
end
if other ~= '' and ARGV[9] == '1' then return {now, other, theirs} end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('HSET', KEYS[2], 'id', ARGV[2], 'version', ARGV[3], 'started_at', ARGV[4],
           'last_seen', now, 'counts', ARGV[5], 'fingerprint', ARGV[7], 'shaping', ARGV[10])
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('HSET', KEYS[3], ARGV[2], ARGV[7])
redis.call('PEXPIRE', KEYS[3], keep)
return {now, other, theirs}
"""
)


# KEYS: synced (zset id→ms); ARGV: now_ms, id, window_ms → {now_ms, id, ms, id, ms, ...}
# A node's mark says "every connection I hold is a lease in Redis" (written only then);
# the answer is every mark of the last window_ms, so one round trip both marks this node
# and tells it which nodes have marked since it came back (see cluster.recovery).
SYNC = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
local out = {now}
local got = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #got do out[#out + 1] = got[i] end
return out
"""
)


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    def leases(self, destination: str) -> str:
        return f"{self.prefix}{{{destination}}}:conn"

    def bucket(self, destination: str) -> str:
        return f"{self.prefix}{{{destination}}}:rate"

    def suspension(self, destination: str) -> str:
        return f"{self.prefix}{{{destination}}}:susp"

    def shaping(self, destination: str) -> list[str]:
        return [self.leases(destination), self.bucket(destination), self.suspension(destination)]

    # The registry's keys share the hash tag {nodes}: one heartbeat script touches them all.
    @property
    def nodes(self) -> str:
        return f"{self.prefix}{{nodes}}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}{{nodes}}:node:{node_id}"

    @property
    def fingerprints(self) -> str:
        return f"{self.prefix}{{nodes}}:fingerprints"

    @property
    def synced(self) -> str:
        return f"{self.prefix}{{nodes}}:synced"
