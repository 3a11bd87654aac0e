-- limiter_release: the request is no longer outstanding. With refund, the reservation made at
-- admission is given back (fal never accepted the request). The job's fair-dispatch room is
-- freed in the same step (falq.shared.fairshare.scheduler): the next job can go. Caller: Limiter.release.
--
-- The limiter block, first in every limiter script (falq.shared.limits.store.Limiter, unpacked by
-- lib.limiter_keys), for {b} = {p}:limits:{kid} (kid: short sha256 of the fal key):
-- KEYS[1] {b}:slots  zset job -> slot expiry (ms)     KEYS[2] {p}:ledger  hash job -> tenant|endpoint|day|micro
-- KEYS[3] {b}:tat  GCRA next token time (ms)          KEYS[4] {b}:paused  string (TTL): why paused
-- KEYS[5..8] {b}:waiting:{interactive,bulk,budget,locked}  zset job -> expiry: who waits, why
-- KEYS[9] {b}:sending  KEYS[10] {b}:sent (zsets: POSTs on their way / answered)
-- KEYS[11] {p}:limits:config  KEYS[12] {p}:tenants  KEYS[13] {p}:fair:unadmitted
-- KEYS[14] {p}:inflight  KEYS[15] {p}:fair:count
-- KEYS[16..19] written before the ledger, only read and emptied (lib.limiter_entry):
--   {b}:slot_ep, {b}:slot_t, {b}:charges, {p}:fair:owner
-- ARGV[1..7] templates: {b}:slots:ep:HOLE, {b}:slots:t:HOLE, {b}:tat:t:HOLE, {p}:spend:HOLE,
--   {p}:tspend:HOLE:HOLE, {p}:fair:paused:HOLE, {p}:lease:HOLE
-- KEYS[20..21] {p}:fair:active:{interactive,bulk}: read (does any tenant have a ready job?)
-- ARGV[8..]: job, refund ('1'/'0')
-- Returns {1 if the job held a slot, how many of the two lanes have a tenant with a ready job}.
local L, o = lib.limiter_keys(KEYS, ARGV)
local job, refund = ARGV[o], ARGV[o + 1] == '1'
local tenant, ep, day, micro = lib.limiter_entry(L, job)
-- The dispatch room (lib.fair_free's steps, with the entry already read).
redis.call('ZREM', L.unadmitted, job)
if redis.call('ZREM', L.inflight, job) == 1 then
  local owner = tenant
  if not owner then
    owner = redis.call('HGET', L.legacy.owner, job)
    redis.call('HDEL', L.legacy.owner, job)
  end
  if owner then redis.call('HINCRBY', L.fair_count, owner, -1) end
end
if tenant then
  redis.call('HDEL', L.ledger, job)
  if ep ~= '' then redis.call('ZREM', lib.key(L.slots_ep, ep), job) end
  redis.call('ZREM', lib.key(L.slots_t, tenant), job)
  if refund and micro and micro > 0 and day and day ~= '' then
    redis.call('DECRBY', lib.key(L.spend, day), micro)
    redis.call('DECRBY', lib.key(L.tspend, day, tenant), micro)
  end
end
return {redis.call('ZREM', L.slots, job), redis.call('EXISTS', KEYS[20], KEYS[21])}
