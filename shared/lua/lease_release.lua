-- lease_release: give a lease back (only with its token) and leave {p}:holders; after a step
-- that ran to its end, also end the job's streak of crashed steps. Caller: LeaseKeeper.release.
--
-- KEYS[1] lease    {p}:lease:{id}         string, deleted
-- KEYS[2] holders  {p}:holders            zset, written
-- KEYS[3] crashes  {p}:step_crashes:{id}  string, deleted; or '' (the step crashed: it counts)
-- ARGV: token, job id
-- Returns 1 released, 0 not ours (expired, or taken over).
local lease_key, holders, crashes = KEYS[1], KEYS[2], KEYS[3]
local token, id = ARGV[1], ARGV[2]
if crashes ~= '' then redis.call('DEL', crashes) end
if redis.call('GET', lease_key) == token then
  redis.call('ZREM', holders, id)
  return redis.call('DEL', lease_key)
end
return 0
