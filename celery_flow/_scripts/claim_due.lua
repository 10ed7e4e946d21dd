-- claim_due (timer promoter): a scheduled or waiting run whose timer is due becomes queued.
-- KEYS[1..13] run keys
-- ARGV[1] run id
-- Returns {token, queue, workflow} to publish, or nil (not due, or no longer waiting on a timer).
local id = ARGV[1]
local score = redis.call('ZSCORE', KEYS[TIMERS], id)
local now = now_ms()
if not score or tonumber(score) > now then return false end
redis.call('ZREM', KEYS[TIMERS], id)
local v = redis.call('HMGET', KEYS[RUN], 'status', 'token', 'queue', 'workflow')
if v[1] ~= 'scheduled' and v[1] ~= 'waiting' then return false end
local token = requeue(id, v[1], v[2], now)
return {token, v[3], v[4]}
