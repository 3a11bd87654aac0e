-- outbox_append: one more try in a job's delivery log, only while the record exists.
-- Caller: Outbox.append.
--
-- KEYS[1] job  {p}:job:{id}       hash, read (its TTL)
-- KEYS[2] log  {p}:delivery:{id}  list, written (capped, TTL as the record)
-- ARGV: try entry (JSON), log cap, fallback ttl
-- Returns 1 appended, 0 the record is gone.
local job, logk = KEYS[1], KEYS[2]
local entry, cap, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('EXISTS', job) == 0 then return 0 end
redis.call('RPUSH', logk, entry)
redis.call('LTRIM', logk, -cap, -1)
local left = redis.call('TTL', job)
redis.call('EXPIRE', logk, left > 0 and left or ttl)
return 1
