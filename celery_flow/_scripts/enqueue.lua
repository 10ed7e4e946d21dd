-- enqueue: create a run with its indexes and idempotency mapping, and admit it through its gate.
-- KEYS[1..21] run keys (see _prelude.lua)
-- KEYS[22] runs:created zset   KEYS[23] wf:<name>:runs zset   KEYS[24] idem:<wf>:<key> string
-- KEYS[25] the parent's children set (run:{parent}:children) when ARGV[6] is set
-- ARGV[1] run id   ARGV[2] workflow   ARGV[3] input JSON   ARGV[4] queue ('' = Celery routing)
-- ARGV[5] max_attempts   ARGV[6] parent run id or ''   ARGV[7] idempotency key or ''
-- ARGV[8] idempotency TTL ms   ARGV[9] run_at ms (0 = now)   ARGV[10] timeout ms (0 = none)
-- ARGV[11] limit key   ARGV[12] max_concurrency (0 = none)   ARGV[13] rate count (0 = none)
-- ARGV[14] rate period ms   ARGV[15] lease ms   ARGV[16] '1': skip (write nothing) when the gate
-- is at max_concurrency (cron ticks), else '0'   ARGV[17] the parent's map_workflow step ('' none)
-- Returns {'existing', run_id} when the idempotency key or the run id is taken (nothing written),
-- {'skipped'} when ARGV[16] is '1' and the gate is full (nothing written),
-- else {'created', run_id, token, outcome}: outcome 'queued' means publish now; 'gated' (waits
-- for a slot), 'scheduled' (run_at or rate limit) mean a later script publishes it.
local id = ARGV[1]
if ARGV[7] ~= '' then
  local existing = redis.call('GET', KEYS[EXTRA + 2])
  if existing then return {'existing', existing} end
end
if redis.call('EXISTS', KEYS[RUN]) == 1 then return {'existing', id} end
local now = now_ms()
if ARGV[16] == '1' and tonumber(ARGV[12]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[GATE], '-inf', now)
  if redis.call('ZCARD', KEYS[GATE]) >= tonumber(ARGV[12]) then return {'skipped'} end
end
local run_at = tonumber(ARGV[9])
redis.call('HSET', KEYS[RUN], 'id', id, 'workflow', ARGV[2], 'input', ARGV[3], 'queue', ARGV[4],
  'max_attempts', ARGV[5], 'parent', ARGV[6], 'idem_key', ARGV[7], 'attempt', 1, 'token', 1,
  'created_at', now, 'timeout_ms', ARGV[10], 'limit_key', ARGV[11], 'gate_max', ARGV[12],
  'rate_n', ARGV[13], 'rate_ms', ARGV[14], 'lease_ms', ARGV[15], 'parent_step', ARGV[17] or '')
redis.call('ZADD', KEYS[EXTRA], now, id)
redis.call('ZADD', KEYS[EXTRA + 1], now, id)
if ARGV[7] ~= '' then redis.call('SET', KEYS[EXTRA + 2], id, 'PX', ARGV[8]) end
if ARGV[6] ~= '' then redis.call('SADD', KEYS[EXTRA + 3], id) end
if run_at > now then
  redis.call('HSET', KEYS[RUN], 'run_at', run_at)
  redis.call('ZADD', KEYS[TIMERS], run_at, id)
  move_status(id, nil, 'scheduled', now)
  return {'created', id, '1', 'scheduled'}
end
local res = admit(id, KEYS[RUN], gate_conf(KEYS[RUN]), now)
if res == 'ok' then
  redis.call('ZADD', KEYS[QUEUED], now, id)
  move_status(id, nil, 'queued', now)
  return {'created', id, '1', 'queued'}
end
park(id, KEYS[RUN], nil, res, now)
if res == 'gated' then return {'created', id, '1', 'gated'} end
return {'created', id, '1', 'scheduled'}
