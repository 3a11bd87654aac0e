-- job_forget_unpublished: delete a record whose broker message was never sent (Redis out of
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
