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

-- The job no longer takes fair-dispatch room (falq.shared.fairshare.scheduler): it leaves the inflight
-- and unadmitted sets and its tenant's dispatched count. Idempotent (the count only drops when
-- the inflight entry was there). Returns 1 if it was in.
function lib.fair_free(inflight, unadmitted, owner_hash, count_hash, id)
  redis.call('ZREM', unadmitted, id)
  if redis.call('ZREM', inflight, id) == 0 then return 0 end
  local owner = redis.call('HGET', owner_hash, id)
  if owner then
    redis.call('HDEL', owner_hash, id)
    redis.call('HINCRBY', count_hash, owner, -1)
  end
  return 1
end

-- When a lease of ttl_ms taken now ends, in seconds on Redis' clock (the {p}:holders score).
function lib.lease_end(ttl_ms)
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ttl_ms) / 1000
end

-- The limiter's keys of one fal key, unpacked from the block every limiter script receives
-- first (falq.shared.limits.store.Limiter._block): KEYS[1..18] and ARGV[1..7]. Returns the table of
-- names and the index of the first script-specific ARGV.
function lib.limiter_keys(keys, argv)
  return {
    slots = keys[1], slot_ep = keys[2], slot_t = keys[3], tat = keys[4], charges = keys[5],
    paused = keys[6], waiting = {interactive = keys[7], bulk = keys[8], budget = keys[9], locked = keys[10]},
    sending = keys[11], sent = keys[12], config = keys[13], tenants = keys[14],
    unadmitted = keys[15], inflight = keys[16], fair_owner = keys[17], fair_count = keys[18],
    -- templates (lib.key): slots of one endpoint, of one tenant, a tenant's token bucket,
    -- the spend of a day, of a day and tenant, a tenant's dispatch pause, a job's lease
    slots_ep = argv[1], slots_t = argv[2], tat_t = argv[3], spend = argv[4], tspend = argv[5],
    fair_paused = argv[6], lease = argv[7],
  }, 8
end

-- Drop expired slots (a dead worker's slots end here) with their endpoint and tenant entries.
function lib.expire_slots(L, now)
  local dead = redis.call('ZRANGEBYSCORE', L.slots, '-inf', now)
  for _, id in ipairs(dead) do
    local ep = redis.call('HGET', L.slot_ep, id)
    if ep then redis.call('ZREM', lib.key(L.slots_ep, ep), id) end
    redis.call('HDEL', L.slot_ep, id)
    local tn = redis.call('HGET', L.slot_t, id)
    if tn then redis.call('ZREM', lib.key(L.slots_t, tn), id) end
    redis.call('HDEL', L.slot_t, id)
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', L.slots, '-inf', now) end
end

-- Drop expired waiting entries (a job that stopped waiting without being admitted: cancelled,
-- or its worker died). Admission counts waiters with lib.waiting, so this is only memory
-- housekeeping: limiter_state runs it (the maintenance pass calls it every half minute).
function lib.expire_waiting(L, now)
  for _, why in ipairs({'interactive', 'bulk', 'budget', 'locked'}) do
    redis.call('ZREMRANGEBYSCORE', L.waiting[why], '-inf', now)
  end
end

-- Jobs waiting in one of the limiter's waiting sets whose entry has not expired.
function lib.waiting(set, now)
  return redis.call('ZCOUNT', set, now, '+inf')
end
