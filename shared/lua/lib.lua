-- lib.lua: the functions falq's Redis scripts share.
--
-- Redis scripting has no module system, so the loader (falq.shared.scripts) composes a script
-- by prepending this file to every script that calls `lib.` (and to no other). The rule that
-- keeps that composition safe: this file defines functions in the table `lib` and nothing else;
-- each function takes everything it uses as arguments (key names included) and never reads a
-- script's variables, KEYS or ARGV. A script's own text is never pasted into another.
--
-- Keys: a function never spells a key. A key that depends on something only read inside Redis
-- (an id from an index, the UTC day from TIME, a tenant from a record) is made with lib.key
-- from a template the caller passes in ARGV, made by the shared/keys.py method of that family
-- with falq.shared.keys.HOLE for each part the script fills in.

local lib = {}

-- The template's holes ("\1", falq.shared.keys.HOLE) filled, in order, with the parts.
function lib.key(template, ...)
  local parts, i = {...}, 0
  return (string.gsub(template, '\1', function()
    i = i + 1
    return parts[i]
  end))
end

-- Redis' clock in milliseconds (every host agrees on it, whatever its own clock says).
function lib.now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- ymd(days since 1970-01-01) -> 'yyyy-mm-dd' (H. Hinnant's civil-from-days algorithm):
-- Redis Lua has no os.date, and every script takes the day from Redis TIME.
function lib.ymd(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end

-- Whether a job state is terminal (falq.shared.jobs.records.TERMINAL; a test keeps the two equal).
function lib.is_terminal(state)
  return state == 'completed' or state == 'failed' or state == 'cancelled'
end

-- Python's round(x * 1e6) (half to even): dollars in a record -> integer micro-dollars.
function lib.micro(x)
  if type(x) ~= 'number' then return 0 end
  local v = x * 1000000
  local f = math.floor(v)
  local frac = v - f
  if frac > 0.5 or (frac == 0.5 and f % 2 == 1) then f = f + 1 end
  return f
end

-- The ledger of work in flight ({p}:ledger, falq.shared.keys): job -> 'tenant|endpoint|day|micro'
-- (day and micro: the charge reserved for the job's attempt, empty when none). Fair dispatch
-- writes the entry, the limiter's admission completes it, and it goes when the job holds
-- neither dispatch room nor a slot. Returns tenant, endpoint, day, micro (micro a number or nil)
-- or nil when the job has no entry.
function lib.ledger_get(ledger, id)
  local raw = redis.call('HGET', ledger, id)
  if not raw then return nil end
  local tenant, ep, day, micro = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|(%d*)$')
  if not tenant then return nil end
  return tenant, ep, day, tonumber(micro)
end

function lib.ledger_entry(tenant, ep, day, micro)
  if not micro then return tenant .. '|' .. ep .. '||' end
  return tenant .. '|' .. ep .. '|' .. day .. '|' .. micro
end

-- The job no longer takes fair-dispatch room (falq.shared.fairshare.scheduler): it leaves the
-- inflight and unadmitted sets and its tenant's dispatched count. Idempotent (the count only
-- drops when the inflight entry was there). The ledger entry goes too unless it still carries a
-- charge (the release that follows refunds or keeps it). legacy_owner: {p}:fair:owner, read for
-- jobs dispatched by a release before the ledger. Returns 1 if it was in.
function lib.fair_free(inflight, unadmitted, ledger, count_hash, legacy_owner, id)
  redis.call('ZREM', unadmitted, id)
  if redis.call('ZREM', inflight, id) == 0 then return 0 end
  local owner, _, _, micro = lib.ledger_get(ledger, id)
  if owner then
    if not micro then redis.call('HDEL', ledger, id) end
  else
    owner = redis.call('HGET', legacy_owner, id)
    if owner then redis.call('HDEL', legacy_owner, id) end
  end
  if owner then redis.call('HINCRBY', count_hash, owner, -1) end
  return 1
end

-- When a lease of ttl_ms taken now ends, in seconds on Redis' clock (the {p}:holders score).
function lib.lease_end(ttl_ms)
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ttl_ms) / 1000
end

-- The limiter's keys of one fal key, unpacked from the block every limiter script receives
-- first (falq.shared.limits.store.Limiter._block): KEYS[1..19] and ARGV[1..7]. Returns the table of
-- names and the index of the first script-specific ARGV.
function lib.limiter_keys(keys, argv)
  return {
    slots = keys[1], ledger = keys[2], tat = keys[3], paused = keys[4],
    waiting = {interactive = keys[5], bulk = keys[6], budget = keys[7], locked = keys[8]},
    sending = keys[9], sent = keys[10], config = keys[11], tenants = keys[12],
    unadmitted = keys[13], inflight = keys[14], fair_count = keys[15],
    -- written by releases before the ledger: read (and emptied) only, for jobs they admitted
    legacy = {slot_ep = keys[16], slot_t = keys[17], charges = keys[18], owner = keys[19]},
    -- templates (lib.key): slots of one endpoint, of one tenant, a tenant's token bucket,
    -- the spend of a day, of a day and tenant, a tenant's dispatch pause, a job's lease
    slots_ep = argv[1], slots_t = argv[2], tat_t = argv[3], spend = argv[4], tspend = argv[5],
    fair_paused = argv[6], lease = argv[7],
  }, 8
end

-- The job's ledger entry. A job admitted by a release before the ledger has its entries in the
-- old side hashes instead: they move into the ledger here. Returns tenant, endpoint, day, micro
-- (micro nil without a charge), or nil when the job has no entry anywhere.
function lib.limiter_entry(L, job)
  local tenant, ep, day, micro = lib.ledger_get(L.ledger, job)
  if tenant then return tenant, ep, day, micro end
  ep = redis.call('HGET', L.legacy.slot_ep, job)
  tenant = redis.call('HGET', L.legacy.slot_t, job)
  local charge = redis.call('HGET', L.legacy.charges, job)
  if not (ep or tenant or charge) then return nil end
  redis.call('HDEL', L.legacy.slot_ep, job)
  redis.call('HDEL', L.legacy.slot_t, job)
  redis.call('HDEL', L.legacy.charges, job)
  redis.call('HDEL', L.legacy.owner, job)
  if charge then
    local d, m, who = string.match(charge, '^([^|]*)|(%d+)|?(.*)$')
    day, micro = d, tonumber(m)
    if (not tenant) and who and who ~= '' then tenant = who end
  end
  tenant, ep = tenant or 'default', ep or ''
  redis.call('HSET', L.ledger, job, lib.ledger_entry(tenant, ep, day, micro))
  return tenant, ep, day, micro
end

-- The send check (the argument is in limiter.confirm's header): log `job` as on its way if
-- fewer than rate + burst - 1 requests are on their way (a sender dead for 10 s no longer
-- counts) or were answered within the last second. Both sets are counted by score, never
-- trimmed here: limiter.state's housekeeping drops the old entries (memory only). Returns
-- whether it logged the job, and how many requests were on their way.
function lib.log_send(L, job, now, rate, burst)
  local n_sending = redis.call('ZCOUNT', L.sending, now - 10000, '+inf')
  local n_sent = redis.call('ZCOUNT', L.sent, '(' .. (now - 1000), '+inf')
  if n_sending + n_sent < math.max(1, math.floor(rate)) + burst - 1 then
    redis.call('ZADD', L.sending, now, job)
    return true, n_sending
  end
  return false, n_sending
end

-- Drop expired slots. Every slot set is counted by live score (lib.live), so expired entries (a
-- dead worker's slots) are only memory: the maintenance pass trims them (limiter.state for this
-- set, Limiter.trim_expired for the endpoint and tenant sets). The ledger entry stays for the
-- job's next run, which holds or releases it.
function lib.expire_slots(L, now)
  redis.call('ZREMRANGEBYSCORE', L.slots, '-inf', now)
end

-- Entries of a set scored by expiry (ms) that have not expired: a slot set (lease expiry) or a
-- waiting set.
function lib.live(set, now)
  return redis.call('ZCOUNT', set, now, '+inf')
end

-- Drop expired waiting entries (a job that stopped waiting without being admitted: cancelled,
-- or its worker died). Admission counts waiters with lib.live, so this is only memory
-- housekeeping: limiter.state runs it (the maintenance pass calls it every half minute).
function lib.expire_waiting(L, now)
  for _, why in ipairs({'interactive', 'bulk', 'budget', 'locked'}) do
    redis.call('ZREMRANGEBYSCORE', L.waiting[why], '-inf', now)
  end
end
