-- suspend: a waiting step (sleep / wait_for_event / run_workflow) parks the run, fenced by token:
-- running -> waiting, the gate slot is released, one timer is armed at the earlier of the
-- step's own time (wake-up or timeout) and the run's deadline. When the wait is already over
-- (an event was buffered, the child already ended, the sleep is due) the step is recorded as
-- done instead and the run keeps running.
-- KEYS[1..21] run keys   KEYS[22] the child run's hash (child waits; any key otherwise)
-- ARGV[1] run id   ARGV[2] token   ARGV[3] step name   ARGV[4] step record head: JSON of its
-- fixed fields without the closing brace   ARGV[5] kind: sleep | event | child
-- ARGV[6] absolute until ms (0 = none)   ARGV[7] relative until ms from now (-1 = none)
-- ARGV[8] event type ('' unless event)   ARGV[9] child run id ('' unless child)
-- ARGV[10..] with kind 'children' (map_workflow): the child run ids to wait for
-- Returns {'lost'} | {'done', step record JSON} | {'waiting', woken}.
local id, name, head, kind = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
if not owns(ARGV[2]) then return {'lost'} end
local now = now_ms()

local function done(rec)
  redis.call('HSET', KEYS[STEPS], name, rec)
  return {'done', rec}
end

if kind == 'event' then
  local raw = redis.call('HGET', KEYS[EVENTS], ARGV[8])
  if raw then
    local list = cjson.decode(raw)
    local payload = table.remove(list, 1)
    if #list == 0 then
      redis.call('HDEL', KEYS[EVENTS], ARGV[8])
    else
      redis.call('HSET', KEYS[EVENTS], ARGV[8], cjson.encode(list))
    end
    return done(wait_record(head, 'succeeded', now, payload, nil))
  end
elseif kind == 'child' then
  local c = redis.call('HMGET', KEYS[EXTRA], 'status', 'output', 'error', 'workflow')
  if c[1] == 'succeeded' then
    return done(wait_record(head, 'succeeded', now, c[2] or 'null', nil))
  elseif TERMINAL[c[1]] or not c[1] then
    local detail = c[1] or 'missing (expired?)'
    local child_err = c[3] or 'null'
    if c[3] then
      local e = cjson.decode(c[3])
      detail = c[1] .. ': ' .. tostring(e['type']) .. ': ' .. tostring(e['message'])
    end
    local msg = 'child run ' .. ARGV[9] .. ' (' .. (c[4] or '?') .. ') ' .. detail
    return done(wait_record(head, 'failed', now, nil,
      '{"type":"celery_flow.errors.ChildRunFailed","message":' .. cjson.encode(msg)
      .. ',"child_error":' .. child_err .. '}'))
  end
end

local left = 0
if kind == 'children' then
  local pfx = prefix_of(id)
  for i = 10, #ARGV do
    local st = redis.call('HGET', pfx .. ':run:{' .. ARGV[i] .. '}', 'status')
    if st and not TERMINAL[st] then left = left + 1 end
  end
  if left == 0 then return done(wait_record(head, 'succeeded', now, 'null', nil)) end
end

local until_ms = tonumber(ARGV[6]) or 0
if until_ms <= 0 and tonumber(ARGV[7]) >= 0 then until_ms = now + tonumber(ARGV[7]) end
if kind == 'sleep' and until_ms <= now then
  return done(wait_record(head, 'succeeded', now, 'null', nil))
end

local waiting = head
if until_ms > 0 then waiting = waiting .. ',"until":' .. until_ms end
redis.call('HSET', KEYS[STEPS], name, waiting .. ',"status":"waiting"}')
redis.call('HSET', KEYS[RUN], 'wait_step', name, 'wait_head', head, 'wait_kind', kind,
  'wait_until', until_ms, 'wait_event', ARGV[8], 'wait_child', ARGV[9], 'wait_left', left)
local timer = until_ms
local deadline = tonumber(redis.call('HGET', KEYS[RUN], 'deadline') or '0') or 0
if deadline > 0 and (timer <= 0 or deadline < timer) then timer = deadline end
if timer > 0 then redis.call('ZADD', KEYS[TIMERS], timer, id) end
redis.call('ZREM', KEYS[RUNNING], id)
redis.call('HDEL', KEYS[RUN], 'current_step')
move_status(id, 'running', 'waiting', now)
return {'waiting', release(id, now)}
