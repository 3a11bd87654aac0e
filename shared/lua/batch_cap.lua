-- batch_cap: a batch's spend cap: reservations against it, refunds, and the billed settlement
-- (falq.shared.spend.batch_cap).
-- Owner: BatchCaps; operations: reserve, refund, settle.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- reserve: reserve a job's cost against its batch's spend cap, only while billed +
-- reserved + this cost stays within the cap (falq.shared.spend.batch_cap). Caller: BatchCaps.reserve.
--
-- KEYS[1] cap       {p}:bcap:{batch}          hash cap_micro|none, reserved_micro, billed_micro
-- KEYS[2] charges   {p}:bcap:{batch}:charges  hash job -> micro reserved, read/written
-- KEYS[3] waiting   {p}:bcap:{batch}:waiting  set of jobs refused by the cap, written
-- ARGV: job, cost_micro
-- Returns {ok 0|1, cap micro (-1: none), billed micro, reserved micro}.
function ops.reserve()
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
end

-- refund: give back a job's reservation against its batch's cap (fal never accepted
-- its request). Caller: BatchCaps.refund (falq.shared.spend.batch_cap).
--
-- KEYS[1] cap       {p}:bcap:{batch}          hash, reserved_micro written
-- KEYS[2] charges   {p}:bcap:{batch}:charges  hash job -> micro reserved, read/written
-- KEYS[3] waiting   {p}:bcap:{batch}:waiting  set, written
-- ARGV: job
-- Returns 1 if the job held a reservation.
function ops.refund()
  local cap_key, charges_key, waiting_key = KEYS[1], KEYS[2], KEYS[3]
  local job = ARGV[1]
  redis.call('SREM', waiting_key, job)
  local charge = redis.call('HGET', charges_key, job)
  if not charge then return 0 end
  redis.call('HDEL', charges_key, job)
  redis.call('HINCRBY', cap_key, 'reserved_micro', -tonumber(charge))
  return 1
end

-- settle: fal's result said what the job cost; its reservation against the batch's
-- cap becomes that amount, once per job. Caller: BatchCaps.settle (falq.shared.spend.batch_cap).
--
-- KEYS[1] cap       {p}:bcap:{batch}          hash, reserved_micro and billed_micro written
-- KEYS[2] charges   {p}:bcap:{batch}:charges  hash job -> micro reserved, read/written
-- KEYS[3] waiting   {p}:bcap:{batch}:waiting  set, written
-- KEYS[4] billed    {p}:bcap:{batch}:billed   hash job -> micro billed, written once
-- ARGV: job, billed_micro
-- Returns 1 if this call settled the job (0: settled before).
function ops.settle()
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
end

local run = ops[op]
if not run then return redis.error_reply('falq batch_cap.lua: no operation ' .. tostring(op)) end
return run()
