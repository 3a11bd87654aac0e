-- limiter_state: what `falq limits show` prints for one fal key (after the housekeeping).
-- Caller: Limiter.state.
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
-- ARGV[8..]: none
-- Returns {now_ms, today, live slots, waiting interactive, bulk, budget, locked, pause ttl ms,
--          pause reason, tat, spend today}.
local L = lib.limiter_keys(KEYS, ARGV)
local now = lib.now_ms()
local today = lib.ymd(math.floor(now / 86400000))
lib.expire_slots(L, now)
lib.expire_waiting(L, now)
redis.call('ZREMRANGEBYSCORE', L.sending, '-inf', now - 10000)  -- senders dead for 10 s (lib.log_send)
local W = L.waiting
return {now, today, redis.call('ZCARD', L.slots), redis.call('ZCARD', W.interactive),
        redis.call('ZCARD', W.bulk), redis.call('ZCARD', W.budget), redis.call('ZCARD', W.locked),
        redis.call('PTTL', L.paused), redis.call('GET', L.paused) or '',
        redis.call('GET', L.tat) or '', redis.call('GET', lib.key(L.spend, today)) or '0'}
