-- sync_registry: write this app's workflow metadata; remove this app's stale workflows.
-- KEYS[1] workflows set
-- KEYS[2 .. 1+n] workflow:<name> hashes of the n current workflows
-- KEYS[2+n ..] workflow:<name> hashes of candidates for stale cleanup (known but not current)
-- ARGV[1] app id   ARGV[2] grace ms   ARGV[3] n
-- ARGV[4 .. 3+n] current workflows as JSON objects (flat string fields, 'name' included)
-- ARGV[4+n ..] names of the stale candidates, in KEYS order
-- A stale candidate is deleted only when owned by this app id and not updated within the grace
-- period. Runs are never touched. Returns the number of workflows removed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[3])
for i = 1, n do
  local meta = cjson.decode(ARGV[3 + i])
  redis.call('DEL', KEYS[1 + i])
  for field, value in pairs(meta) do redis.call('HSET', KEYS[1 + i], field, tostring(value)) end
  redis.call('HSET', KEYS[1 + i], 'app_id', ARGV[1], 'updated_at', now)
  redis.call('SADD', KEYS[1], meta['name'])
end
local removed = 0
for i = 2 + n, #KEYS do
  local name = ARGV[4 + n + (i - 2 - n)]
  local v = redis.call('HMGET', KEYS[i], 'app_id', 'updated_at')
  if v[1] == ARGV[1] and tonumber(v[2] or '0') < now - tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[i])
    redis.call('SREM', KEYS[1], name)
    removed = removed + 1
  elseif not v[1] then
    redis.call('SREM', KEYS[1], name)
  end
end
return removed
