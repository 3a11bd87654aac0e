-- limiter_hold: the job's request is outstanding at fal (a redelivered job that follows it
-- again); count it (even above the cap: it *is* outstanding) and restart its lease.
-- Caller: Limiter.hold.
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
-- ARGV[8..]: job, endpoint, lease ms, tenant
-- Returns 1.
local L, o = lib.limiter_keys(KEYS, ARGV)
local job, ep, lease, tenant = ARGV[o], ARGV[o + 1], tonumber(ARGV[o + 2]), ARGV[o + 3]
if not tenant or tenant == '' then tenant = 'default' end
local expiry = lib.now_ms() + lease
redis.call('ZADD', L.slots, expiry, job)
redis.call('ZADD', lib.key(L.slots_ep, ep), expiry, job)
redis.call('ZADD', lib.key(L.slots_t, tenant), expiry, job)
-- The charge reserved at admission stays with the job until its release settles it.
local _, _, day, micro = lib.limiter_entry(L, job)
redis.call('HSET', L.ledger, job, lib.ledger_entry(tenant, ep, day, micro))
return 1
