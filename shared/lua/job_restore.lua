-- job_restore: an archived record written back unchanged, only if Redis holds none
-- (falq.shared.catalogue.revive). Caller: JobStore.restore.
--
-- KEYS[1] job          {p}:job:{id}             hash, written
-- KEYS[2] idem         the idempotency key or '' string, read/written
-- KEYS[3] state_index  {p}:state:{state}        zset, written
-- KEYS[4] created      {p}:created              zset, written
-- KEYS[5] created_t    {p}:created:t:{tenant}   zset, written
-- KEYS[6] tenants      {p}:created:tenants      set, written
-- ARGV: id, version, state, doc, updated_at, created_at, ttl, tenant, job template ({p}:job:HOLE)
-- Returns 1 written, 0 already there, 2 the idempotency key names another live job (nothing written).
local job_key, idem_key, state_key, created_key, created_t_key, tenants_key = unpack(KEYS)
local id, version, state, doc, updated_at, created_at, ttl, tenant, job_tpl = unpack(ARGV)
ttl = tonumber(ttl)
if redis.call('EXISTS', job_key) == 1 then return 0 end
if idem_key ~= '' then
  local owner = redis.call('GET', idem_key)
  if owner and owner ~= id and redis.call('EXISTS', lib.key(job_tpl, owner)) == 1 then return 2 end
  redis.call('SET', idem_key, id, 'EX', ttl)
end
redis.call('HSET', job_key, 'version', version, 'state', state, 'doc', doc, 'published', '1')
redis.call('EXPIRE', job_key, ttl)
redis.call('ZADD', state_key, updated_at, id)
redis.call('ZADD', created_key, created_at, id)
redis.call('ZADD', created_t_key, created_at, id)
redis.call('SADD', tenants_key, tenant)
return 1
