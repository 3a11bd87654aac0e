-- batch_cap_settle: fal's result said what the job cost; its reservation against the batch's
-- cap becomes that amount, once per job. Caller: BatchCaps.settle (falq.shared.spend.batch_cap).
--
-- KEYS[1] cap       {p}:bcap:{batch}          hash, reserved_micro and billed_micro written
-- KEYS[2] charges   {p}:bcap:{batch}:charges  hash job -> micro reserved, read/written
-- KEYS[3] waiting   {p}:bcap:{batch}:waiting  set, written
-- KEYS[4] billed    {p}:bcap:{batch}:billed   hash job -> micro billed, written once
-- ARGV: job, billed_micro
-- Returns 1 if this call settled the job (0: settled before).
local cap_key, charges_key, waiting_key, billed_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job, amount = ARGV[1], tonumber(ARGV[2])
redis.call('SREM', waiting_key, job)
local charge = redis.call('HGET', charges_key, job)
if charge then
  redis.call('HDEL', charges_key, job)
  redis.call('HINCRBY', cap_key, 'reserved_micro', -tonumber(charge))
end
if redis.call('HSETNX', billed_key, job, amount) == 1 then
  redis.call('HINCRBY', cap_key, 'billed_micro', amount)
  return 1
end
return 0
