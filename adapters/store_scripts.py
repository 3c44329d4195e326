"""The Lua scripts of the bundle store: each runs as one atomic round trip in Redis.

`adapters/store.py` calls them; the key layout they touch is `adapters/store_keys.py`.
"""

TRANSITION = """
-- KEYS: bundle hash, old status index, new status index, events stream,
--       event counters (hash), this minute's moves (hash), in-flight index,
--       [on creation only: booking-id index (hash), email index, correlation index],
--       [a tenant's bundle only, always last: its tenant's old and new status index]
--       So #KEYS is 7 or 10 (creation) plus 2 for a tenant's bundle: 7, 9, 10 or 12.
-- ARGV: expected version, new version, doc, new status, score, bundle id, stream maxlen,
--       moves ttl, created score, in flight ('1' or ''), undo round (for `start`),
--       booking id ('' but on creation),
--       then for each event applied, in order: name, json ('' = not published),
--       move ('from>to', '' on creation)
local current = redis.call('HGET', KEYS[1], 'version')
if current == false then current = '0' end
if current ~= ARGV[1] then return current end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'status', ARGV[4], 'doc', ARGV[3],
           'round', ARGV[11])
if KEYS[2] ~= KEYS[3] then redis.call('ZREM', KEYS[2], ARGV[6]) end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
local moved = false
for i = 13, #ARGV, 3 do
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
if #KEYS == 9 or #KEYS == 12 then
  if KEYS[#KEYS - 1] ~= KEYS[#KEYS] then redis.call('ZREM', KEYS[#KEYS - 1], ARGV[6]) end
  redis.call('ZADD', KEYS[#KEYS], ARGV[5], ARGV[6])
end
-- Search indexes: these fields never change after creation, so they are written once, here.
if #KEYS >= 10 then
  redis.call('HSET', KEYS[8], ARGV[12], ARGV[6])
  redis.call('ZADD', KEYS[9], ARGV[9], ARGV[6])
  redis.call('ZADD', KEYS[10], ARGV[9], ARGV[6])
end
return 'ok'
"""

START = """
-- KEYS: bundle hash
-- ARGV: number of steps n, their n start counter fields, '1' if counted per undo round,
--       statuses the steps may run in...
-- Only in one of those statuses: count one start of each step, return the counter fields
-- followed by the whole hash (doc and counters). Else nothing is counted: {} for "not due",
-- false for "no such bundle".
local status = redis.call('HGET', KEYS[1], 'status')
if status == false then return false end
local n = tonumber(ARGV[1])
for i = n + 3, #ARGV do
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
    return all
  end
end
return {}
"""

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
