-- claim_due (timer promoter): a scheduled or waiting run whose timer is due is admitted
-- through its gate: queued and published, or parked (gated / booked by the rate limit).
-- KEYS[1..17] run keys
-- ARGV[1] run id
-- Returns {{id, token, queue, workflow, limit_key}} to publish, or {} (not due, no longer
-- waiting on a timer, or parked).
local id = ARGV[1]
local score = redis.call('ZSCORE', KEYS[TIMERS], id)
local now = now_ms()
if not score or tonumber(score) > now then return {} end
redis.call('ZREM', KEYS[TIMERS], id)
local v = redis.call('HMGET', KEYS[RUN], 'status', 'token', 'queue', 'workflow', 'limit_key')
if v[1] ~= 'scheduled' and v[1] ~= 'waiting' then return {} end
local res = admit(id, KEYS[RUN], gate_conf(KEYS[RUN]), now)
if res ~= 'ok' then
  park(id, KEYS[RUN], v[1], res, now)
  return {}
end
local token = requeue(id, v[1], v[2], now)
return {{id, token, v[3] or '', v[4], v[5] or ''}}
