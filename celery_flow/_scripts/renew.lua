-- renew: extend a running run's lease (heartbeat) and its gate slot; note its current step.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] token   ARGV[3] lease ms   ARGV[4] current step name or ''
-- Returns {1, cancel_requested} or {0}: the execution lost ownership and must stop writing.
if not owns(ARGV[2]) then return {0} end
local deadline = now_ms() + tonumber(ARGV[3])
redis.call('ZADD', KEYS[RUNNING], deadline, ARGV[1])
redis.call('ZADD', KEYS[GATE], 'XX', deadline, ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[RUN], 'current_step', ARGV[4]) end
return {1, redis.call('HGET', KEYS[RUN], 'cancel_requested') or ''}
