-- lease_acquire: take a job's lease and enter the job in {p}:holders (scored by when the lease
-- ends, on Redis' clock). Caller: LeaseKeeper.acquire (falq.workers.lease).
--
-- KEYS[1] lease    {p}:lease:{id}  string (token, PX ttl), written
-- KEYS[2] holders  {p}:holders     zset id -> lease end (s), written
-- ARGV: token, ttl ms, job id
-- Returns 1 taken, 0 a live holder has it.
local lease_key, holders = KEYS[1], KEYS[2]
local token, ttl_ms, id = ARGV[1], ARGV[2], ARGV[3]
if redis.call('SET', lease_key, token, 'NX', 'PX', ttl_ms) then
  redis.call('ZADD', holders, lib.lease_end(ttl_ms), id)
  return 1
end
return 0
