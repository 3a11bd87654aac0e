-- limiter_answered: the job's POST came back (accepted or not). The caller computes the score
-- = confirm time + the local time from asking to confirm until the answer arrived: an upper
-- bound of the arrival at fal, on Redis' clock, known without waiting for this call (which may
-- come later, after the record was saved). Caller: Limiter.answered.
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
-- ARGV[8..]: job, score (ms)
-- Returns how many of the two lanes have a tenant with a ready job (0: a dispatch finds nothing).
local L, o = lib.limiter_keys(KEYS, ARGV)
local job, score = ARGV[o], tonumber(ARGV[o + 1])
if redis.call('ZREM', L.sending, job) == 1 then
  redis.call('ZADD', L.sent, score, job .. '@' .. score)
  redis.call('PEXPIRE', L.sent, 20000)
end
return redis.call('EXISTS', KEYS[20], KEYS[21])
