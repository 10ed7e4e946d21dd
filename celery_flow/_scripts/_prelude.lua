-- Shared prelude, prepended to every per-run script by celery_flow._store.
redis.replicate_commands()  -- effects replication: TIME before writes is safe on Redis 5-7
--
-- Every per-run script receives the same 21 leading KEYS (built by
-- celery_flow._keys.Keys.run_keys) and the run id as ARGV[1]:
--   KEYS[1]  run:{id}            hash   the run record
--   KEYS[2]  run:{id}:steps      hash   step name -> JSON step record
--   KEYS[3]  running             zset   run id -> lease deadline (ms)
--   KEYS[4]  timers              zset   run id -> due time (ms)
--   KEYS[5]  queued              zset   run id -> last publish time (ms)
--   KEYS[6]  run:{id}:done       list   one element once the run is terminal
--   KEYS[7..13] runs:status:<s>  zset   run id -> time it entered status s
--   KEYS[14] gate:<limit key>    zset   slot holder run id -> slot lease deadline (ms)
--   KEYS[15] gate:<key>:waiting  zset   run id -> created ms: runs waiting for a slot (FIFO)
--   KEYS[16] gates               set    limit keys that have waiting runs (for the sweeper)
--   KEYS[17] rate:<limit key>    string GCRA theoretical arrival time (ms)
--   KEYS[18] run:{id}:events     hash   event type -> JSON array of buffered payloads (strings)
--   KEYS[19] run:{id}:children   set    ids of child runs (cancel cascades to them)
--   KEYS[20] run:{id}:maps       hash   <step>\31<i|r|e>\31<index> -> item / result / error JSON,
--                                       <step>\31n, \31chunks, \31done, \31errors -> counters
--   KEYS[21] run:{id}:mapdone    set    <step>\31<chunk index>: chunks that finished (fan-in)
-- The gate settings of a run (gate_max, rate_n, rate_ms, lease_ms, limit_key) are stored in
-- its hash at enqueue, so every script applies the limits the run was started with.
-- Time always comes from the Redis server clock (TIME), never a client's.
local RUN, STEPS, RUNNING, TIMERS, QUEUED, DONE = 1, 2, 3, 4, 5, 6
local STATUS_KEY = {scheduled = 7, queued = 8, running = 9, waiting = 10,
                    succeeded = 11, failed = 12, canceled = 13}
local TERMINAL = {succeeded = true, failed = true, canceled = true}
local GATE, WAITING, GATES, RATE = 14, 15, 16, 17
local EVENTS, CHILDREN, MAPS, MAPDONE = 18, 19, 20, 21
local EXTRA = 22  -- the first script-specific key after the fixed layout

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Move a run from one status index to another and set its status field.
local function move_status_of(id, run_key, old, new, now)
  if old and STATUS_KEY[old] then redis.call('ZREM', KEYS[STATUS_KEY[old]], id) end
  redis.call('ZADD', KEYS[STATUS_KEY[new]], now, id)
  redis.call('HSET', run_key, 'status', new)
end

local function move_status(id, old, new, now)
  move_status_of(id, KEYS[RUN], old, new, now)
end

-- Fencing: true only while the run is running under exactly this token.
local function owns(token)
  local v = redis.call('HMGET', KEYS[RUN], 'status', 'token')
  return v[1] == 'running' and v[2] == token
end

-- Bookkeeping shared by every transition into a terminal status.
local function terminate(id, old, new, now, retention_ms)
  move_status(id, old, new, now)
  redis.call('HSET', KEYS[RUN], 'finished_at', now)
  redis.call('HDEL', KEYS[RUN], 'current_step')
  redis.call('ZREM', KEYS[RUNNING], id)
  redis.call('ZREM', KEYS[TIMERS], id)
  redis.call('ZREM', KEYS[QUEUED], id)
  redis.call('RPUSH', KEYS[DONE], '1')
  for _, k in ipairs({KEYS[RUN], KEYS[STEPS], KEYS[DONE], KEYS[EVENTS], KEYS[CHILDREN],
                      KEYS[MAPS], KEYS[MAPDONE]}) do
    redis.call('PEXPIRE', k, retention_ms)
  end
end

-- Bump the fencing token and mark the run queued for a fresh publish.
local function requeue(id, old, token, now)
  local new_token = tostring(tonumber(token) + 1)
  redis.call('HSET', KEYS[RUN], 'token', new_token)
  redis.call('ZREM', KEYS[RUNNING], id)
  redis.call('ZREM', KEYS[TIMERS], id)
  redis.call('ZADD', KEYS[QUEUED], now, id)
  move_status(id, old, 'queued', now)
  return new_token
end

-- ---- gate: max_concurrency (a semaphore of leased slots) and rate_limit (GCRA) ----------

-- The key prefix, recovered from KEYS[RUN] = <prefix>:run:{<id>}.
local function prefix_of(id)
  return string.sub(KEYS[RUN], 1, #KEYS[RUN] - #id - 7)
end

local function gate_conf(run_key)
  local g = redis.call('HMGET', run_key, 'gate_max', 'rate_n', 'rate_ms', 'lease_ms',
    'created_at', 'limit_key', 'rate_booked')
  return {max = tonumber(g[1] or '0') or 0, rate_n = tonumber(g[2] or '0') or 0,
          rate_ms = tonumber(g[3] or '0') or 0, lease = tonumber(g[4] or '10000') or 10000,
          created = tonumber(g[5] or '0') or 0, key = g[6] or '', booked = g[7] == '1'}
end

-- GCRA with a burst of one: starts are spaced rate_ms / rate_n apart, so no window of rate_ms
-- ever holds more than rate_n starts. Returns 0 when the run may start now, else the future
-- time booked for it (the booking is taken at once, so n delayed runs get n distinct times).
local function rate_take(c, now)
  if c.rate_n <= 0 or c.booked then return 0 end
  local interval = c.rate_ms / c.rate_n
  local tat = tonumber(redis.call('GET', KEYS[RATE]) or '0') or 0
  local at = math.max(tat, now)
  redis.call('SET', KEYS[RATE], tostring(at + interval), 'PX', math.ceil(at + interval - now) + 1000)
  if at > now then return math.ceil(at) end
  return 0
end

-- Admission of a run about to be queued: 'ok' (a slot is reserved, or there is no gate),
-- 'gated' (it waits in the gate's FIFO and is not published), or a number: the time the rate
-- limit booked for it. The concurrency check comes first, so a gated run consumes no rate.
local function admit(id, run_key, c, now)
  if c.max > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[GATE], '-inf', now)
    if not redis.call('ZSCORE', KEYS[GATE], id) and redis.call('ZCARD', KEYS[GATE]) >= c.max then
      redis.call('ZADD', KEYS[WAITING], 'NX', c.created, id)
      redis.call('SADD', KEYS[GATES], c.key)
      redis.call('HSET', run_key, 'gated', '1')
      return 'gated'
    end
  end
  local at = rate_take(c, now)
  if at > 0 then
    redis.call('HSET', run_key, 'rate_booked', '1')
    return at
  end
  -- the reservation outlives a normal lease: the message may wait in a broker backlog
  if c.max > 0 then redis.call('ZADD', KEYS[GATE], now + 3 * c.lease, id) end
  redis.call('HDEL', run_key, 'gated')
  return 'ok'
end

-- Put a run (not published now) where admission said: gated -> queued, out of the republish
-- index; booked -> scheduled, a timer at the booked time.
local function park(id, run_key, old, res, now)
  redis.call('ZREM', KEYS[QUEUED], id)
  if res == 'gated' then
    if old ~= 'queued' then move_status_of(id, run_key, old, 'queued', now) end
  else
    redis.call('HSET', run_key, 'run_at', res)
    redis.call('ZADD', KEYS[TIMERS], res, id)
    if old ~= 'scheduled' then move_status_of(id, run_key, old, 'scheduled', now) end
  end
end

-- Hand free slots to the oldest waiters. Each woken run gets a reserved slot and a new token;
-- returns {{id, token, queue, workflow, limit_key}, ...} for the caller to publish.
local function handoff(id, limit_key, now)
  local woken = {}
  if redis.call('EXISTS', KEYS[WAITING]) == 0 then return woken end
  local pfx = prefix_of(id)
  redis.call('ZREMRANGEBYSCORE', KEYS[GATE], '-inf', now)
  for _ = 1, 1000 do
    local first = redis.call('ZRANGE', KEYS[WAITING], 0, 0)
    if #first == 0 then break end
    local wid = first[1]
    local wkey = pfx .. ':run:{' .. wid .. '}'
    local v = redis.call('HMGET', wkey, 'status', 'token', 'queue', 'workflow', 'gated')
    local c = gate_conf(wkey)
    if v[1] ~= 'queued' or v[5] ~= '1' or c.max <= 0 then
      redis.call('ZREM', KEYS[WAITING], wid)  -- canceled or expired meanwhile: skip it
    else
      if redis.call('ZCARD', KEYS[GATE]) >= c.max then break end
      redis.call('ZREM', KEYS[WAITING], wid)
      redis.call('HDEL', wkey, 'gated')
      local at = rate_take(c, now)
      if at > 0 then
        redis.call('HSET', wkey, 'rate_booked', '1')
        park(wid, wkey, 'queued', at, now)
      else
        local token = tostring(tonumber(v[2]) + 1)
        redis.call('HSET', wkey, 'token', token)
        redis.call('ZADD', KEYS[GATE], now + 3 * c.lease, wid)
        redis.call('ZADD', KEYS[QUEUED], now, wid)
        table.insert(woken, {wid, token, v[3] or '', v[4], limit_key})
      end
    end
  end
  if redis.call('EXISTS', KEYS[WAITING]) == 0 then redis.call('SREM', KEYS[GATES], limit_key) end
  return woken
end

-- Give back the run's slot (if it holds one) and wake waiters.
local function release(id, now)
  redis.call('ZREM', KEYS[GATE], id)
  local key = redis.call('HGET', KEYS[RUN], 'limit_key') or ''
  return handoff(id, key, now)
end

-- ---- waits: sleep, events, child runs -------------------------------------------------------
-- A waiting run has: wait_step (the step's name), wait_head (its step record as JSON minus
-- the closing brace, without status/finished_at/output/error), wait_kind, and for events
-- wait_event, for children wait_child. Payloads and outputs stay opaque JSON strings here
-- (never decoded: cjson would turn [] into {}).

-- The step record of a finished wait: head + status + finish time + output or error.
local function wait_record(head, status, now, output, err)
  local rec = head .. ',"status":"' .. status .. '","finished_at":' .. now
  if output then rec = rec .. ',"output":' .. output end
  if err then rec = rec .. ',"error":' .. err end
  return rec .. '}'
end

-- End the wait of a run (its hash and steps keys given) with an outcome, and make it due now
-- so the promoter (or the caller, via claim_due) re-admits it. Returns true when it was waiting.
local function end_wait(id, run_key, steps_key, status, now, output, err)
  local v = redis.call('HMGET', run_key, 'status', 'wait_step', 'wait_head')
  if v[1] ~= 'waiting' or not v[2] then return false end
  redis.call('HSET', steps_key, v[2], wait_record(v[3], status, now, output, err))
  redis.call('HDEL', run_key, 'wait_step', 'wait_head', 'wait_kind', 'wait_event', 'wait_child',
    'wait_until', 'wait_left')
  redis.call('ZADD', KEYS[TIMERS], now, id)
  return true
end

local function error_json(kind, message)
  return '{"type":"celery_flow.errors.' .. kind .. '","message":' .. cjson.encode(message) .. '}'
end

-- A child run ended: if its parent is waiting on it (run_workflow), end that wait with the
-- child's output, or ChildRunFailed carrying the child's error. Returns the parent id to
-- resume, or ''.
local function wake_parent(id, status, output, err, now)
  local parent = redis.call('HGET', KEYS[RUN], 'parent')
  if not parent or parent == '' then return '' end
  local pk = prefix_of(id) .. ':run:{' .. parent .. '}'
  local w = redis.call('HMGET', pk, 'wait_child', 'wait_kind', 'wait_step', 'status')
  if w[2] == 'children' and w[4] == 'waiting'
      and w[3] == redis.call('HGET', KEYS[RUN], 'parent_step') then
    -- map_workflow fan-in: the last child to end resumes the parent (its replay reads them all)
    if redis.call('HINCRBY', pk, 'wait_left', -1) > 0 then return '' end
    end_wait(parent, pk, pk .. ':steps', 'succeeded', now, 'null', nil)
    return parent
  end
  if w[1] ~= id then return '' end
  if status == 'succeeded' then
    end_wait(parent, pk, pk .. ':steps', 'succeeded', now, output ~= '' and output or 'null', nil)
  else
    local wf = redis.call('HGET', KEYS[RUN], 'workflow') or '?'
    local detail = status
    local child_err = err ~= '' and err or 'null'
    if err ~= '' then
      local e = cjson.decode(err)
      detail = status .. ': ' .. tostring(e['type']) .. ': ' .. tostring(e['message'])
    end
    local msg = 'child run ' .. id .. ' (' .. wf .. ') ' .. detail
    local rec_err = '{"type":"celery_flow.errors.ChildRunFailed","message":' .. cjson.encode(msg)
      .. ',"child_error":' .. child_err .. '}'
    end_wait(parent, pk, pk .. ':steps', 'failed', now, nil, rec_err)
  end
  return parent
end
