-- map_start: a run reaches ctx.step.map. Stores the items (first dispatch), works out which
-- chunks still have items without a result, and parks the run waiting for them, fenced by
-- token. A watchdog timer re-dispatches unfinished chunks if a chunk message is lost.
-- KEYS[1..21] run keys
-- ARGV[1] run id   ARGV[2] token   ARGV[3] step name   ARGV[4] step record head (JSON minus
-- the closing brace)   ARGV[5] n items   ARGV[6] chunk size   ARGV[7] watchdog ms
-- ARGV[8] 'start' or 'redispatch'. A start of a map that ran before (a retried run: its
-- count is stored) forgets its errors and chunk marks and keeps its results; a first start has
-- nothing to forget.   ARGV[9..] the items as JSON strings (start only)
-- Returns {'lost'} | {'done', step record} (every item already has a result)
--       | {'waiting', pending chunk indexes, woken}
local id, step, head = ARGV[1], ARGV[3], ARGV[4]
if not owns(ARGV[2]) then return {'lost'} end
local now = now_ms()
local sep = '\31'
local p = step .. sep
local n, size = tonumber(ARGV[5]), tonumber(ARGV[6])
local chunks = math.ceil(n / size)
local again = ARGV[8] == 'start' and redis.call('HEXISTS', KEYS[MAPS], p .. 'n') == 1
if ARGV[8] == 'start' then
  -- items in HSETs of 500 fields each (one command per item costs ~4 us in a script)
  local batch = {}
  for i = 9, #ARGV do
    batch[#batch + 1] = p .. 'i' .. sep .. (i - 9)
    batch[#batch + 1] = ARGV[i]
    if #batch >= 1000 or i == #ARGV then
      redis.call('HSET', KEYS[MAPS], unpack(batch))
      batch = {}
    end
  end
  redis.call('HSET', KEYS[MAPS], p .. 'n', n, p .. 'chunks', chunks, p .. 'size', size,
    p .. 'done', 0)
end
if again then
  for k = 0, n - 1 do redis.call('HDEL', KEYS[MAPS], p .. 'e' .. sep .. k) end
  for c = 0, chunks - 1 do redis.call('SREM', KEYS[MAPDONE], p .. c) end
  -- chunks whose items all have results already (a retried map) count as done now
  for c = 0, chunks - 1 do
    local complete = true
    for k = c * size, math.min(n, (c + 1) * size) - 1 do
      if redis.call('HEXISTS', KEYS[MAPS], p .. 'r' .. sep .. k) == 0 then
        complete = false
        break
      end
    end
    if complete then
      redis.call('SADD', KEYS[MAPDONE], p .. c)
      redis.call('HINCRBY', KEYS[MAPS], p .. 'done', 1)
    end
  end
end
local pending = {}
for c = 0, chunks - 1 do
  if redis.call('SISMEMBER', KEYS[MAPDONE], p .. c) == 0 then table.insert(pending, c) end
end
if #pending == 0 then
  local rec = wait_record(head, 'succeeded', now, 'null', nil)
  redis.call('HSET', KEYS[STEPS], step, rec)
  return {'done', rec}
end
local until_ms = now + tonumber(ARGV[7])
redis.call('HSET', KEYS[STEPS], step, head .. ',"until":' .. until_ms .. ',"status":"waiting"}')
redis.call('HSET', KEYS[RUN], 'wait_step', step, 'wait_head', head, 'wait_kind', 'map',
  'wait_until', until_ms, 'wait_event', '', 'wait_child', '')
local timer = until_ms
local deadline = tonumber(redis.call('HGET', KEYS[RUN], 'deadline') or '0') or 0
if deadline > 0 and deadline < timer then timer = deadline end
redis.call('ZADD', KEYS[TIMERS], timer, id)
redis.call('ZREM', KEYS[RUNNING], id)
redis.call('HDEL', KEYS[RUN], 'current_step')
move_status(id, 'running', 'waiting', now)
return {'waiting', pending, release(id, now)}
