-- outbox_redeliver: a fresh round of callback tries for a job, due now.
-- Caller: Outbox.redeliver.
--
-- KEYS[1] outbox  {p}:outbox         zset, written
-- KEYS[2] failed  {p}:outbox:failed  zset, written
-- KEYS[3] job     {p}:job:{id}       hash, cb_* fields written
-- ARGV: id, now
-- Returns 1, or -1 if the record is gone.
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
