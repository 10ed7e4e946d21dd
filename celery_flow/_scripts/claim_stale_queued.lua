-- claim_stale_queued (republisher): a queued run whose last publish is older than ARGV[2] ms
-- is published again under the SAME token, so whichever copy arrives first starts it and the
-- other is a no-op (a new token would push the run behind a long backlog forever). Runs
-- waiting for a gate slot are not in the `queued` index, so they are never republished.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] age ms
-- Returns {{id, token, queue, workflow, limit_key}} or {}.
local id = ARGV[1]
local score = redis.call('ZSCORE', KEYS[QUEUED], id)
local now = now_ms()
if not score or tonumber(score) > now - tonumber(ARGV[2]) then return {} end
local v = redis.call('HMGET', KEYS[RUN], 'status', 'token', 'queue', 'workflow', 'limit_key')
if v[1] ~= 'queued' then
  redis.call('ZREM', KEYS[QUEUED], id)
  return {}
end
redis.call('ZADD', KEYS[QUEUED], now, id)
redis.call('HINCRBY', KEYS[RUN], 'republished', 1)
return {{id, v[2], v[3] or '', v[4], v[5] or ''}}
