-- due: ids of a sorted set whose score is at or before now minus an offset (read-only).
-- KEYS[1] a zset scored in ms (running, timers, queued, runs:status:<terminal>)
-- ARGV[1] limit   ARGV[2] offset ms (0 = now)
-- Returns {ids, next score or ''}: the due ids, and the earliest score left after them.
local limit = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, limit)
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {ids, nxt[2] or '', tostring(now)}
