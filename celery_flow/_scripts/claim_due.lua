-- claim_due (timer promoter): a scheduled or waiting run whose timer is due is admitted
-- through its gate: queued and published, or parked (gated / booked by the rate limit).
-- A waiting run whose own wait time passed gets that step's outcome written first: a sleep
-- succeeded, an event wait failed with EventTimeout, a child wait failed with StepTimeout.
-- (A run woken by its workflow deadline keeps the step waiting: replay raises RunTimeout.)
-- KEYS[1..21] run keys
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
if v[1] == 'waiting' then
  local w = redis.call('HMGET', KEYS[RUN], 'wait_step', 'wait_head', 'wait_kind', 'wait_until',
    'wait_event', 'wait_child')
  local until_ms = tonumber(w[4] or '0') or 0
  -- (a map's timer is a watchdog: the step stays waiting and the replay re-dispatches chunks)
  if w[1] and until_ms > 0 and until_ms <= now and w[3] ~= 'map' then
    local rec
    if w[3] == 'sleep' then
      rec = wait_record(w[2], 'succeeded', now, 'null', nil)
    elseif w[3] == 'event' then
      rec = wait_record(w[2], 'failed', now, nil, error_json('EventTimeout',
        'no ' .. (w[5] or '?') .. ' event arrived for step ' .. w[1] .. ' before its timeout'))
    else
      rec = wait_record(w[2], 'failed', now, nil, error_json('StepTimeout',
        'child run ' .. (w[6] or '?') .. ' did not finish within the timeout of step ' .. w[1]
        .. '; it keeps running'))
    end
    redis.call('HSET', KEYS[STEPS], w[1], rec)
    redis.call('HDEL', KEYS[RUN], 'wait_step', 'wait_head', 'wait_kind', 'wait_event',
      'wait_child', 'wait_until')
  end
end
local res = admit(id, KEYS[RUN], gate_conf(KEYS[RUN]), now)
if res ~= 'ok' then
  park(id, KEYS[RUN], v[1], res, now)
  return {}
end
local token = requeue(id, v[1], v[2], now)
return {{id, token, v[3] or '', v[4], v[5] or ''}}
