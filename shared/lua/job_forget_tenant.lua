-- job_forget_tenant: a tenant whose creation index is empty leaves {p}:created:tenants, unless
-- a create refilled the index in between (checked in this step: the create writes both in one
-- step). Caller: JobStore.prune_tenant_indexes.
--
-- KEYS[1] created_t  {p}:created:t:{tenant}  zset, read
-- KEYS[2] tenants    {p}:created:tenants     set, written
-- ARGV: tenant
-- Returns 1 if the tenant was removed.
local created_t_key, tenants_key = KEYS[1], KEYS[2]
local tenant = ARGV[1]
if redis.call('ZCARD', created_t_key) == 0 then return redis.call('SREM', tenants_key, tenant) end
return 0
