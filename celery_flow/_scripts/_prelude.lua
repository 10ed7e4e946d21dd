-- Shared prelude, prepended to every per-run script by celery_flow._store.
redis.replicate_commands()  -- effects replication: TIME before writes is safe on Redis 5-7
--
-- Every per-run script receives the same 13 leading KEYS (built by
-- celery_flow._keys.Keys.run_keys) and the run id as ARGV[1]:
--   KEYS[1]  run:{id}            hash   the run record
--   KEYS[2]  run:{id}:steps      hash   step name -> JSON step record
--   KEYS[3]  running             zset   run id -> lease deadline (ms)
--   KEYS[4]  timers              zset   run id -> due time (ms)
--   KEYS[5]  queued              zset   run id -> last publish time (ms)
--   KEYS[6]  run:{id}:done       list   one element once the run is terminal
--   KEYS[7..13] runs:status:<s>  zset   run id -> time it entered status s
-- Time always comes from the Redis server clock (TIME), never a client's.
local RUN, STEPS, RUNNING, TIMERS, QUEUED, DONE = 1, 2, 3, 4, 5, 6
local STATUS_KEY = {scheduled = 7, queued = 8, running = 9, waiting = 10,
                    succeeded = 11, failed = 12, canceled = 13}
local TERMINAL = {succeeded = true, failed = true, canceled = true}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Move the run from one status index to another and set its status field.
local function move_status(id, old, new, now)
  if old and STATUS_KEY[old] then redis.call('ZREM', KEYS[STATUS_KEY[old]], id) end
  redis.call('ZADD', KEYS[STATUS_KEY[new]], now, id)
  redis.call('HSET', KEYS[RUN], 'status', new)
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
  for _, k in ipairs({KEYS[RUN], KEYS[STEPS], KEYS[DONE]}) do
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
