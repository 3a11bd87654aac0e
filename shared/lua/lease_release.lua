-- lease_release: give a lease back (only with its token) and leave {p}:holders.
-- Caller: LeaseKeeper.release.
--
-- KEYS[1] lease    {p}:lease:{id}  string, deleted
-- KEYS[2] holders  {p}:holders     zset, written
-- ARGV: token, job id
-- Returns 1 released, 0 not ours (expired, or taken over).
local lease_key, holders = KEYS[1], KEYS[2]
local token, id = ARGV[1], ARGV[2]
if redis.call('GET', lease_key) == token then
  redis.call('ZREM', holders, id)
  return redis.call('DEL', lease_key)
end
return 0
