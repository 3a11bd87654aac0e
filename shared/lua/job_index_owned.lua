-- job_index_owned: the per-tenant creation index's backfill. Each id enters its tenant's index
-- only if its record still exists, checked in this same step, so the backfill never leaves an
-- entry for a record deleted meanwhile. Caller: JobStore._index_rows.
--
-- KEYS[1] tenants  {p}:created:tenants  set, written
-- ARGV: job template ({p}:job:HOLE), tenant index template ({p}:created:t:HOLE),
--       then (id, creation score, tenant) triples
-- Returns how many ids were indexed.
local tenants_key = KEYS[1]
local job_tpl, created_t_tpl = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV, 3 do
  local id, score, tenant = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('EXISTS', lib.key(job_tpl, id)) == 1 then
    redis.call('ZADD', lib.key(created_t_tpl, tenant), score, id)
    redis.call('SADD', tenants_key, tenant)
    n = n + 1
  end
end
return n
