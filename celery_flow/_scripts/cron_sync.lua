-- cron_sync: write this app's cron definitions; remove this app's stale entries.
-- KEYS[1] cron:defs hash   entry id -> definition JSON
-- KEYS[2] cron:next zset   entry id -> next fire ms
-- ARGV[1] app id   ARGV[2] grace ms
-- ARGV[3 ..] pairs: entry id, definition JSON (an object with at least one field, starting
-- with '{', 'app_id' included); it is stored with "updated_at" (Redis ms) spliced in front,
-- so the definition (and its input) is stored byte for byte as the caller encoded it.
-- An entry that is not in ARGV is deleted (with its next fire) only when its app_id is this
-- app's and it was not written within the grace period: during a rolling deploy old nodes
-- keep their crons alive, and two apps sharing a Redis never delete each other's entries.
-- Returns the number of entries removed.
local t = redis.call('TIME')  -- self-contained: does not rely on the shared prelude
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = {}
for i = 3, #ARGV, 2 do
  current[ARGV[i]] = true
  local def = ARGV[i + 1]
  redis.call('HSET', KEYS[1], ARGV[i],
    '{"updated_at":' .. string.format('%d', now) .. ',' .. string.sub(def, 2))
end
local removed = 0
local all = redis.call('HGETALL', KEYS[1])
local cutoff = now - tonumber(ARGV[2])
for i = 1, #all, 2 do
  local id = all[i]
  if not current[id] then
    local ok, def = pcall(cjson.decode, all[i + 1])
    if ok and type(def) == 'table' and def['app_id'] == ARGV[1]
        and (tonumber(def['updated_at']) or 0) < cutoff then
      redis.call('HDEL', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
      removed = removed + 1
    end
  end
end
return removed
