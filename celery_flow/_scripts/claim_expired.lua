-- claim_expired (reaper): a running run whose lease ran out is re-queued under a new token.
-- KEYS[1..13] run keys
-- ARGV[1] run id
-- Returns {token, queue, workflow} to publish, or nil when the lease is live or the run moved on.
-- The attempt counter is not touched: a crash does not consume an attempt.
local id = ARGV[1]
local score = redis.call('ZSCORE', KEYS[RUNNING], id)
if not score or tonumber(score) > now_ms() then return false end
local v = redis.call('HMGET', KEYS[RUN], 'status', 'token', 'queue', 'workflow')
if v[1] ~= 'running' then
  redis.call('ZREM', KEYS[RUNNING], id)
  return false
end
redis.call('HINCRBY', KEYS[RUN], 'recoveries', 1)
redis.call('HDEL', KEYS[RUN], 'current_step')
local token = requeue(id, 'running', v[2], now_ms())
return {token, v[3], v[4]}
