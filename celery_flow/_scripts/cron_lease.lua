-- cron_lease: acquire, renew or release the cron leader lease of one app; record next fires.
-- KEYS[1] lock:cron:<app id> string   the leader's token (SET NX PX, renewed with PEXPIRE)
-- KEYS[2] cron:next zset              entry id -> next fire ms (what cron_status shows)
-- KEYS[3] cron:defs hash              entry id -> definition (only live entries are recorded)
-- ARGV[1] token (<node id>|<random>)   ARGV[2] lease ms; '0' releases the lease
-- ARGV[3 ..] pairs: entry id, next fire ms, recorded only while this token holds the lease
-- Returns {owned (1/0), Redis now ms, the holder's token or '', ms until the holder's lease
-- expires (-2 when none: a follower polls again right when the leader's lease lapses)}.
--
-- The race it prevents: a leader that stalled (GC pause, partition) past its lease must not
-- extend a lease another node acquired meanwhile. Renewal compares the stored token with ours
-- inside the script, so a stale leader learns it lost (owned = 0) and steps down; a release
-- likewise only deletes our own token. A stale leader that fires a tick before it learns is
-- harmless: every tick's run is created with the idempotency key cron:<id>:<fire ms>.
local t = redis.call('TIME')  -- self-contained: does not rely on the shared prelude
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder = redis.call('GET', KEYS[1])
if ARGV[2] == '0' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return {0, now, '', -2}
end
local owned = 0
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  owned = 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  owned = 1
  holder = ARGV[1]
end
if owned == 1 then
  for i = 3, #ARGV, 2 do
    if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 then
      redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
    end
  end
end
return {owned, now, holder or '', redis.call('PTTL', KEYS[1])}
