-- enqueue: create a run (queued or scheduled) with its indexes and idempotency mapping.
-- KEYS[1..13] run keys (see _prelude.lua)
-- KEYS[14] runs:created zset   KEYS[15] wf:<name>:runs zset   KEYS[16] idem:<wf>:<key> string
-- ARGV[1] run id   ARGV[2] workflow   ARGV[3] input JSON   ARGV[4] queue ('' = Celery routing)
-- ARGV[5] max_attempts   ARGV[6] parent run id or ''   ARGV[7] idempotency key or ''
-- ARGV[8] idempotency TTL ms   ARGV[9] run_at ms (0 = now)   ARGV[10] timeout ms (0 = none)
-- ARGV[11] limit key or ''
-- Returns {'existing', run_id} when the idempotency key or the run id is taken (nothing written),
-- else {'created', run_id, token, status}.
local id = ARGV[1]
if ARGV[7] ~= '' then
  local existing = redis.call('GET', KEYS[16])
  if existing then return {'existing', existing} end
end
if redis.call('EXISTS', KEYS[RUN]) == 1 then return {'existing', id} end
local now = now_ms()
local run_at = tonumber(ARGV[9])
redis.call('HSET', KEYS[RUN], 'id', id, 'workflow', ARGV[2], 'input', ARGV[3], 'queue', ARGV[4],
  'max_attempts', ARGV[5], 'parent', ARGV[6], 'idem_key', ARGV[7], 'attempt', 1, 'token', 1,
  'created_at', now, 'timeout_ms', ARGV[10], 'limit_key', ARGV[11])
local status = 'queued'
if run_at > now then
  status = 'scheduled'
  redis.call('HSET', KEYS[RUN], 'run_at', run_at)
  redis.call('ZADD', KEYS[TIMERS], run_at, id)
else
  redis.call('ZADD', KEYS[QUEUED], now, id)
end
move_status(id, nil, status, now)
redis.call('ZADD', KEYS[14], now, id)
redis.call('ZADD', KEYS[15], now, id)
if ARGV[7] ~= '' then redis.call('SET', KEYS[16], id, 'PX', ARGV[8]) end
return {'created', id, '1', status}
