-- claim_expired (reaper): a running run whose lease ran out gives back its gate slot and is
-- re-queued under a new token (admitted through its gate like a new run).
-- KEYS[1..21] run keys
-- ARGV[1] run id
-- Returns a list of runs to publish {{id, token, queue, workflow, limit_key}, ...}: waiters
-- handed the slot, then this run when it was admitted. Empty when the lease is still live.
-- The attempt counter is not touched: a crash does not consume an attempt.
local id = ARGV[1]
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[RUNNING], id)
if not score or tonumber(score) > now then return {} end
local v = redis.call('HMGET', KEYS[RUN], 'status', 'token', 'queue', 'workflow', 'limit_key')
if v[1] ~= 'running' then
  redis.call('ZREM', KEYS[RUNNING], id)
  return {}
end
redis.call('HINCRBY', KEYS[RUN], 'recoveries', 1)
redis.call('HDEL', KEYS[RUN], 'current_step')
redis.call('ZREM', KEYS[RUNNING], id)
local out = release(id, now)
local token = tostring(tonumber(v[2]) + 1)
redis.call('HSET', KEYS[RUN], 'token', token)
local res = admit(id, KEYS[RUN], gate_conf(KEYS[RUN]), now)
if res == 'ok' then
  redis.call('ZADD', KEYS[QUEUED], now, id)
  move_status(id, 'running', 'queued', now)
  table.insert(out, {id, token, v[3] or '', v[4], v[5] or ''})
else
  park(id, KEYS[RUN], 'running', res, now)
end
return out
