"""The Lua scripts behind :mod:`falq.shared.limits`. Each runs atomically inside Redis.

Every script takes the time from ``redis.call('TIME')``: hosts with skewed clocks then
agree on token times, lease expiry and the UTC day the spend is counted in.

Keys are built inside the scripts from ``ARGV[1]`` (the key prefix) and ``ARGV[2]`` (the
key id), as :mod:`falq.shared.jobstore` does: falq runs on one Redis, never a cluster.

Layout under ``{p}:limits:{kid}`` (``kid`` = short sha256 of the fal key):

* ``:slots`` -- ZSET job id -> lease expiry (ms): requests outstanding at fal.
* ``:slots:ep:{endpoint}`` -- the same, per endpoint; ``:slot_ep`` hash job id -> endpoint.
* ``:slots:t:{tenant}`` -- the same, per tenant; ``:slot_t`` hash job id -> tenant.
* ``:tat:t:{tenant}`` -- a tenant's own token bucket (its ``rate``), as ``:tat``.
* ``:tat`` -- the token bucket as GCRA: the "theoretical arrival time" of the next token (ms).
* ``:waiting:{interactive|bulk|budget|locked}`` -- ZSET job id -> expiry: who waits, and why.
* ``:charges`` -- hash job id -> ``day|micro-dollars`` reserved for its current attempt.
* ``:paused`` -- string with a TTL: why submissions for this key are paused (402, locked).

Shared: ``{p}:limits:config`` (hash, runtime configuration), ``{p}:spend:{yyyy-mm-dd}``
(integer micro-dollars reserved that UTC day) and ``{p}:tspend:{yyyy-mm-dd}:{tenant}`` (the
same for one tenant). A tenant's own caps (``max_outstanding``, ``rate``, ``budget_usd``) are
read from its JSON in ``{p}:tenants`` on every admission, so ``falq tenants set`` takes effect
at once; they hold on top of the global limits.
"""

from __future__ import annotations

from falq.shared.lua_common import FAIR_FREE, YMD

# Shared prelude: time, key names, config (seeded from the caller's defaults), housekeeping.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, kid = ARGV[1], ARGV[2]
local base = prefix .. ':limits:' .. kid
local slots, slot_ep, slot_t = base .. ':slots', base .. ':slot_ep', base .. ':slot_t'

-- Civil date from days since 1970-01-01 (H. Hinnant's algorithm): Redis Lua has no os.date.
""" + YMD + FAIR_FREE + """local today = ymd(math.floor(now / 86400000))

-- Drop expired slots (a dead worker's slots end here) together with their endpoint entries.
local function expire_slots()
  local dead = redis.call('ZRANGEBYSCORE', slots, '-inf', now)
  for _, id in ipairs(dead) do
    local ep = redis.call('HGET', slot_ep, id)
    if ep then redis.call('ZREM', base .. ':slots:ep:' .. ep, id) end
    redis.call('HDEL', slot_ep, id)
    local tn = redis.call('HGET', slot_t, id)
    if tn then redis.call('ZREM', base .. ':slots:t:' .. tn, id) end
    redis.call('HDEL', slot_t, id)
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', slots, '-inf', now) end
  for _, why in ipairs({'interactive', 'bulk', 'budget', 'locked'}) do
    redis.call('ZREMRANGEBYSCORE', base .. ':waiting:' .. why, '-inf', now)
  end
end
"""

# acquire(prefix, kid, job, endpoint, lane, cost_micro, lease_ms, headroom,
#         default rate, burst, max_outstanding, endpoint caps JSON, budget_daily,
#         tenant, tenant pause ms)
# -> {status, a, b}:
#   'ok', delay_ms (sleep this long, then POST: the token is reserved for then), grant time ms
#   'locked', pause ttl ms, 0 | 'budget', 0, 0 | 'tenant_budget', 0, 0 (only this tenant pauses;
#   it is also marked paused for the fair dispatcher, ``{p}:fair:paused:{tenant}``, for the pause ms)
#   'priority' | 'slots' | 'endpoint' | 'tenant' | 'rate', wait_ms (minimum), spread_ms (add uniform 0..spread)
ACQUIRE = _PRELUDE + """
local job, ep, lane, cost, lease = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local headroom = tonumber(ARGV[8])
local cfg_key = prefix .. ':limits:config'
local names = {'rate', 'burst', 'max_outstanding', 'max_outstanding_per_endpoint', 'budget_daily'}
local cfg = redis.call('HMGET', cfg_key, unpack(names))
for i = 1, #names do
  -- The first worker to need a value seeds it from its environment; from then on the
  -- hash is the one truth every worker reads (changed at runtime by `falq limits set`).
  if not cfg[i] then redis.call('HSETNX', cfg_key, names[i], ARGV[8 + i]); cfg[i] = ARGV[8 + i] end
end
local rate, burst, max_out = tonumber(cfg[1]) or 0, math.max(1, tonumber(cfg[2]) or 1), tonumber(cfg[3]) or 0
local ok_caps, caps = pcall(cjson.decode, cfg[4])
if not ok_caps or type(caps) ~= 'table' then caps = {} end
local budget = tonumber(cfg[5])  -- nil when 'none'
local W = base .. ':waiting:'
-- The tenant's own caps, from its JSON in {p}:tenants (absent or null: no cap of its own).
local tenant = ARGV[14] or 'default'
if tenant == '' then tenant = 'default' end
local t_max, t_rate, t_budget = nil, nil, nil
local t_raw = redis.call('HGET', prefix .. ':tenants', tenant)
if t_raw then
  local ok_t, tc = pcall(cjson.decode, t_raw)
  if ok_t and type(tc) == 'table' then
    t_max, t_rate, t_budget = tonumber(tc.max_outstanding), tonumber(tc.rate), tonumber(tc.budget_usd)
  end
end
if t_max and t_max <= 0 then t_max = nil end
if t_rate and t_rate <= 0 then t_rate = nil end
local t_slots = base .. ':slots:t:' .. tenant

local function wait_as(why, ttl)
  for _, w in ipairs({'interactive', 'bulk', 'budget', 'locked'}) do
    if w ~= why then redis.call('ZREM', W .. w, job) end
  end
  redis.call('ZADD', W .. why, now + ttl, job)
end

-- 1. A key-wide pause (fal answered 402 / locked) stops everyone.
local pttl = redis.call('PTTL', base .. ':paused')
if pttl > 0 then
  wait_as('locked', pttl + 60000)
  return {'locked', pttl, 0}
end
expire_slots()

-- 2. The daily budget, checked before anything is taken so a refused job holds nothing.
local spend_key = prefix .. ':spend:' .. today
if budget and cost > 0 then
  local spent = tonumber(redis.call('GET', spend_key) or '0')
  if spent + cost > math.floor(budget * 1000000 + 0.5) then
    wait_as('budget', 120000)
    return {'budget', 0, 0}
  end
end
-- 2b. The tenant's own daily budget: over it, only this tenant pauses.
local tspend_key = prefix .. ':tspend:' .. today .. ':' .. tenant
if t_budget and cost > 0 then
  local tspent = tonumber(redis.call('GET', tspend_key) or '0')
  if tspent + cost > math.floor(t_budget * 1000000 + 0.5) then
    wait_as('budget', 120000)
    redis.call('SET', prefix .. ':fair:paused:' .. tenant, '1', 'PX', math.max(1000, tonumber(ARGV[15]) or 30000))
    return {'tenant_budget', 0, 0}
  end
end

-- Emission interval of the bucket, in ms; paced `headroom` below the rate (see limits.py).
local interval = 0
if rate > 0 then interval = 1000 * (1 + headroom) / rate end
local horizon = math.min(1000, math.max(200, 3 * interval))
local held = redis.call('ZSCORE', slots, job)

if not held then
  -- 3. Interactive before bulk: bulk waits while any interactive job is waiting.
  local n_int = redis.call('ZCARD', W .. 'interactive')
  if lane == 'bulk' and n_int > 0 then
    local n = redis.call('ZCARD', W .. 'bulk') + 1
    local spread = math.min(30000, math.max(500, n * math.max(interval, 50)))
    wait_as('bulk', 200 + spread + 5000)
    return {'priority', 200, spread}
  end
  -- 4. Requests outstanding at fal: per key, then per endpoint. Slot waits back off over a
  -- spread that grows with the number of waiters, so polling stays about 40 calls/s in all.
  local cap_ep = tonumber(caps[ep])
  local out_full = max_out > 0 and redis.call('ZCARD', slots) >= max_out
  local ep_full = cap_ep and redis.call('ZCARD', base .. ':slots:ep:' .. ep) >= cap_ep
  local t_full = t_max and redis.call('ZCARD', t_slots) >= t_max
  if out_full or ep_full or t_full then
    local n = redis.call('ZCARD', W .. lane) + 1
    local spread = math.min(10000, math.max(500, n * 25))
    -- An interactive job waiting only on its endpoint's or its tenant's cap does not hold bulk back.
    if out_full then wait_as(lane, 200 + spread + 5000) else redis.call('ZREM', W .. 'interactive', job) end
    return {out_full and 'slots' or (ep_full and 'endpoint' or 'tenant'), 200, spread}
  end
end

-- 5. The token bucket, as GCRA: a token may be reserved up to `horizon` ms ahead, so the
-- next token is always claimed before it is due and the rate is used in full without
-- callers polling at token granularity.
local delay = 0
if rate > 0 then
  local tat = math.max(tonumber(redis.call('GET', base .. ':tat') or '0'), now)
  local allow_at = tat - (burst - 1) * interval
  delay = math.max(0, allow_at - now)
  if delay > horizon then
    local n = redis.call('ZCARD', W .. lane) + 1
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
local t_interval, t_tat = 0, 0
if t_rate then
  t_interval = 1000 * (1 + headroom) / t_rate
  t_tat = math.max(tonumber(redis.call('GET', base .. ':tat:t:' .. tenant) or '0'), now)
  local t_delay = math.max(0, t_tat - now)
  local t_horizon = math.min(1000, math.max(200, 3 * t_interval))
  if t_delay > t_horizon then
    redis.call('ZREM', W .. 'interactive', job)
    return {'rate', math.floor(t_delay - t_horizon), math.floor(math.min(30000, math.max(100, t_interval / 2)))}
  end
  delay = math.max(delay, t_delay)
  redis.call('SET', base .. ':tat:t:' .. tenant, tostring(t_tat + t_interval), 'PX',
             math.floor(t_tat + t_interval - now + 60000))
end
if rate > 0 then
  local tat = math.max(tonumber(redis.call('GET', base .. ':tat') or '0'), now)
  redis.call('SET', base .. ':tat', tostring(tat + interval), 'PX', math.floor(tat + interval - now + 60000))
end

-- Admitted: hold the slot (idempotent for a job that already holds one), reserve the cost.
local expiry = now + delay + lease
redis.call('ZADD', slots, expiry, job)
redis.call('HSET', slot_ep, job, ep)
redis.call('ZADD', base .. ':slots:ep:' .. ep, expiry, job)
redis.call('ZADD', t_slots, expiry, job)
redis.call('HSET', slot_t, job, tenant)
if cost > 0 then
  redis.call('INCRBY', spend_key, cost)
  redis.call('EXPIRE', spend_key, 40 * 86400)
  redis.call('INCRBY', tspend_key, cost)
  redis.call('EXPIRE', tspend_key, 40 * 86400)
  redis.call('HSET', base .. ':charges', job, today .. '|' .. cost .. '|' .. tenant)
end
for _, w in ipairs({'interactive', 'bulk', 'budget', 'locked'}) do redis.call('ZREM', W .. w, job) end
-- Fair dispatch (falq.shared.fairshare): the job no longer waits for admission.
redis.call('ZREM', prefix .. ':fair:unadmitted', job)
return {'ok', math.floor(delay), math.floor(now + delay)}
"""

# confirm(prefix, kid, job) -> {0, now} (go: the POST may leave now) or {ms to wait first, 0}.
#
# The bucket spaces tokens evenly, but what fal counts is when a POST *arrives*, and a
# starved worker may send late tokens in a clump. So each send is logged: `:sending` holds
# the requests on their way (job -> send time), `:sent` the answered ones, scored by a time
# no earlier than their arrival at fal (see `answered`). A new send is allowed only while
# fewer than rate + burst - 1 requests are on their way or were answered within the last
# 1000 ms. Then no 1-second window at fal holds more: of any rate + 1 arrivals, the last to
# confirm found each of the others on its way (counted) or answered (counted, unless its
# score - and so its arrival - lies a full second before this confirm, and so before this
# arrival). The argument uses intervals only, so fal's clock need not agree with Redis'.
CONFIRM = _PRELUDE + """
local job = ARGV[3]
local cfg = redis.call('HMGET', prefix .. ':limits:config', 'rate', 'burst')
local rate, burst = tonumber(cfg[1]) or 0, math.max(1, tonumber(cfg[2]) or 1)
if rate <= 0 then return {0, now} end
local sending, sent = base .. ':sending', base .. ':sent'
redis.call('ZREMRANGEBYSCORE', sending, '-inf', now - 10000)  -- a sender that died long ago
redis.call('ZREMRANGEBYSCORE', sent, '-inf', now - 1000)
redis.call('ZREM', sending, job)
local n_sending = redis.call('ZCARD', sending)
if n_sending + redis.call('ZCARD', sent) < math.max(1, math.floor(rate)) + burst - 1 then
  redis.call('ZADD', sending, now, job)
  redis.call('PEXPIRE', sending, 20000)
  return {0, now}
end
local wait = 10000
local oldest = redis.call('ZRANGE', sent, 0, 0, 'WITHSCORES')
if #oldest > 0 then wait = tonumber(oldest[2]) + 1000 - now + 1 end
if n_sending > 0 then wait = math.min(wait, 5) end  -- an answer on its way frees a place soon
return {math.max(1, wait), 0}
"""

# answered(prefix, kid, job, score_ms): the job's POST came back (accepted or not). The
# caller computes score_ms = confirm time + the local time from asking to confirm until the
# answer arrived: an upper bound of the arrival at fal, on Redis' clock, known without
# waiting for this call (which may come later, after the record was saved).
ANSWERED = _PRELUDE + """
local job, score = ARGV[3], tonumber(ARGV[4])
if redis.call('ZREM', base .. ':sending', job) == 1 then
  redis.call('ZADD', base .. ':sent', score, job .. '@' .. score)
  redis.call('PEXPIRE', base .. ':sent', 20000)
end
return 1
"""

# hold(prefix, kid, job, endpoint, lease_ms[, tenant]): the job's request is outstanding at fal;
# count it (even above the cap: it *is* outstanding) and restart its lease.
HOLD = _PRELUDE + """
local job, ep, lease = ARGV[3], ARGV[4], tonumber(ARGV[5])
local tenant = ARGV[6] or 'default'
redis.call('ZADD', slots, now + lease, job)
redis.call('HSET', slot_ep, job, ep)
redis.call('ZADD', base .. ':slots:ep:' .. ep, now + lease, job)
redis.call('ZADD', base .. ':slots:t:' .. tenant, now + lease, job)
redis.call('HSET', slot_t, job, tenant)
return 1
"""

# release(prefix, kid, job, refund 0|1): the request is no longer outstanding. With refund,
# the reservation made at admission is given back (fal never accepted the request). The job's
# fair-dispatch room is freed in the same step (falq.shared.fairshare): the next job can go.
RELEASE = _PRELUDE + """
local job, refund = ARGV[3], ARGV[4] == '1'
fair_free(prefix, job)
local ep = redis.call('HGET', slot_ep, job)
if ep then redis.call('ZREM', base .. ':slots:ep:' .. ep, job) end
redis.call('HDEL', slot_ep, job)
local tn = redis.call('HGET', slot_t, job)
if tn then redis.call('ZREM', base .. ':slots:t:' .. tn, job) end
redis.call('HDEL', slot_t, job)
local freed = redis.call('ZREM', slots, job)
local charge = redis.call('HGET', base .. ':charges', job)
if charge then
  redis.call('HDEL', base .. ':charges', job)
  if refund then
    -- 'day|micro' (before tenants) or 'day|micro|tenant': the tenant's counter is refunded too.
    local day, micro, who = string.match(charge, '^([^|]*)|(%d+)|?(.*)$')
    if day then
      redis.call('DECRBY', prefix .. ':spend:' .. day, micro)
      if who and who ~= '' then redis.call('DECRBY', prefix .. ':tspend:' .. day .. ':' .. who, micro) end
    end
  end
end
return freed
"""

# renew(prefix, kid, lease_ms, owner, job...): extend the slots of jobs whose job lease this
# process holds (lease values start with "{owner}:"). Returns 1 per renewed job, else 0 (the
# job has no slot any more, or another process follows it now): the caller stops tracking it.
RENEW = _PRELUDE + """
local lease, owner = tonumber(ARGV[3]), ARGV[4] .. ':'
local out = {}
for i = 5, #ARGV do
  local job = ARGV[i]
  local holder = redis.call('GET', prefix .. ':lease:' .. job)
  local mine = holder and string.sub(holder, 1, #owner) == owner
  if mine and redis.call('ZSCORE', slots, job) then
    redis.call('ZADD', slots, 'XX', now + lease, job)
    local ep = redis.call('HGET', slot_ep, job)
    if ep then redis.call('ZADD', base .. ':slots:ep:' .. ep, 'XX', now + lease, job) end
    local tn = redis.call('HGET', slot_t, job)
    if tn then redis.call('ZADD', base .. ':slots:t:' .. tn, 'XX', now + lease, job) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# state(prefix, kid) -> {now_ms, today, live slots, waiting interactive, bulk, budget, locked,
#                        pause ttl ms, pause reason, tat, spend today}
STATE = _PRELUDE + """
expire_slots()
local W = base .. ':waiting:'
return {now, today, redis.call('ZCARD', slots), redis.call('ZCARD', W .. 'interactive'),
        redis.call('ZCARD', W .. 'bulk'), redis.call('ZCARD', W .. 'budget'), redis.call('ZCARD', W .. 'locked'),
        redis.call('PTTL', base .. ':paused'), redis.call('GET', base .. ':paused') or '',
        redis.call('GET', base .. ':tat') or '', redis.call('GET', prefix .. ':spend:' .. today) or '0'}
"""
