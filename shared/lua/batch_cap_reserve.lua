-- batch_cap_reserve: reserve a job's cost against its batch's spend cap, only while billed +
-- reserved + this cost stays within the cap (falq.shared.spend.batch_cap). Caller: BatchCaps.reserve.
--
-- KEYS[1] cap       {p}:bcap:{batch}          hash cap_micro|none, reserved_micro, billed_micro
-- KEYS[2] charges   {p}:bcap:{batch}:charges  hash job -> micro reserved, read/written
-- KEYS[3] waiting   {p}:bcap:{batch}:waiting  set of jobs refused by the cap, written
-- ARGV: job, cost_micro
-- Returns {ok 0|1, cap micro (-1: none), billed micro, reserved micro}.
local cap_key, charges_key, waiting_key = KEYS[1], KEYS[2], KEYS[3]
local job, cost = ARGV[1], tonumber(ARGV[2])
local cap = redis.call('HGET', cap_key, 'cap_micro')
local billed = tonumber(redis.call('HGET', cap_key, 'billed_micro') or '0')
local reserved = tonumber(redis.call('HGET', cap_key, 'reserved_micro') or '0')
local capn = tonumber(cap or 'none') or -1
if redis.call('HEXISTS', charges_key, job) == 1 then
  redis.call('SREM', waiting_key, job)
  return {1, capn, billed, reserved}
end
if capn >= 0 and billed + reserved + cost > capn then
  redis.call('SADD', waiting_key, job)
  return {0, capn, billed, reserved}
end
redis.call('HSET', charges_key, job, cost)
redis.call('HINCRBY', cap_key, 'reserved_micro', cost)
redis.call('SREM', waiting_key, job)
return {1, capn, billed, reserved + cost}
