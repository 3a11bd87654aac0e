-- fair_ready: put a job (back) in its tenant's ready set for fair dispatch. A dispatched job
-- frees its room; the record is marked unpublished, so no recovery publishes it while it waits.
-- Caller: FairShare.make_ready / park (falq.shared.fairshare.scheduler).
--
-- KEYS[1] job         {p}:job:{id}                  hash, read; 'published' written
-- KEYS[2] ready       {p}:fair:ready:{lane}:{tenant} zset, written
-- KEYS[3] active      {p}:fair:active:{lane}        set, written
-- KEYS[4] inflight    {p}:inflight                  zset  \
-- KEYS[5] unadmitted  {p}:fair:unadmitted           zset   | lib.fair_free (Keys.room)
-- KEYS[6] ledger      {p}:ledger                    hash   |
-- KEYS[7] fair_count  {p}:fair:count                hash   |
-- KEYS[8] fair_owner  {p}:fair:owner (before the ledger) /
-- ARGV: id, tenant, score (creation time)
-- Returns 1 the job is in its ready set now, 0 nothing done (the record is gone or terminal).
local job_key, ready_key, active_key, inflight_key, unadmitted_key, ledger_key, count_key, owner_key = unpack(KEYS)
local id, tenant, score = ARGV[1], ARGV[2], tonumber(ARGV[3])
local st = redis.call('HGET', job_key, 'state')
if not st or lib.is_terminal(st) then return 0 end
lib.fair_free(inflight_key, unadmitted_key, ledger_key, count_key, owner_key, id)
redis.call('ZADD', ready_key, score, id)
redis.call('SADD', active_key, tenant)
redis.call('HSET', job_key, 'published', '0')
return 1
