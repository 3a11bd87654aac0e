-- fair_recount: each tenant's count of dispatched jobs ({p}:fair:count), recounted from the jobs
-- in {p}:inflight and their ledger entries. Dispatch and lib.fair_free keep the count exact step
-- by step; this puts it right after anything that bypassed them (a worker of an older release
-- freeing a job it cannot find in the ledger during a rolling upgrade). Also empties the owners
-- written before the ledger once their jobs left inflight. Caller: FairShare.recount
-- (falq.shared.fairshare.scheduler), every half minute from the maintenance pass.
--
-- KEYS[1] inflight    {p}:inflight         zset, read
-- KEYS[2] ledger      {p}:ledger           hash, read
-- KEYS[3] fair_count  {p}:fair:count       hash, read/written
-- KEYS[4] fair_owner  {p}:fair:owner       hash, read/written (jobs dispatched before the ledger)
-- ARGV: none
-- Returns the number of tenants whose count was wrong.
local inflight_key, ledger_key, count_key, owner_key = unpack(KEYS)
local counts = {}
local legacy = redis.call('HLEN', owner_key) > 0
for _, id in ipairs(redis.call('ZRANGE', inflight_key, 0, -1)) do
  local tenant = lib.ledger_get(ledger_key, id)
  if not tenant and legacy then tenant = redis.call('HGET', owner_key, id) end
  if tenant then counts[tenant] = (counts[tenant] or 0) + 1 end
end
if legacy then
  for _, id in ipairs(redis.call('HKEYS', owner_key)) do
    if not redis.call('ZSCORE', inflight_key, id) then redis.call('HDEL', owner_key, id) end
  end
end
local wrong = 0
local cur = redis.call('HGETALL', count_key)
for i = 1, #cur, 2 do
  local tenant, n = cur[i], tonumber(cur[i + 1]) or 0
  local want = counts[tenant] or 0
  if n ~= want then
    wrong = wrong + 1
    if want == 0 then redis.call('HDEL', count_key, tenant) else redis.call('HSET', count_key, tenant, want) end
  end
  counts[tenant] = nil
end
for tenant, want in pairs(counts) do
  wrong = wrong + 1
  redis.call('HSET', count_key, tenant, want)
end
return wrong
