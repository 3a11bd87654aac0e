-- lease: a job's lease (the worker step holding it, fenced by its token) and {p}:holders, the
-- index of held leases by when they run out (falq.workers.lease).
-- Owner: LeaseKeeper; operations: acquire, renew, release, claim_orphan.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- acquire: take a job's lease and enter the job in {p}:holders (scored by when the lease
-- ends, on Redis' clock). Caller: LeaseKeeper.acquire (falq.workers.lease).
--
-- KEYS[1] lease    {p}:lease:{id}  string (token, PX ttl), written
-- KEYS[2] holders  {p}:holders     zset id -> lease end (s), written
-- ARGV: token, ttl ms, job id
-- Returns 1 taken, 0 a live holder has it.
function ops.acquire()
  local lease_key, holders = KEYS[1], KEYS[2]
  local token, ttl_ms, id = ARGV[1], ARGV[2], ARGV[3]
  if redis.call('SET', lease_key, token, 'NX', 'PX', ttl_ms) then
    redis.call('ZADD', holders, lib.lease_end(ttl_ms), id)
    return 1
  end
  return 0
end

-- renew: renew each lease still held with its token and move its end in {p}:holders.
-- Caller: LeaseKeeper's renewal round (falq.workers.lease).
--
-- KEYS[1..n]  the lease keys {p}:lease:{id}   strings, PEXPIRE
-- KEYS[n+1]   holders  {p}:holders            zset, written (XX)
-- ARGV: ttl ms, the n tokens, then the n job ids
-- Returns 1/0 per lease: 0 is a lease another worker took over (ours expired), lost at once.
function ops.renew()
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
end

-- release: give a lease back (only with its token) and leave {p}:holders; after a step
-- that ran to its end on a job with a streak of crashed steps, also end the streak.
-- Caller: LeaseKeeper.release.
--
-- KEYS[1] lease    {p}:lease:{id}         string, deleted
-- KEYS[2] holders  {p}:holders            zset, written
-- KEYS[3] job      {p}:job:{id}           hash, field 'crashes' deleted; or '' (no streak to end,
--                                         or the step crashed: it counts)
-- ARGV: token, job id
-- Returns 1 released, 0 not ours (expired, or taken over).
function ops.release()
  local lease_key, holders, job_key = KEYS[1], KEYS[2], KEYS[3]
  local token, id = ARGV[1], ARGV[2]
  if job_key ~= '' then redis.call('HDEL', job_key, 'crashes') end
  if redis.call('GET', lease_key) == token then
    redis.call('ZREM', holders, id)
    return redis.call('DEL', lease_key)
  end
  return 0
end

-- claim_orphan: claim a job that lost its holder without a release (still in
-- {p}:holders, no lease) for one sweeper. Caller: LeaseKeeper's orphan sweep.
--
-- KEYS[1] lease    {p}:lease:{id}  string, read
-- KEYS[2] holders  {p}:holders     zset, written
-- ARGV: job id
-- Returns 1 claimed, 0 another sweeper has it or a holder is back.
function ops.claim_orphan()
  local lease_key, holders = KEYS[1], KEYS[2]
  local id = ARGV[1]
  if redis.call('EXISTS', lease_key) == 0 and redis.call('ZREM', holders, id) == 1 then return 1 end
  return 0
end

local run = ops[op]
if not run then return redis.error_reply('falq lease.lua: no operation ' .. tostring(op)) end
return run()
