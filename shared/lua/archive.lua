-- archive: the catalogue archive's mark on the records it archived (falq.workers.maintenance.archive).
-- Owner: Archiver; operations: mark.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- mark: give archived records their short TTL, each only if it is still the version
-- archived (a record saved again since has a newer entry on the stream and is archived again).
-- Caller: Archiver (falq.workers.maintenance.archive).
--
-- KEYS: per job, its record {p}:job:{id} and its idempotency key ('' if none)  (EXPIRE)
-- ARGV: ttl, then one archived version per job
-- Returns how many records got the TTL.
function ops.mark()
  local ttl, n = tonumber(ARGV[1]), 0
  for i = 1, #KEYS / 2 do
    local job_key, idem_key = KEYS[2 * i - 1], KEYS[2 * i]
    if redis.call('HGET', job_key, 'version') == ARGV[i + 1] then
      redis.call('EXPIRE', job_key, ttl)
      if idem_key ~= '' then redis.call('EXPIRE', idem_key, ttl) end
      n = n + 1
    end
  end
  return n
end

local run = ops[op]
if not run then return redis.error_reply('falq archive.lua: no operation ' .. tostring(op)) end
return run()
