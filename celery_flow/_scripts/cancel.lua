-- cancel: request cancellation; immediate for queued / scheduled / waiting runs.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] reason   ARGV[3] error JSON recorded on an immediate cancel
-- ARGV[4] TTL ms once terminal
-- Returns {'missing'} | {'terminal', status} | {'requested'} (running: stops at the next step)
--       | {'canceled', woken, parent} (its slot reservation, if any, went to waiters; a parent
--         waiting on it is now due, or '')
--       | {'compensate', token, queue, workflow}: the run has steps with compensations, so it
--         is re-queued under a new token for an execution that runs them (no slot needed).
local id = ARGV[1]
local v = redis.call('HMGET', KEYS[RUN], 'status', 'compensable', 'token', 'queue', 'workflow')
if not v[1] then return {'missing'} end
if TERMINAL[v[1]] then return {'terminal', v[1]} end
redis.call('HSET', KEYS[RUN], 'cancel_requested', '1', 'cancel_reason', ARGV[2])
if v[1] == 'running' then return {'requested'} end
local now = now_ms()
redis.call('ZREM', KEYS[WAITING], id)
redis.call('HDEL', KEYS[RUN], 'gated', 'wait_step', 'wait_head', 'wait_kind', 'wait_event',
  'wait_child', 'wait_until')
if v[2] == '1' then
  local token = requeue(id, v[1], v[3], now)
  return {'compensate', token, v[4], v[5]}
end
redis.call('HSET', KEYS[RUN], 'error', ARGV[3])
terminate(id, v[1], 'canceled', now, tonumber(ARGV[4]))
local parent = wake_parent(id, 'canceled', '', ARGV[3], now)
return {'canceled', release(id, now), parent}
