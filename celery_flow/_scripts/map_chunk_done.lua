-- map_chunk_done: fan-in. A chunk of ctx.step.map finished (its items have a result or an
-- error recorded). Adding the chunk twice is a no-op, so redelivered chunks cannot
-- double-count; the last chunk ends the run's wait exactly once.
-- KEYS[1..21] run keys (of the run that is mapping)
-- ARGV[1] run id   ARGV[2] step name   ARGV[3] chunk index
-- Returns {'dup'} | {'more'} | {'complete'} (all chunks done, the run was not waiting on this
-- step: nothing to wake) | {'resume'}: the run is due now; the caller claims and publishes it.
local id, step = ARGV[1], ARGV[2]
local sep = '\31'
local p = step .. sep
if redis.call('SADD', KEYS[MAPDONE], p .. ARGV[3]) == 0 then return {'dup'} end
local done = redis.call('HINCRBY', KEYS[MAPS], p .. 'done', 1)
local total = tonumber(redis.call('HGET', KEYS[MAPS], p .. 'chunks') or '0') or 0
if done < total then return {'more'} end
local v = redis.call('HMGET', KEYS[RUN], 'status', 'wait_step')
if v[1] ~= 'waiting' or v[2] ~= step then return {'complete'} end
local n = tonumber(redis.call('HGET', KEYS[MAPS], p .. 'n') or '0') or 0
local failed = {}
for k = 0, n - 1 do
  if redis.call('HEXISTS', KEYS[MAPS], p .. 'e' .. sep .. k) == 1 then table.insert(failed, k) end
end
local now = now_ms()
if #failed == 0 then
  end_wait(id, KEYS[RUN], KEYS[STEPS], 'succeeded', now, 'null', nil)
else
  local shown = {}
  for i = 1, math.min(#failed, 20) do shown[i] = failed[i] end
  local more = #failed > 20 and ', ...' or ''
  end_wait(id, KEYS[RUN], KEYS[STEPS], 'failed', now, nil, error_json('MapFailed',
    #failed .. ' of ' .. n .. ' items of map step ' .. step .. ' failed (indexes '
    .. table.concat(shown, ', ') .. more .. '); flow.retry(run_id) recomputes only those'))
end
return {'resume'}
