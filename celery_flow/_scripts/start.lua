-- start: a delivered Celery message claims its run (queued -> running) under a new token.
-- KEYS[1..13] run keys
-- ARGV[1] run id   ARGV[2] token carried by the message   ARGV[3] lease ms
-- Returns {'missing'} | {'stale', status} (duplicate or superseded delivery: a no-op)
--       | {'ok', new_token, run hash as flat list, steps hash as flat list}
-- The whole run and step cache come back in this one round trip, so replay needs no more reads.
local id = ARGV[1]
local v = redis.call('HMGET', KEYS[RUN], 'status', 'token', 'started_at', 'timeout_ms')
if not v[1] then return {'missing'} end
if v[1] ~= 'queued' or v[2] ~= ARGV[2] then return {'stale', v[1]} end
local now = now_ms()
local token = tostring(tonumber(v[2]) + 1)
redis.call('HSET', KEYS[RUN], 'token', token, 'attempt_started_at', now)
if not v[3] then
  redis.call('HSET', KEYS[RUN], 'started_at', now)
  local timeout = tonumber(v[4] or '0') or 0
  if timeout > 0 then redis.call('HSET', KEYS[RUN], 'deadline', now + timeout) end
end
redis.call('ZREM', KEYS[QUEUED], id)
redis.call('ZADD', KEYS[RUNNING], now + tonumber(ARGV[3]), id)
move_status(id, 'queued', 'running', now)
return {'ok', token, redis.call('HGETALL', KEYS[RUN]), redis.call('HGETALL', KEYS[STEPS])}
