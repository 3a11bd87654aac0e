-- outbox_schedule: a job's callback enters the outbox, due now, from its end-of-job entry
-- (falq.shared.jobs.ended, group callbacks). Caller: Outbox.schedule.
--
-- KEYS[1] outbox  {p}:outbox         zset, written
-- KEYS[2] failed  {p}:outbox:failed  zset, written
-- KEYS[3] job     {p}:job:{id}       hash, cb_* fields read/written
-- ARGV: id, the version whose save ended the job, when it ended (the round of tries starts then)
-- Returns 1 scheduled, 0 already scheduled for this version or a newer one (an entry read
-- twice), -1 the record is gone.
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
