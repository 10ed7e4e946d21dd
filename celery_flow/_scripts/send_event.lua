-- send_event: deliver an event to the run waiting for it, or buffer it for a later wait.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] event type   ARGV[3] payload JSON
-- Returns {'missing'} | {'terminal', status} | {'delivered'} (the waiting step got the payload
-- and the run is due: the caller claims it at once) | {'buffered', count of that type}.
-- Each event is consumed once: by this delivery, or by the first matching wait (FIFO).
local id = ARGV[1]
local v = redis.call('HMGET', KEYS[RUN], 'status', 'wait_event')
if not v[1] then return {'missing'} end
if TERMINAL[v[1]] then return {'terminal', v[1]} end
local now = now_ms()
if v[1] == 'waiting' and v[2] == ARGV[2] then
  if end_wait(id, KEYS[RUN], KEYS[STEPS], 'succeeded', now, ARGV[3], nil) then
    return {'delivered'}
  end
end
local raw = redis.call('HGET', KEYS[EVENTS], ARGV[2])
local list = raw and cjson.decode(raw) or {}
table.insert(list, ARGV[3])
redis.call('HSET', KEYS[EVENTS], ARGV[2], cjson.encode(list))
return {'buffered', #list}
