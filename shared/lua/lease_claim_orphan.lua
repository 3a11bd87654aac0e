-- lease_claim_orphan: claim a job that lost its holder without a release (still in
-- {p}:holders, no lease) for one sweeper. Caller: LeaseKeeper's orphan sweep.
--
-- KEYS[1] lease    {p}:lease:{id}  string, read
-- KEYS[2] holders  {p}:holders     zset, written
-- ARGV: job id
-- Returns 1 claimed, 0 another sweeper has it or a holder is back.
local lease_key, holders = KEYS[1], KEYS[2]
local id = ARGV[1]
if redis.call('EXISTS', lease_key) == 0 and redis.call('ZREM', holders, id) == 1 then return 1 end
return 0
