-- limiter_renew: extend the slots of jobs whose job lease this process holds (lease values
-- start with "{owner}:"). Caller: Limiter.renew (the lease keeper's round).
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
-- ARGV[8..]: lease ms, owner, then the job ids
-- Returns 1 per renewed job, else 0 (the job has no slot any more, or another process follows
-- it now): the caller stops tracking it.
local L, o = lib.limiter_keys(KEYS, ARGV)
local lease, owner = tonumber(ARGV[o]), ARGV[o + 1] .. ':'
local now = lib.now_ms()
local out = {}
for i = o + 2, #ARGV do
  local job = ARGV[i]
  local holder = redis.call('GET', lib.key(L.lease, job))
  local mine = holder and string.sub(holder, 1, #owner) == owner
  if mine and redis.call('ZSCORE', L.slots, job) then
    redis.call('ZADD', L.slots, 'XX', now + lease, job)
    local tn, ep = lib.limiter_entry(L, job)
    if tn then
      if ep ~= '' then redis.call('ZADD', lib.key(L.slots_ep, ep), 'XX', now + lease, job) end
      redis.call('ZADD', lib.key(L.slots_t, tn), 'XX', now + lease, job)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
