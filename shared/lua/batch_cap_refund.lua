-- batch_cap_refund: give back a job's reservation against its batch's cap (fal never accepted
-- its request). Caller: BatchCaps.refund (falq.shared.spend.batch_cap).
--
-- KEYS[1] cap       {p}:bcap:{batch}          hash, reserved_micro written
-- KEYS[2] charges   {p}:bcap:{batch}:charges  hash job -> micro reserved, read/written
-- KEYS[3] waiting   {p}:bcap:{batch}:waiting  set, written
-- ARGV: job
-- Returns 1 if the job held a reservation.
local cap_key, charges_key, waiting_key = KEYS[1], KEYS[2], KEYS[3]
local job = ARGV[1]
redis.call('SREM', waiting_key, job)
local charge = redis.call('HGET', charges_key, job)
if not charge then return 0 end
redis.call('HDEL', charges_key, job)
redis.call('HINCRBY', cap_key, 'reserved_micro', -tonumber(charge))
return 1
