-- finalize: running -> succeeded | failed | canceled, fenced by token; frees the gate slot.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] token   ARGV[3] terminal status   ARGV[4] output JSON or ''
-- ARGV[5] error JSON or ''   ARGV[6] TTL ms of the run, its steps and done marker
-- Returns {1, woken, parent} (woken: waiters handed the slot, to publish; parent: a parent
-- run waiting on this one, now due, or ''), or {0} when the token is stale (nothing written).
local id = ARGV[1]
if not owns(ARGV[2]) then return {0} end
local now = now_ms()
if ARGV[4] ~= '' then redis.call('HSET', KEYS[RUN], 'output', ARGV[4]) end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[RUN], 'error', ARGV[5])
else
  redis.call('HDEL', KEYS[RUN], 'error')
end
terminate(id, 'running', ARGV[3], now, tonumber(ARGV[6]))
local parent = wake_parent(id, ARGV[3], ARGV[4], ARGV[5], now)
return {1, release(id, now), parent}
