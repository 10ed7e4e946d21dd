-- schedule_retry: running -> scheduled for the next attempt after a backoff, fenced by token.
-- The gate slot is given back while the run waits.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] token   ARGV[3] delay ms   ARGV[4] error JSON of the failed attempt
-- Returns {due ms, woken}, or {0} when the token is stale (nothing written).
local id = ARGV[1]
if not owns(ARGV[2]) then return {0} end
local now = now_ms()
local due = now + tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[RUN], 'attempt', 1)
redis.call('HSET', KEYS[RUN], 'error', ARGV[4], 'run_at', due)
redis.call('HDEL', KEYS[RUN], 'current_step')
redis.call('ZREM', KEYS[RUNNING], id)
redis.call('ZADD', KEYS[TIMERS], due, id)
move_status(id, 'running', 'scheduled', now)
return {due, release(id, now)}
