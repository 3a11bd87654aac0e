-- job: a job's record and what is stored with it: the state and creation indexes, the idempotency
-- key, batch counts, the fair-dispatch ready entry and the end-of-job event.
-- Owner: JobStore; operations: create, save, save_result, crashed, cancel, restore, forget_unpublished,
-- index_owned, forget_tenant.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- create: store a new job record unless its idempotency key already names a live job.
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
function ops.create()
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
end

-- save: compare-and-set save of a job record (its input only when it changed), and
-- everything a state change brings with it in the same atomic step. Caller: JobStore.save (falq.shared.jobs.store).
--
-- KEYS[1]  job         {p}:job:{id}                  hash, read/written
-- KEYS[2]  idem        the idempotency key or ''     string, TTL set
-- KEYS[3]  lease       {p}:lease:{id} or '' (unfenced save)  string, read
-- KEYS[4]  batch       {p}:batch:{batch} or ''       hash, counts written
-- KEYS[5]  children    {p}:children:{id}             set, read
-- KEYS[6]  ended       {p}:ended                     stream, appended (falq.shared.jobs.ended)
-- KEYS[7]  state_new   {p}:state:{state}             zset, written
-- KEYS[8]  inflight    {p}:inflight                  zset  \
-- KEYS[9]  unadmitted  {p}:fair:unadmitted           zset   | fair dispatch room, freed on a
-- KEYS[10] ledger      {p}:ledger                    hash   | terminal save (lib.fair_free;
-- KEYS[11] fair_count  {p}:fair:count                hash   | Keys.room)
-- KEYS[12] fair_owner  {p}:fair:owner (before the ledger) /
-- ARGV: expected version, new version, state, doc (record JSON), now, id, ttl (0: no TTL),
--       callback ('1': a terminal state with a callback), lease token, billed micro-dollars,
--       terminal ('1'/'0'), state template ({p}:state:HOLE, for the state read here),
--       archive ('1': a terminal save the catalogue archives), input (the input JSON of a record
--       stored split, when it changed; '' unchanged, or a record stored whole in doc; '-' the
--       record is stored whole from now on: doc holds the input, the input field goes),
--       drop result ('1': the images are in S3, fal's kept result JSON goes in this save),
--       result (fal's output JSON, kept beside the record from this save on; '' none),
--       unless cancel ('1': save nothing if a cancel was asked, the record's `cancel` field)
-- Returns 1 saved (also when this very save was already applied), 0 version conflict, -1 record
-- gone, -2 the lease is no longer the caller's, -3 a cancel was asked (only with unless cancel).
function ops.save()
  local job_key, idem_key, lease_key, batch_key, children_key, ended_key, state_key, inflight_key, unadmitted_key,
        ledger_key, count_key, owner_key = unpack(KEYS)
  local expected, new_version, state, doc, ts, id, ttl, callback, token, billed, terminal, state_tpl,
        archive, input, drop_result, result, unless_cancel = unpack(ARGV)
  ttl = tonumber(ttl)

  local cur = redis.call('HMGET', job_key, 'version', 'state', 'cancel')
  if not cur[1] then return -1 end
  if cur[1] ~= expected then
    -- This very save sent again: redis-py re-sends a command whose reply a dropped connection
    -- lost (a Redis restart, a failover). The record already is what the caller writes, so
    -- it succeeded; answering "conflict" would make the caller apply its change twice (an
    -- attempt counted, or given back, twice).
    if cur[1] == new_version and redis.call('HGET', job_key, 'doc') == doc then return 1 end
    return 0
  end
  -- Fencing: a worker step saves only while it still holds the job's lease.
  if lease_key ~= '' and redis.call('GET', lease_key) ~= token then return -2 end
  if unless_cancel == '1' and cur[3] then return -3 end
  local old = cur[2]
  local moved = old ~= state
  if result ~= '' then
    redis.call('HSET', job_key, 'version', new_version, 'state', state, 'doc', doc, 'result', result)
  else
    redis.call('HSET', job_key, 'version', new_version, 'state', state, 'doc', doc)
  end
  local gone = {}
  if input == '-' then
    gone[#gone + 1] = 'input'
  elseif input ~= '' then
    redis.call('HSET', job_key, 'input', input)
  end
  if drop_result == '1' then gone[#gone + 1] = 'result' end
  if #gone > 0 then redis.call('HDEL', job_key, unpack(gone)) end
  if moved then redis.call('ZREM', lib.key(state_tpl, old), id) end
  redis.call('ZADD', state_key, ts, id)
  -- Batches: the batch's counts move from the old state to the new one, and a terminal save adds
  -- the billed amount (exact: in this step, not a consumer of the end-of-job stream).
  if moved and batch_key ~= '' then
    redis.call('HINCRBY', batch_key, 'n:' .. old, -1)
    redis.call('HINCRBY', batch_key, 'n:' .. state, 1)
    if terminal == '1' then
      redis.call('HINCRBY', batch_key, 'billed_micro', tonumber(billed) or 0)
      redis.call('HSET', batch_key, 'last_end', ts)
    end
  end
  -- The one end-of-job event: whoever has work with this end (the catalogue, a callback, waiting
  -- children) reads it through its consumer group. The catalogue archives every terminal save
  -- (the caller passes ttl 0, so the record stays until archived); a callback and children need
  -- only the save that ended the job.
  if terminal == '1' then
    local cb = (callback == '1' and moved) and '1' or '0'
    local ch = (moved and redis.call('EXISTS', children_key) == 1) and '1' or '0'
    if archive == '1' or cb == '1' or ch == '1' then
      redis.call('XADD', ended_key, '*', 'id', id, 'v', new_version, 'state', state, 'ar', archive, 'cb', cb, 'ch', ch)
    end
  end
  -- Fair dispatch: a terminal save frees the job's dispatch room.
  if lib.is_terminal(state) then lib.fair_free(inflight_key, unadmitted_key, ledger_key, count_key, owner_key, id) end
  -- Only a terminal record carries a TTL (this save's EXPIRE, the archiver's, a restore's): a
  -- record leaving a terminal state loses it; one that was not terminal has none to lose.
  if ttl > 0 then
    redis.call('EXPIRE', job_key, ttl)
    if idem_key ~= '' then redis.call('EXPIRE', idem_key, ttl) end
  elseif lib.is_terminal(old) then
    redis.call('PERSIST', job_key)
    if idem_key ~= '' then redis.call('PERSIST', idem_key) end
  end
  return 1
end

-- save_result: keep fal's output JSON beside the record, only while the record exists (no
-- orphan key). Caller: JobStore.save_result.
--
-- KEYS[1] job  {p}:job:{id}  hash, field 'result' written
-- ARGV: the output JSON
-- Returns 1 stored, 0 the record is gone.
function ops.save_result()
  local job_key = KEYS[1]
  local result = ARGV[1]
  if redis.call('EXISTS', job_key) == 0 then return 0 end
  redis.call('HSET', job_key, 'result', result)
  return 1
end

-- crashed: one more step of the job crashed in a row; the streak is the record's `crashes`
-- field, counted only while the record exists (no partial record, and it goes with the record).
-- A step that runs to its end clears it (lease.release). Caller: JobStore.count_crash.
--
-- KEYS[1] job  {p}:job:{id}  hash, field 'crashes' incremented
-- ARGV: none
-- Returns the streak, or -1 when the record is gone.
function ops.crashed()
  local job_key = KEYS[1]
  if redis.call('EXISTS', job_key) == 0 then return -1 end
  return redis.call('HINCRBY', job_key, 'crashes', 1)
end

-- cancel: someone asked to cancel the job: the record's `cancel` field, set only while the
-- record exists (read with the record by a step's first round trip and by the lease keeper's
-- renewals). Cleared when the job runs again (JobStore.clear_cancel). Caller: JobStore.request_cancel.
--
-- KEYS[1] job  {p}:job:{id}  hash, field 'cancel' written
-- ARGV: none
-- Returns 1 asked, 0 the record is gone.
function ops.cancel()
  local job_key = KEYS[1]
  if redis.call('EXISTS', job_key) == 0 then return 0 end
  redis.call('HSET', job_key, 'cancel', '1')
  return 1
end

-- restore: an archived record written back unchanged, only if Redis holds none
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
function ops.restore()
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
end

-- forget_unpublished: delete a record whose broker message was never sent (Redis out of
-- memory), and what points at it, only while 'published' is still 0: a job that has a message
-- is never touched. Its batch loses the job in the same step (total, its state's count, its
-- estimate and any billed amount: exactly what the create and the saves since added), so the
-- counts stay equal to a recount. Every call before the batch's HINCRBYs deletes, and Redis
-- lets a script that has already written finish even at maxmemory, so this runs when Redis
-- refuses new writes (the reason it is called). Caller: JobStore.forget_unpublished.
--
-- KEYS[1] job         {p}:job:{id}            hash, read/deleted
-- KEYS[2] idem        the idempotency key or '' string, deleted if it names this job
-- KEYS[3] cancel      {p}:cancel:{id}          string, deleted
-- KEYS[4] created     {p}:created              zset, written
-- KEYS[5] created_t   {p}:created:t:{tenant}   zset, written (the tenant the caller read)
-- KEYS[6] batch       {p}:batch:{batch} or ''  hash, counts written (the batch the caller read)
-- KEYS[7] batch_jobs  {p}:batch:{batch}:jobs or ''  zset, written
-- ARGV: id, state template ({p}:state:HOLE)
-- Returns 1 removed, 0 the record is gone or has a broker message.
function ops.forget_unpublished()
  local job_key, idem_key, cancel_key, created_key, created_t_key, batch_key, batch_jobs_key = unpack(KEYS)
  local id, state_tpl = ARGV[1], ARGV[2]
  local cur = redis.call('HMGET', job_key, 'published', 'state', 'doc')
  if cur[1] and cur[1] ~= '0' then return 0 end
  if idem_key ~= '' and redis.call('GET', idem_key) == id then redis.call('DEL', idem_key) end
  if not cur[1] then return 0 end
  local state = cur[2] or 'queued'
  local est, billed = 0, 0
  local ok, d = pcall(cjson.decode, cur[3] or '')
  if ok and type(d) == 'table' then est, billed = lib.micro(d.cost_estimate), lib.micro(d.cost_billed) end
  redis.call('DEL', job_key, cancel_key)
  redis.call('ZREM', lib.key(state_tpl, state), id)
  redis.call('ZREM', created_key, id)
  redis.call('ZREM', created_t_key, id)
  if batch_key ~= '' then
    if redis.call('EXISTS', batch_key) == 1 then  -- never make a hash for a batch that is gone
      redis.call('HINCRBY', batch_key, 'n:' .. state, -1)
      redis.call('HINCRBY', batch_key, 'total', -1)
      if est ~= 0 then redis.call('HINCRBY', batch_key, 'est_micro', -est) end
      if billed ~= 0 and lib.is_terminal(state) then redis.call('HINCRBY', batch_key, 'billed_micro', -billed) end
    end
    redis.call('ZREM', batch_jobs_key, id)
  end
  return 1
end

-- index_owned: the per-tenant creation index's backfill. Each id enters its tenant's index
-- only if its record still exists, checked in this same step, so the backfill never leaves an
-- entry for a record deleted meanwhile. Caller: JobStore._index_rows.
--
-- KEYS[1] tenants  {p}:created:tenants  set, written
-- ARGV: job template ({p}:job:HOLE), tenant index template ({p}:created:t:HOLE),
--       then (id, creation score, tenant) triples
-- Returns how many ids were indexed.
function ops.index_owned()
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
end

-- forget_tenant: a tenant whose creation index is empty leaves {p}:created:tenants, unless
-- a create refilled the index in between (checked in this step: the create writes both in one
-- step). Caller: JobStore.prune_tenant_indexes.
--
-- KEYS[1] created_t  {p}:created:t:{tenant}  zset, read
-- KEYS[2] tenants    {p}:created:tenants     set, written
-- ARGV: tenant
-- Returns 1 if the tenant was removed.
function ops.forget_tenant()
  local created_t_key, tenants_key = KEYS[1], KEYS[2]
  local tenant = ARGV[1]
  if redis.call('ZCARD', created_t_key) == 0 then return redis.call('SREM', tenants_key, tenant) end
  return 0
end

local run = ops[op]
if not run then return redis.error_reply('falq job.lua: no operation ' .. tostring(op)) end
return run()
