-- job_save_result: keep fal's output JSON beside the record, only while the record exists (no
-- orphan key). Caller: JobStore.save_result.
--
-- KEYS[1] job  {p}:job:{id}  hash, field 'result' written
-- ARGV: the output JSON
-- Returns 1 stored, 0 the record is gone.
local job_key = KEYS[1]
local result = ARGV[1]
if redis.call('EXISTS', job_key) == 0 then return 0 end
redis.call('HSET', job_key, 'result', result)
return 1
