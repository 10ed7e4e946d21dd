-- record_step: store one step record, fenced by the execution's token.
-- KEYS[1] run hash   KEYS[2] steps hash (only these two are passed: the hot path)
-- ARGV[1] run id   ARGV[2] token   ARGV[3] step name   ARGV[4] step record JSON
-- ARGV[5] '1' when the step has a compensation (marks the run compensable)
-- Returns {1, cancel_requested} or {0} when the token no longer owns the run (write rejected).
if not owns(ARGV[2]) then return {0} end
redis.call('HSET', KEYS[STEPS], ARGV[3], ARGV[4])
if ARGV[5] == '1' then redis.call('HSET', KEYS[RUN], 'compensable', '1') end
return {1, redis.call('HGET', KEYS[RUN], 'cancel_requested') or ''}
