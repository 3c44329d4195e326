"""The Lua scripts of the bundle store: each runs as one atomic round trip in Redis.

`adapters/store.py` calls them; the key layout they touch is `adapters/store_keys.py`.
"""

from adapters.partner_gate import ACQUIRE_FUNCTION

TRANSITION = """
-- KEYS: bundle hash, old status index, new status index, events stream,
--       event counters (hash), this minute's moves (hash), in-flight index,
--       [on creation only: booking-id index (hash), email index, correlation index,
--        tombstone bucket of archived bundles (adapters/store_retention.py)],
--       [a tenant's bundle only, always last: its tenant's old and new status index]
--       So #KEYS is 7 or 11 (creation), plus 2 for a tenant's bundle: 7, 9, 11 or 13.
-- ARGV: expected version, new version, doc, new status, score, bundle id, stream maxlen,
--       moves ttl, created score, in flight ('1' or ''), undo round (for `start`),
--       booking id ('' but on creation), tombstone field ('' but on creation),
--       creating release ('' but on creation: kept beside the doc, see store_queries.py),
--       the document's schema version (kept beside it too, for START),
--       then for each event applied, in order: name, json ('' = not published),
--       move ('from>to', '' on creation)
-- Returns 'ok' (on creation 'ok:<connected replicas>'), 'archived', or the version found.
-- An id whose bundle went to the archive is not created again (idempotency survives it).
if #KEYS >= 11 and redis.call('HEXISTS', KEYS[11], ARGV[13]) == 1 then return 'archived' end
local current = redis.call('HGET', KEYS[1], 'version')
if current == false then current = '0' end
if current ~= ARGV[1] then return current end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'status', ARGV[4], 'doc', ARGV[3],
           'round', ARGV[11], 'schema', ARGV[15])
if KEYS[2] ~= KEYS[3] then redis.call('ZREM', KEYS[2], ARGV[6]) end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
local moved = false
for i = 16, #ARGV, 3 do
  if ARGV[i + 1] ~= '' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*',
               'event_name', ARGV[i], 'vip_bundle_id', ARGV[6], 'data', ARGV[i + 1])
  end
  -- Counters for /metrics and the dashboard, paid inside this round trip.
  redis.call('HINCRBY', KEYS[5], ARGV[i], 1)
  if ARGV[i + 2] ~= '' then
    redis.call('HINCRBY', KEYS[6], ARGV[i + 2], 1)
    moved = true
  end
end
if moved then redis.call('EXPIRE', KEYS[6], ARGV[8]) end
-- Unsettled bundles by creation time (the oldest one's age is a gauge); parked ones are out.
if ARGV[10] == '1' then
  redis.call('ZADD', KEYS[7], 'NX', ARGV[9], ARGV[6])
else
  redis.call('ZREM', KEYS[7], ARGV[6])
end
-- A tenant's status indexes, moved like the global ones, so that a tenant's lists page over
-- its own bundles (a bundle's tenant never changes).
if #KEYS == 9 or #KEYS == 13 then
  if KEYS[#KEYS - 1] ~= KEYS[#KEYS] then redis.call('ZREM', KEYS[#KEYS - 1], ARGV[6]) end
  redis.call('ZADD', KEYS[#KEYS], ARGV[5], ARGV[6])
end
-- Search indexes: these fields never change after creation, so they are written once, here.
if #KEYS >= 11 then
  if ARGV[14] ~= '' then redis.call('HSET', KEYS[1], 'created_by', ARGV[14]) end
  redis.call('HSET', KEYS[8], ARGV[12], ARGV[6])
  redis.call('ZADD', KEYS[9], ARGV[9], ARGV[6])
  redis.call('ZADD', KEYS[10], ARGV[9], ARGV[6])
  -- The creator's next question, "is there a replica to wait for?" (confirm_replicated),
  -- answered in this round trip: 'ok:<replicas>'. Plain 'ok' where INFO is refused.
  local info = redis.pcall('INFO', 'replication')
  if type(info) == 'string' then
    local replicas = string.match(info, 'connected_slaves:(%d+)')
    if replicas then return 'ok:' .. replicas end
  end
end
return 'ok'
"""

# The step's start asks the partner gate in the same round trip (a forward step's partner call
# follows at once): one script run a step fewer, on the path every bundle takes.
START = (
    ACQUIRE_FUNCTION
    + """
-- KEYS: bundle hash, [the partner's gate hash: ask it too]
-- ARGV: number of steps n, their n start counter fields, '1' if counted per undo round,
--       the newest document schema version the caller reads, the gate's two arguments
--       ('' '' without one), statuses the steps may run in...
-- Only in one of those statuses: count one start of each step, return the counter fields
-- followed by the whole hash (doc and counters), behind the gate's answer (4 fields) when
-- asked. Else nothing is counted and the gate is not asked: {} for "not due", false for "no
-- such bundle", {'newer', version} for a document of a newer schema version (a newer release
-- wrote it: the caller leaves it alone, and no start is spent on it).
local status = redis.call('HGET', KEYS[1], 'status')
if status == false then return false end
local n = tonumber(ARGV[1])
local schema = redis.call('HGET', KEYS[1], 'schema')
if schema and tonumber(schema) > tonumber(ARGV[n + 3]) then return {'newer', schema} end
for i = n + 6, #ARGV do
  if ARGV[i] == status then
    local suffix = ''
    if ARGV[n + 2] == '1' then
      suffix = ':round-' .. (redis.call('HGET', KEYS[1], 'round') or '0')
    end
    local fields = {}
    for j = 2, n + 1 do
      fields[#fields + 1] = ARGV[j] .. suffix
      redis.call('HINCRBY', KEYS[1], ARGV[j] .. suffix, 1)
    end
    local all = redis.call('HGETALL', KEYS[1])
    for j = #fields, 1, -1 do table.insert(all, 1, fields[j]) end
    if #KEYS > 1 then
      local admission = acquire(KEYS[2], ARGV[n + 4], ARGV[n + 5])
      for j = 4, 1, -1 do table.insert(all, 1, admission[j] or '0') end
    end
    return all
  end
end
return {}
"""
)

# Moves the audit cursor forward only: a slow audit run finishing after a later one must not
# send the next run back over what was done (that would only cost time: findings are recorded
# once anyway).
ADVANCE_CURSOR = """
local current = redis.call('GET', KEYS[1])
if current == false or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('GET', KEYS[1])
"""

# Removes an archived bundle from Redis, with every index entry it has, and leaves its
# tombstone (what idempotency needs), only if it is still the version and status that was
# archived: a bundle touched in between (a drift finding, a cancel) stays.
ARCHIVE_REMOVE = """
-- KEYS: bundle hash, its (final) status index, in-flight index, booking-id index (hash),
--       email index, correlation index, tombstone bucket (hash), archived counts (hash),
--       [more status indexes the bundle is in, e.g. its tenant's: ZREM'd too]
-- ARGV: archived version, archived status, bundle id, booking id, request digest,
--       tombstone field (store_keys.tomb_field)
-- Returns 1 removed, 0 changed since (kept), 2 gone already (a second pass).
local version = redis.call('HGET', KEYS[1], 'version')
if version == false then
  if redis.call('HEXISTS', KEYS[7], ARGV[6]) == 1 then return 2 end
  return 0
end
if version ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[4])
redis.call('ZREM', KEYS[5], ARGV[3])
redis.call('ZREM', KEYS[6], ARGV[3])
-- Per-tenant status index (added with tenants): passed as KEYS[9] when the bundle has one.
for i = 9, #KEYS do redis.call('ZREM', KEYS[i], ARGV[3]) end
redis.call('HSET', KEYS[7], ARGV[6], ARGV[5])
redis.call('HINCRBY', KEYS[8], ARGV[2], 1)
return 1
"""

# Brings an archived bundle back into Redis (a cancel of an archived finalized bundle), with
# its indexes, and drops its tombstone; never over a bundle that is there.
RESTORE = """
-- KEYS: bundle hash, its status index, booking-id index, email index, correlation index,
--       tombstone bucket, archived counts (hash), [more status indexes, e.g. its tenant's]
-- ARGV: bundle id, version, status, doc, undo round, status score, created score,
--       booking id, tombstone field, then start counters as field, value pairs
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'status', ARGV[3], 'doc', ARGV[4],
           'round', ARGV[5])
for i = 10, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[8], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
for i = 8, #KEYS do redis.call('ZADD', KEYS[i], ARGV[6], ARGV[1]) end
if redis.call('HDEL', KEYS[6], ARGV[9]) == 1 then redis.call('HINCRBY', KEYS[7], ARGV[3], -1) end
return 1
"""
