-- outbox_finish: log one callback try and apply its outcome, the outcome only while the entry
-- still carries this claim's token. Caller: Outbox.finish.
--
-- KEYS[1] outbox  {p}:outbox            zset, read/written
-- KEYS[2] failed  {p}:outbox:failed     zset, written
-- KEYS[3] job     {p}:job:{id}          hash, 'cb_tries' written
-- KEYS[4] log     {p}:delivery:{id}     list of tries (JSON), capped, TTL as the record
-- ARGV: id, token, try entry ('' for none), action ('done'|'retry'|'failed'|'drop'), next due,
--       log cap, now, fallback ttl
-- Returns 1 applied, 0 left to whoever changed the entry since the claim.
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
