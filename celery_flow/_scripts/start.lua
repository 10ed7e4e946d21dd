-- start: a delivered Celery message claims its run (queued -> running) under a new token.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] token carried by the message   ARGV[3] lease ms
-- Returns {'missing'} | {'stale', status} (duplicate or superseded delivery: a no-op)
--       | {'gated'} (its slot reservation lapsed and the gate is full: it waits, FIFO)
--       | {'ok', new_token, run hash as flat list, steps hash as flat list}
-- The whole run and step cache come back in this one round trip, so replay needs no more reads.
local id = ARGV[1]
local v = redis.call('HMGET', KEYS[RUN], 'status', 'token', 'started_at', 'timeout_ms',
  'cancel_requested')
if not v[1] then return {'missing'} end
if v[1] ~= 'queued' or v[2] ~= ARGV[2] then return {'stale', v[1]} end
local now = now_ms()
local lease = tonumber(ARGV[3])
local c = gate_conf(KEYS[RUN])
if c.max > 0 and v[5] ~= '1' then  -- a cancel's compensation run does not wait for a slot
  redis.call('ZREMRANGEBYSCORE', KEYS[GATE], '-inf', now)
  if not redis.call('ZSCORE', KEYS[GATE], id) and redis.call('ZCARD', KEYS[GATE]) >= c.max then
    redis.call('ZADD', KEYS[WAITING], 'NX', c.created, id)
    redis.call('SADD', KEYS[GATES], c.key)
    redis.call('HSET', KEYS[RUN], 'gated', '1')
    redis.call('ZREM', KEYS[QUEUED], id)
    return {'gated'}
  end
  redis.call('ZADD', KEYS[GATE], now + lease, id)
end
local token = tostring(tonumber(v[2]) + 1)
redis.call('HSET', KEYS[RUN], 'token', token, 'attempt_started_at', now)
redis.call('HDEL', KEYS[RUN], 'rate_booked', 'gated')
if not v[3] then
  redis.call('HSET', KEYS[RUN], 'started_at', now)
  local timeout = tonumber(v[4] or '0') or 0
  if timeout > 0 then redis.call('HSET', KEYS[RUN], 'deadline', now + timeout) end
end
redis.call('ZREM', KEYS[QUEUED], id)
redis.call('ZADD', KEYS[RUNNING], now + lease, id)
move_status(id, 'queued', 'running', now)
return {'ok', token, redis.call('HGETALL', KEYS[RUN]), redis.call('HGETALL', KEYS[STEPS])}
