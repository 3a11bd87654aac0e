-- job_create: store a new job record unless its idempotency key already names a live job.
-- Caller: JobStore.create / create_many (falq.shared.jobs.store).
--
-- KEYS[1]  job           {p}:job:{id}                   hash, written
-- KEYS[2]  idem          {p}:idem..:{key} or ''         string, read/written
-- KEYS[3]  state_index   {p}:state:{first}              zset, written
-- KEYS[4]  created       {p}:created                    zset, read/written
-- KEYS[5]  created_t     {p}:created:t:{tenant}         zset, written
-- KEYS[6]  tenants       {p}:created:tenants            set, written
-- KEYS[7]  backfill      {p}:created:backfill           hash, written (first record only)
-- KEYS[8]  batch         {p}:batch:{batch} or ''        hash, counts written
-- KEYS[9]  ready         {p}:fair:ready:{lane}:{tenant} or '' (not fair-dispatched)  zset
-- KEYS[10] active        {p}:fair:active:{lane} or ''   set
-- ARGV: id, doc (the record JSON without its input), created_at, first state ('queued' or
--       'waiting'), estimate (micro-dollars), tenant, job template ({p}:job:HOLE), input (JSON)
-- Returns the id of the job that now owns the idempotency key (this one, or the live one).
local job_key, idem_key, state_key, created_key, created_t_key, tenants_key, backfill_key,
      batch_key, ready_key, active_key = unpack(KEYS)
local id, doc, created_at, first, est_micro, tenant, job_tpl, input = unpack(ARGV)

if idem_key ~= '' then
  local existing = redis.call('GET', idem_key)
  if existing and redis.call('EXISTS', lib.key(job_tpl, existing)) == 1 then
    return existing
  end
  redis.call('SET', idem_key, id)
end
if redis.call('EXISTS', job_key) == 1 then return id end
redis.call('HSET', job_key, 'version', '1', 'state', first, 'doc', doc, 'input', input, 'published', '0')
redis.call('ZADD', state_key, created_at, id)
-- The tenant's own creation index: written with the record, so a tenant's listing never misses
-- a job. The first record of a Redis with none has no older record to backfill: the per-tenant
-- indexes are complete from here on. (A Redis with no record has no tenant in tenants_key
-- either, so only a tenant's first record needs the look.)
if redis.call('SADD', tenants_key, tenant) == 1 and redis.call('ZCARD', created_key) == 0 then
  redis.call('HSETNX', backfill_key, 'done', created_at)
end
redis.call('ZADD', created_key, created_at, id)
redis.call('ZADD', created_t_key, created_at, id)
if batch_key ~= '' then
  redis.call('HINCRBY', batch_key, 'n:' .. first, 1)
  redis.call('HINCRBY', batch_key, 'total', 1)
  redis.call('HINCRBY', batch_key, 'est_micro', tonumber(est_micro) or 0)
end
-- Fair dispatch: a queued job enters its tenant's ready set with the record, never without it.
if ready_key ~= '' then
  redis.call('ZADD', ready_key, created_at, id)
  redis.call('SADD', active_key, tenant)
end
return id
