-- limiter: one fal key's limiter: the admission (budget, caps, token bucket, slot), the send log that
-- keeps any second at fal within the rate, and the slots of requests outstanding at fal
-- (falq.shared.limits.store; docs/internals/limiter.md).
-- Owner: Limiter; operations: acquire, confirm, answered, hold, release, renew, state.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- acquire: admit one job's fal request, or say why it waits. Checks, in order: a
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
function ops.acquire()
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
end

-- confirm: log a POST leaving now, or say how long to wait first. Caller: Limiter.confirm.
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
function ops.confirm()
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
  local oldest = redis.call('ZRANGEBYSCORE', L.sent, '(' .. (now - 1000), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #oldest > 0 then wait = tonumber(oldest[2]) + 1000 - now + 1 end
  if n_sending > 0 then wait = math.min(wait, 5) end  -- an answer on its way frees a place soon
  return {math.max(1, wait), 0}
end

-- answered: the job's POST came back (accepted or not). The caller computes the score
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
function ops.answered()
  local L, o = lib.limiter_keys(KEYS, ARGV)
  local job, score = ARGV[o], tonumber(ARGV[o + 1])
  if redis.call('ZREM', L.sending, job) == 1 then
    redis.call('ZADD', L.sent, score, job .. '@' .. score)
  end
  return redis.call('EXISTS', KEYS[20], KEYS[21])
end

-- hold: the job's request is outstanding at fal (a redelivered job that follows it
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
function ops.hold()
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
end

-- release: the request is no longer outstanding. With refund, the reservation made at
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
function ops.release()
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
end

-- renew: extend the slots of jobs whose job lease this process holds (lease values
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
function ops.renew()
  local L, o = lib.limiter_keys(KEYS, ARGV)
  local lease, owner = tonumber(ARGV[o]), ARGV[o + 1] .. ':'
  local now = lib.now_ms()
  local out = {}
  for i = o + 2, #ARGV do
    local job = ARGV[i]
    local holder = redis.call('GET', lib.key(L.lease, job))
    local mine = holder and string.sub(holder, 1, #owner) == owner
    -- XX CH: 1 when the slot was there and moved (a second renewal in the same millisecond
    -- moves nothing: then the slot's presence is asked).
    local expiry = now + lease
    if mine and (redis.call('ZADD', L.slots, 'XX', 'CH', expiry, job) == 1 or redis.call('ZSCORE', L.slots, job)) then
      local tn, ep = lib.limiter_entry(L, job)
      if tn then
        if ep ~= '' then redis.call('ZADD', lib.key(L.slots_ep, ep), 'XX', expiry, job) end
        redis.call('ZADD', lib.key(L.slots_t, tn), 'XX', expiry, job)
      end
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
  return out
end

-- state: what `falq limits show` prints for one fal key (after the housekeeping).
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
function ops.state()
  local L = lib.limiter_keys(KEYS, ARGV)
  local now = lib.now_ms()
  local today = lib.ymd(math.floor(now / 86400000))
  lib.expire_slots(L, now)
  lib.expire_waiting(L, now)
  -- The send log is counted by score (lib.log_send), so its old entries are only memory: senders
  -- dead for 10 s, answers older than the 1 s window.
  redis.call('ZREMRANGEBYSCORE', L.sending, '-inf', now - 10000)
  redis.call('ZREMRANGEBYSCORE', L.sent, '-inf', now - 1000)
  local W = L.waiting
  return {now, today, redis.call('ZCARD', L.slots), redis.call('ZCARD', W.interactive),
          redis.call('ZCARD', W.bulk), redis.call('ZCARD', W.budget), redis.call('ZCARD', W.locked),
          redis.call('PTTL', L.paused), redis.call('GET', L.paused) or '',
          redis.call('GET', L.tat) or '', redis.call('GET', lib.key(L.spend, today)) or '0'}
end

local run = ops[op]
if not run then return redis.error_reply('falq limiter.lua: no operation ' .. tostring(op)) end
return run()
