-- job_save: compare-and-set save of a job record (its input only when it changed), and
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
--       result (fal's output JSON, kept beside the record from this save on; '' none)
-- Returns 1 saved (also when this very save was already applied), 0 version conflict, -1 record
-- gone, -2 the lease is no longer the caller's.
local job_key, idem_key, lease_key, batch_key, children_key, ended_key, state_key, inflight_key, unadmitted_key,
      ledger_key, count_key, owner_key = unpack(KEYS)
local expected, new_version, state, doc, ts, id, ttl, callback, token, billed, terminal, state_tpl,
      archive, input, drop_result, result = unpack(ARGV)
ttl = tonumber(ttl)

local cur = redis.call('HMGET', job_key, 'version', 'state')
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
