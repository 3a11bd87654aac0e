-- limiter_confirm: log a POST leaving now, or say how long to wait first. Caller: Limiter.confirm.
--
-- The bucket spaces tokens evenly, but what fal counts is when a POST *arrives*, and a
-- starved worker may send late tokens in a clump. So each send is logged: :sending holds the
-- requests on their way (job -> send time), :sent the answered ones, scored by a time no
-- earlier than their arrival at fal (limiter_answered). A new send is allowed only while fewer
-- than rate + burst - 1 requests are on their way or were answered within the last 1000 ms.
-- Then no 1-second window at fal holds more: of any rate + 1 arrivals, the last to confirm
-- found each of the others on its way (counted) or answered (counted, unless its score - and so
-- its arrival - lies a full second before this confirm, and so before this arrival). The
-- argument uses intervals only, so fal's clock need not agree with Redis', and holds for a send
-- logged at any time before its arrival: limiter_acquire logs the send of the request it admits
-- when the check passes then (lib.log_send), and this script runs only for one it did not log.
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
-- ARGV[8]: job
-- Returns {0, now} (go: the POST may leave now) or {ms to wait first, 0}.
local L, o = lib.limiter_keys(KEYS, ARGV)
local job = ARGV[o]
local now = lib.now_ms()
local cfg = redis.call('HMGET', L.config, 'rate', 'burst')
local rate, burst = tonumber(cfg[1]) or 0, math.max(1, tonumber(cfg[2]) or 1)
if rate <= 0 then return {0, now} end
-- The job's own entry is there only if an earlier attempt died on its way: counting it until it
-- ages out errs on the safe side (a refusal logs nothing, so a retry after one finds none).
local logged, n_sending = lib.log_send(L, job, now, rate, burst)
if logged then return {0, now} end
local wait = 10000
local oldest = redis.call('ZRANGE', L.sent, 0, 0, 'WITHSCORES')
if #oldest > 0 then wait = tonumber(oldest[2]) + 1000 - now + 1 end
if n_sending > 0 then wait = math.min(wait, 5) end  -- an answer on its way frees a place soon
return {math.max(1, wait), 0}
