-- purge_run: delete one terminal run, its steps and every index entry.
-- KEYS[1..21] run keys   KEYS[22] runs:created   KEYS[23] wf:<name>:runs
-- ARGV[1] run id   ARGV[2] cutoff ms: only runs finished at or before it are deleted
-- Returns 1 when deleted, 0 when the run is not terminal or finished after the cutoff.
-- A run whose hash already expired is only removed from the indexes.
local id = ARGV[1]
local v = redis.call('HMGET', KEYS[RUN], 'status', 'finished_at')
if v[1] then
  if not TERMINAL[v[1]] then return 0 end
  if tonumber(v[2] or '0') > tonumber(ARGV[2]) then return 0 end
end
redis.call('DEL', KEYS[RUN], KEYS[STEPS], KEYS[DONE], KEYS[EVENTS], KEYS[CHILDREN],
  KEYS[MAPS], KEYS[MAPDONE])
for i = 3, 5 do redis.call('ZREM', KEYS[i], id) end
for i = 7, 13 do redis.call('ZREM', KEYS[i], id) end
redis.call('ZREM', KEYS[WAITING], id)
redis.call('ZREM', KEYS[EXTRA], id)
redis.call('ZREM', KEYS[EXTRA + 1], id)
return 1
