-- limiter_hold: the job's request is outstanding at fal (a redelivered job that follows it
-- again); count it (even above the cap: it *is* outstanding) and restart its lease.
-- Caller: Limiter.hold.
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
-- ARGV[8..]: job, endpoint, lease ms, tenant
-- Returns 1.
local L, o = lib.limiter_keys(KEYS, ARGV)
local job, ep, lease, tenant = ARGV[o], ARGV[o + 1], tonumber(ARGV[o + 2]), ARGV[o + 3]
if not tenant or tenant == '' then tenant = 'default' end
local expiry = lib.now_ms() + lease
redis.call('ZADD', L.slots, expiry, job)
redis.call('HSET', L.slot_ep, job, ep)
redis.call('ZADD', lib.key(L.slots_ep, ep), expiry, job)
redis.call('ZADD', lib.key(L.slots_t, tenant), expiry, job)
redis.call('HSET', L.slot_t, job, tenant)
return 1
