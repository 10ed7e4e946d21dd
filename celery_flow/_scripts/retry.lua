-- retry: a failed or canceled run runs again under the same id. Steps named in ARGV[4..] are
-- forgotten (they and everything after them run again); the others replay from the cache.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] new input JSON ('' keeps the input)   ARGV[3] max_attempts
-- ARGV[4..] step names to forget
-- Returns {'missing'} | {'state', status} (not failed/canceled: nothing written)
--       | {'ok', outcome, publish list}: outcome queued (published) / gated / scheduled.
local id = ARGV[1]
local v = redis.call('HMGET', KEYS[RUN], 'status', 'token', 'queue', 'workflow', 'limit_key')
if not v[1] then return {'missing'} end
if v[1] ~= 'failed' and v[1] ~= 'canceled' then return {'state', v[1]} end
local now = now_ms()
for i = 4, #ARGV do redis.call('HDEL', KEYS[STEPS], ARGV[i]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[RUN], 'input', ARGV[2]) end
redis.call('HDEL', KEYS[RUN], 'error', 'output', 'finished_at', 'started_at', 'deadline',
  'cancel_requested', 'cancel_reason', 'phase', 'on_failure', 'current_step', 'run_at',
  'gated', 'rate_booked', 'wait_step', 'wait_head', 'wait_kind', 'wait_event', 'wait_child',
  'wait_until')
local token = tostring(tonumber(v[2]) + 1)
redis.call('HSET', KEYS[RUN], 'attempt', 1, 'max_attempts', ARGV[3], 'token', token)
redis.call('HINCRBY', KEYS[RUN], 'retries', 1)
for _, k in ipairs({KEYS[RUN], KEYS[STEPS], KEYS[EVENTS], KEYS[CHILDREN], KEYS[MAPS],
                    KEYS[MAPDONE]}) do
  redis.call('PERSIST', k)
end
redis.call('DEL', KEYS[DONE])
local res = admit(id, KEYS[RUN], gate_conf(KEYS[RUN]), now)
if res == 'ok' then
  redis.call('ZADD', KEYS[QUEUED], now, id)
  move_status(id, v[1], 'queued', now)
  return {'ok', 'queued', {{id, token, v[3] or '', v[4], v[5] or ''}}}
end
park(id, KEYS[RUN], v[1], res, now)
return {'ok', res == 'gated' and 'gated' or 'scheduled', {}}
