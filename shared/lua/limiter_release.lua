-- limiter_release: the request is no longer outstanding. With refund, the reservation made at
-- admission is given back (fal never accepted the request). The job's fair-dispatch room is
-- freed in the same step (falq.shared.fairshare.scheduler): the next job can go. Caller: Limiter.release.
--
-- The limiter block, first in every limiter script (falq.shared.limits.store.Limiter, unpacked by
-- lib.limiter_keys), for {b} = {p}:limits:{kid} (kid: short sha256 of the fal key):
-- KEYS[1] {b}:slots  zset job -> slot expiry (ms)     KEYS[2] {b}:slot_ep  hash job -> endpoint
-- KEYS[3] {b}:slot_t hash job -> tenant               KEYS[4] {b}:tat  GCRA next token time (ms)
-- KEYS[5] {b}:charges hash job -> day|micro|tenant    KEYS[6] {b}:paused  string (TTL): why paused
-- KEYS[7..10] {b}:waiting:{interactive,bulk,budget,locked}  zset job -> expiry: who waits, why
-- KEYS[11] {b}:sending  KEYS[12] {b}:sent (zsets: POSTs on their way / answered)
-- KEYS[13] {p}:limits:config  KEYS[14] {p}:tenants  KEYS[15] {p}:fair:unadmitted
-- KEYS[16] {p}:inflight  KEYS[17] {p}:fair:owner  KEYS[18] {p}:fair:count
-- ARGV[1..7] templates: {b}:slots:ep:HOLE, {b}:slots:t:HOLE, {b}:tat:t:HOLE, {p}:spend:HOLE,
--   {p}:tspend:HOLE:HOLE, {p}:fair:paused:HOLE, {p}:lease:HOLE
-- ARGV[8..]: job, refund ('1'/'0')
-- Returns 1 if the job held a slot.
local L, o = lib.limiter_keys(KEYS, ARGV)
local job, refund = ARGV[o], ARGV[o + 1] == '1'
lib.fair_free(L.inflight, L.unadmitted, L.fair_owner, L.fair_count, job)
local ep = redis.call('HGET', L.slot_ep, job)
if ep then redis.call('ZREM', lib.key(L.slots_ep, ep), job) end
redis.call('HDEL', L.slot_ep, job)
local tn = redis.call('HGET', L.slot_t, job)
if tn then redis.call('ZREM', lib.key(L.slots_t, tn), job) end
redis.call('HDEL', L.slot_t, job)
local freed = redis.call('ZREM', L.slots, job)
local charge = redis.call('HGET', L.charges, job)
if charge then
  redis.call('HDEL', L.charges, job)
  if refund then
    -- 'day|micro' (before tenants) or 'day|micro|tenant': the tenant's counter is refunded too.
    local day, micro, who = string.match(charge, '^([^|]*)|(%d+)|?(.*)$')
    if day then
      redis.call('DECRBY', lib.key(L.spend, day), micro)
      if who and who ~= '' then redis.call('DECRBY', lib.key(L.tspend, day, who), micro) end
    end
  end
end
return freed
