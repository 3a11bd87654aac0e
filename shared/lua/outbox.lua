-- outbox: durable callbacks: the outbox of callbacks still to POST, one claimant per try, and each
-- job's delivery log (falq.shared.callbacks.outbox; docs/internals/callbacks.md).
-- Owner: Outbox; operations: schedule, claim, finish, settle, append, redeliver.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- schedule: a job's callback enters the outbox, due now, from its end-of-job entry
-- (falq.shared.jobs.ended, group callbacks). Caller: Outbox.schedule.
--
-- KEYS[1] outbox  {p}:outbox         zset, written
-- KEYS[2] failed  {p}:outbox:failed  zset, written
-- KEYS[3] job     {p}:job:{id}       hash, cb_* fields read/written
-- ARGV: id, the version whose save ended the job, when it ended (the round of tries starts then)
-- Returns 1 scheduled, 0 already scheduled for this version or a newer one (an entry read
-- twice), -1 the record is gone.
function ops.schedule()
  local outbox, failed, job = unpack(KEYS)
  local id, version, since = ARGV[1], tonumber(ARGV[2]), ARGV[3]
  local cur = redis.call('HMGET', job, 'version', 'cb_version')
  if not cur[1] then return -1 end
  if cur[2] and tonumber(cur[2]) and tonumber(cur[2]) >= version then return 0 end
  redis.call('HSET', job, 'cb_version', tostring(version), 'cb_tries', '0', 'cb_since', since)
  redis.call('HDEL', job, 'cb_settled')
  redis.call('ZREM', failed, id)
  redis.call('ZADD', outbox, since, id)
  return 1
end

-- claim: take due callback entries by moving their score forward to the claim's end;
-- that score is the claim's token (no other worker sees them due until it passes).
-- Caller: Outbox.claim (falq.shared.callbacks.outbox).
--
-- KEYS[1] outbox  {p}:outbox  zset id -> when due, read/written
-- ARGV: now, claim-until (the token), limit
-- Returns the claimed ids.
function ops.claim()
  local outbox_key = KEYS[1]
  local now, until_, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
  local ids = redis.call('ZRANGEBYSCORE', outbox_key, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do redis.call('ZADD', outbox_key, until_, id) end
  return ids
end

-- finish: log one callback try and apply its outcome, the outcome only while the entry
-- still carries this claim's token. Caller: Outbox.finish.
--
-- KEYS[1] outbox  {p}:outbox            zset, read/written
-- KEYS[2] failed  {p}:outbox:failed     zset, written
-- KEYS[3] job     {p}:job:{id}          hash, 'cb_tries' written
-- KEYS[4] log     {p}:delivery:{id}     list of tries (JSON), capped, TTL as the record
-- ARGV: id, token, try entry ('' for none), action ('done'|'retry'|'failed'|'drop'), next due,
--       log cap, now, fallback ttl
-- Returns 1 applied, 0 left to whoever changed the entry since the claim.
function ops.finish()
  local outbox, failed, job, logk = unpack(KEYS)
  local id, token, entry, action, due, cap, now, ttl =
    ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
  local alive = redis.call('EXISTS', job) == 1
  if alive and entry ~= '' then
    redis.call('RPUSH', logk, entry)
    redis.call('LTRIM', logk, -cap, -1)
    local left = redis.call('TTL', job)
    redis.call('EXPIRE', logk, left > 0 and left or ttl)
  end
  local s = redis.call('ZSCORE', outbox, id)
  if not s or tonumber(s) ~= token then return 0 end
  if alive and entry ~= '' then redis.call('HINCRBY', job, 'cb_tries', 1) end
  if action == 'retry' then
    redis.call('ZADD', outbox, due, id)
  else
    redis.call('ZREM', outbox, id)
    if action == 'failed' then redis.call('ZADD', failed, now, id) end
  end
  return 1
end

-- settle: note a target that needs no more tries for this delivery id (delivered: 1,
-- refused for good: 0), only while the record exists. Caller: Outbox.settle.
--
-- KEYS[1] job  {p}:job:{id}  hash, 'cb_settled' written ("{delivery id}|kind=1,kind=0,")
-- ARGV: delivery id, "kind=1" or "kind=0"
-- Returns 1 noted, 0 the record is gone.
function ops.settle()
  local job = KEYS[1]
  local delivery, note = ARGV[1], ARGV[2]
  if redis.call('EXISTS', job) == 0 then return 0 end
  local cur = redis.call('HGET', job, 'cb_settled')
  local head = delivery .. '|'
  if not cur or string.sub(cur, 1, #head) ~= head then cur = head end
  redis.call('HSET', job, 'cb_settled', cur .. note .. ',')
  return 1
end

-- append: one more try in a job's delivery log, only while the record exists.
-- Caller: Outbox.append.
--
-- KEYS[1] job  {p}:job:{id}       hash, read (its TTL)
-- KEYS[2] log  {p}:delivery:{id}  list, written (capped, TTL as the record)
-- ARGV: try entry (JSON), log cap, fallback ttl
-- Returns 1 appended, 0 the record is gone.
function ops.append()
  local job, logk = KEYS[1], KEYS[2]
  local entry, cap, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
  if redis.call('EXISTS', job) == 0 then return 0 end
  redis.call('RPUSH', logk, entry)
  redis.call('LTRIM', logk, -cap, -1)
  local left = redis.call('TTL', job)
  redis.call('EXPIRE', logk, left > 0 and left or ttl)
  return 1
end

-- redeliver: a fresh round of callback tries for a job, due now.
-- Caller: Outbox.redeliver.
--
-- KEYS[1] outbox  {p}:outbox         zset, written
-- KEYS[2] failed  {p}:outbox:failed  zset, written
-- KEYS[3] job     {p}:job:{id}       hash, cb_* fields written
-- ARGV: id, now
-- Returns 1, or -1 if the record is gone.
function ops.redeliver()
  local outbox, failed, job = unpack(KEYS)
  local id, now = ARGV[1], ARGV[2]
  local cur = redis.call('HMGET', job, 'version', 'cb_version')
  if not cur[1] then return -1 end
  if not cur[2] then redis.call('HSET', job, 'cb_version', cur[1]) end
  redis.call('HSET', job, 'cb_tries', '0', 'cb_since', now)
  redis.call('HDEL', job, 'cb_settled')
  redis.call('ZREM', failed, id)
  redis.call('ZADD', outbox, now, id)
  return 1
end

local run = ops[op]
if not run then return redis.error_reply('falq outbox.lua: no operation ' .. tostring(op)) end
return run()
