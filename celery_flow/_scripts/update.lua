-- update: set fields of a running run (progress, phase, error), fenced by token.
-- KEYS[1] run hash   KEYS[2] steps hash (only these two are passed: the hot path)
-- ARGV[1] run id   ARGV[2] token   ARGV[3..] field, value pairs
-- Returns {1, cancel_requested} or {0} when the token no longer owns the run.
if not owns(ARGV[2]) then return {0} end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[RUN], ARGV[i], ARGV[i + 1]) end
return {1, redis.call('HGET', KEYS[RUN], 'cancel_requested') or ''}
