-- lease_renew: renew each lease still held with its token and move its end in {p}:holders.
-- Caller: LeaseKeeper's renewal round (falq.workers.lease).
--
-- KEYS[1..n]  the lease keys {p}:lease:{id}   strings, PEXPIRE
-- KEYS[n+1]   holders  {p}:holders            zset, written (XX)
-- ARGV: ttl ms, the n tokens, then the n job ids
-- Returns 1/0 per lease: 0 is a lease another worker took over (ours expired), lost at once.
local n = #KEYS - 1
local holders = KEYS[#KEYS]
local ttl_ms = ARGV[1]
local ends = lib.lease_end(ttl_ms)
local out = {}
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ttl_ms)
    redis.call('ZADD', holders, 'XX', ends, ARGV[n + 1 + i])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
