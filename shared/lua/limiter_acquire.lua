-- limiter_acquire: admit one job's fal request, or say why it waits. Checks, in order: a
-- key-wide pause, the daily budget (global, then the tenant's), interactive before bulk, the
-- outstanding-request caps (key, endpoint, tenant), the token bucket (GCRA) and the tenant's
-- own rate; admitted, it holds a slot and reserves the cost. Caller: Limiter.acquire.
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
-- ARGV[8..]: job, endpoint, lane, cost (micro-dollars), lease ms, headroom, the config defaults
--   (rate, burst, max_outstanding, max_outstanding_per_endpoint, budget_daily), tenant,
--   tenant pause ms, strict ('1': make limiter_confirm's send check for the admitted POST now)
-- Returns {status, a, b[, c]}:
--   'ok', delay_ms (sleep this long, then POST: the token is reserved for then), grant time ms,
--   the Redis time (ms) the send check passed and logged the POST, as limiter_confirm's answer
--   (0: not logged; ask limiter_confirm before the POST)
--   'locked', pause ttl ms, 0 | 'budget', 0, 0 | 'tenant_budget', 0, 0 (only this tenant
--   pauses; it is also marked paused for fair dispatch, for the pause ms)
--   'priority' | 'slots' | 'endpoint' | 'tenant' | 'rate', wait_ms (minimum), spread_ms
local L, o = lib.limiter_keys(KEYS, ARGV)
local job, ep, lane, cost, lease, headroom = ARGV[o], ARGV[o + 1], ARGV[o + 2], tonumber(ARGV[o + 3]),
  tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
local defaults = {ARGV[o + 6], ARGV[o + 7], ARGV[o + 8], ARGV[o + 9], ARGV[o + 10]}
local tenant, tenant_pause_ms, strict = ARGV[o + 11], tonumber(ARGV[o + 12]), ARGV[o + 13] == '1'
if not tenant or tenant == '' then tenant = 'default' end
local now = lib.now_ms()
local today = lib.ymd(math.floor(now / 86400000))

local names = {'rate', 'burst', 'max_outstanding', 'max_outstanding_per_endpoint', 'budget_daily'}
local cfg = redis.call('HMGET', L.config, unpack(names))
for i = 1, #names do
  -- The first worker to need a value seeds it from its environment; from then on the
  -- hash is the one truth every worker reads (changed at runtime by `falq limits set`).
  if not cfg[i] then redis.call('HSETNX', L.config, names[i], defaults[i]); cfg[i] = defaults[i] end
end
local rate, burst, max_out = tonumber(cfg[1]) or 0, math.max(1, tonumber(cfg[2]) or 1), tonumber(cfg[3]) or 0
local ok_caps, caps = pcall(cjson.decode, cfg[4])
if not ok_caps or type(caps) ~= 'table' then caps = {} end
local budget = tonumber(cfg[5])  -- nil when 'none'
-- The tenant's own caps, from its JSON in {p}:tenants (absent or null: no cap of its own).
local t_max, t_rate, t_budget = nil, nil, nil
local t_raw = redis.call('HGET', L.tenants, tenant)
if t_raw then
  local ok_t, tc = pcall(cjson.decode, t_raw)
  if ok_t and type(tc) == 'table' then
    t_max, t_rate, t_budget = tonumber(tc.max_outstanding), tonumber(tc.rate), tonumber(tc.budget_usd)
  end
end
if t_max and t_max <= 0 then t_max = nil end
if t_rate and t_rate <= 0 then t_rate = nil end
local t_slots = lib.key(L.slots_t, tenant)
local W = L.waiting

-- The waiting sets a job can be in: its own lane's (a job's lane never changes), budget, locked.
local mine = {lane, 'budget', 'locked'}
local function wait_as(why, ttl)
  for _, w in ipairs(mine) do
    if w ~= why then redis.call('ZREM', W[w], job) end
  end
  redis.call('ZADD', W[why], now + ttl, job)
end

-- 1. A key-wide pause (fal answered 402 / locked) stops everyone.
local pttl = redis.call('PTTL', L.paused)
if pttl > 0 then
  wait_as('locked', pttl + 60000)
  return {'locked', pttl, 0}
end

-- 2. The daily budget, checked before anything is taken so a refused job holds nothing.
local spend_key = lib.key(L.spend, today)
if budget and cost > 0 then
  local spent = tonumber(redis.call('GET', spend_key) or '0')
  if spent + cost > math.floor(budget * 1000000 + 0.5) then
    wait_as('budget', 120000)
    return {'budget', 0, 0}
  end
end
-- 2b. The tenant's own daily budget: over it, only this tenant pauses.
local tspend_key = lib.key(L.tspend, today, tenant)
if t_budget and cost > 0 then
  local tspent = tonumber(redis.call('GET', tspend_key) or '0')
  if tspent + cost > math.floor(t_budget * 1000000 + 0.5) then
    wait_as('budget', 120000)
    redis.call('SET', lib.key(L.fair_paused, tenant), '1', 'PX', math.max(1000, tenant_pause_ms or 30000))
    return {'tenant_budget', 0, 0}
  end
end

-- Emission interval of the bucket, in ms; paced `headroom` below the rate (see limits.py).
local interval = 0
if rate > 0 then interval = 1000 * (1 + headroom) / rate end
local horizon = math.min(1000, math.max(200, 3 * interval))
-- Slots are counted by live score, like the endpoint's and the tenant's (a dead worker's slot
-- stops counting when it expires; limiter_state's housekeeping frees its memory).
local held_until = redis.call('ZSCORE', L.slots, job)
local held = held_until and tonumber(held_until) > now
local ep_slots = lib.key(L.slots_ep, ep)

if not held then
  -- 3. Interactive before bulk: bulk waits while any interactive job is waiting.
  local n_int = lib.live(W.interactive, now)
  if lane == 'bulk' and n_int > 0 then
    local n = lib.live(W.bulk, now) + 1
    local spread = math.min(30000, math.max(500, n * math.max(interval, 50)))
    wait_as('bulk', 200 + spread + 5000)
    return {'priority', 200, spread}
  end
  -- 4. Requests outstanding at fal: per key, then per endpoint. Slot waits back off over a
  -- spread that grows with the number of waiters, so polling stays about 40 calls/s in all.
  local cap_ep = tonumber(caps[ep])
  local out_full = max_out > 0 and lib.live(L.slots, now) >= max_out
  local ep_full = cap_ep and lib.live(ep_slots, now) >= cap_ep
  local t_full = t_max and lib.live(t_slots, now) >= t_max
  if out_full or ep_full or t_full then
    local n = lib.live(W[lane], now) + 1
    local spread = math.min(10000, math.max(500, n * 25))
    -- An interactive job waiting only on its endpoint's or its tenant's cap does not hold bulk back.
    if out_full then wait_as(lane, 200 + spread + 5000) else redis.call('ZREM', W.interactive, job) end
    return {out_full and 'slots' or (ep_full and 'endpoint' or 'tenant'), 200, spread}
  end
end

-- 5. The token bucket, as GCRA: a token may be reserved up to `horizon` ms ahead, so the
-- next token is always claimed before it is due and the rate is used in full without
-- callers polling at token granularity.
local delay, tat = 0, now
if rate > 0 then
  tat = math.max(tonumber(redis.call('GET', L.tat) or '0'), now)
  local allow_at = tat - (burst - 1) * interval
  delay = math.max(0, allow_at - now)
  if delay > horizon then
    local n = lib.live(W[lane], now) + 1
    -- about 4 callers per token interval: the next token is always claimed in time, and a
    -- job refused while the backlog was long still comes back before the backlog is gone
    local spread = math.min(30000, math.max(100, n * interval / 2))
    wait_as(lane, delay + spread + 5000)
    return {'rate', math.floor(delay - horizon), math.floor(spread)}
  end
end
-- 5b. The tenant's own rate, a GCRA of its own (burst 1), checked before either token is
-- taken so a refused job reserves nothing. A job waiting on its tenant's rate does not hold
-- back other tenants' bulk work.
if t_rate then
  local t_tat_key = lib.key(L.tat_t, tenant)
  local t_interval = 1000 * (1 + headroom) / t_rate
  local t_tat = math.max(tonumber(redis.call('GET', t_tat_key) or '0'), now)
  local t_delay = math.max(0, t_tat - now)
  local t_horizon = math.min(1000, math.max(200, 3 * t_interval))
  if t_delay > t_horizon then
    redis.call('ZREM', W.interactive, job)
    return {'rate', math.floor(t_delay - t_horizon), math.floor(math.min(30000, math.max(100, t_interval / 2)))}
  end
  delay = math.max(delay, t_delay)
  redis.call('SET', t_tat_key, tostring(t_tat + t_interval), 'PX', math.floor(t_tat + t_interval - now + 60000))
end
if rate > 0 then
  redis.call('SET', L.tat, tostring(tat + interval), 'PX', math.floor(tat + interval - now + 60000))
end

-- Admitted: hold the slot (idempotent for a job that already holds one), reserve the cost, and
-- write the job's ledger entry with its charge (without a cost, a charge still unsettled stays).
local expiry = now + delay + lease
redis.call('ZADD', L.slots, expiry, job)
redis.call('ZADD', ep_slots, expiry, job)
redis.call('ZADD', t_slots, expiry, job)
local day, charge
if cost > 0 then
  day, charge = today, cost
  -- The day's first charge creates the key: its expiry is set then, once (only this script
  -- creates spend keys; a refund decrements a key its admission created).
  if redis.call('INCRBY', spend_key, cost) == cost then redis.call('EXPIRE', spend_key, 40 * 86400) end
  if redis.call('INCRBY', tspend_key, cost) == cost then redis.call('EXPIRE', tspend_key, 40 * 86400) end
else
  local _, _, d, m = lib.ledger_get(L.ledger, job)
  day, charge = d, m
end
redis.call('HSET', L.ledger, job, lib.ledger_entry(tenant, ep, day, charge))
for _, w in ipairs(mine) do redis.call('ZREM', W[w], job) end
-- Fair dispatch (falq.shared.fairshare.scheduler): the job no longer waits for admission.
redis.call('ZREM', L.unadmitted, job)
-- The send check, made now for the POST this admission lets go (a round trip fewer): logged
-- before the POST leaves, it only counts the request for longer. Without a rate, nothing to log.
local sent_at = 0
if strict and (rate <= 0 or lib.log_send(L, job, now, rate, burst)) then sent_at = now end
return {'ok', math.floor(delay), math.floor(now + delay), sent_at}
