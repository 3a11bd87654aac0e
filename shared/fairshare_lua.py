"""The Lua scripts behind :mod:`falq.shared.fairshare` (each runs atomically inside Redis).

Keys are built inside the scripts from the prefix (``ARGV[1]``), as the job store and the
limiter do (falq runs on one Redis, never a cluster); they follow :mod:`falq.shared.keys`.
Two snippets are spliced into the job store's scripts, so a record never exists without its
ready entry and a terminal save always frees its room.
"""

from __future__ import annotations

from falq.shared.lua_common import FAIR_FREE, YMD
from falq.shared.records import TERMINAL

_TERMINAL_TEST = " or ".join(f"st == '{s}'" for s in sorted(TERMINAL))

#: Spliced into the job store's create script (``JobStore.create``) after the record is written:
#: with ``ready_tenant ~= ''`` the new job also enters its tenant's ready set and the tenant
#: becomes active for the lane, in the same atomic step. Uses the script's ``id``, ``prefix``,
#: ``created_at``, ``ready_tenant`` and ``ready_lane``.
CREATE_READY_LUA = """
if ready_tenant ~= '' then
  redis.call('ZADD', prefix .. ':fair:ready:' .. ready_lane .. ':' .. ready_tenant, created_at, id)
  redis.call('SADD', prefix .. ':fair:active:' .. ready_lane, ready_tenant)
end
"""

#: Spliced into the job store's save script (``JobStore.save``): a job saved in a terminal
#: state leaves ``{p}:inflight`` and its tenant's dispatched count, in the same step. Uses the
#: script's ``state``, ``id`` and ``prefix``.
ON_TERMINAL_LUA = FAIR_FREE + f"""
do
  local st = state
  if {_TERMINAL_TEST} then fair_free(prefix, id) end
end
"""

# ready(prefix, id, tenant, lane, score) -> 1 (the job is in its ready set now) | 0 (nothing
# done: the record is gone or terminal). A dispatched job frees its room; the record is marked
# unpublished, so no recovery publishes it while it waits.
READY = FAIR_FREE + f"""
local prefix, id, tenant, lane, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local job_key = prefix .. ':job:' .. id
local st = redis.call('HGET', job_key, 'state')
if not st or {_TERMINAL_TEST} then return 0 end
local ready = prefix .. ':fair:ready:' .. lane .. ':' .. tenant
fair_free(prefix, id)
redis.call('ZADD', ready, score, id)
redis.call('SADD', prefix .. ':fair:active:' .. lane, tenant)
redis.call('HSET', job_key, 'published', '0')
return 1
"""

# dispatch(prefix, default max_outstanding, headroom ratio, uncapped room, max jobs, default rate,
#          seconds of submissions that may wait for admission)
# -> flat list {id, lane, endpoint, tenant, ...} of the jobs now dispatched (in {p}:inflight), to publish.
DISPATCH = YMD + f"""
local prefix = ARGV[1]
local default_mo, ratio, uncapped, max_jobs = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local default_rate, wait_s = tonumber(ARGV[6]) or 0, tonumber(ARGV[7]) or 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local today = ymd(math.floor(now / 86400000))
local inflight = prefix .. ':inflight'
local unadmitted = prefix .. ':fair:unadmitted'
local cfg = redis.call('HMGET', prefix .. ':limits:config', 'max_outstanding', 'rate')
local mo = tonumber(cfg[1] or '') or default_mo
local rate = tonumber(cfg[2] or '') or default_rate
-- Room 1: requests dispatched and not yet done at fal (the slot cap plus a little headroom).
local target = uncapped
if mo > 0 then target = mo + math.ceil(mo * ratio) end
-- Room 2: jobs dispatched and not yet admitted by the limiter (about wait_s of the rate): under
-- a rate limit, jobs waiting for tokens are the ones whose order decides who is served.
local wtarget = math.huge
if rate > 0 then wtarget = math.max(2, math.ceil(rate * wait_s)) end
local n_in = redis.call('ZCARD', inflight)
local n_wait = redis.call('ZCARD', unadmitted)
local out = {{}}
local taken = 0
for _, lane in ipairs({{'interactive', 'bulk'}}) do
  local k = lane == 'interactive' and 2 or 1
  local room = math.min(k * target - n_in, k * wtarget - n_wait, max_jobs - taken)
  local active = {{}}
  if room > 0 then active = redis.call('SMEMBERS', prefix .. ':fair:active:' .. lane) end
  if #active > 0 then
    table.sort(active)
    local passkey, vtkey = prefix .. ':fair:pass:' .. lane, prefix .. ':fair:vt:' .. lane
    local vt = tonumber(redis.call('GET', vtkey) or '0') or 0
    local confs = redis.call('HMGET', prefix .. ':tenants', unpack(active))
    local counts = redis.call('HMGET', prefix .. ':fair:count', unpack(active))
    local pass, weight, cap, count, elig, gone, touched = {{}}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}
    for i, name in ipairs(active) do
      local w, tmax, budget = 1, nil, nil
      if confs[i] then
        local ok, c = pcall(cjson.decode, confs[i])
        if ok and type(c) == 'table' then
          w = tonumber(c.weight) or 1
          tmax, budget = tonumber(c.max_outstanding), tonumber(c.budget_usd)
        end
      end
      if w <= 0 then w = 1 end
      weight[i] = w
      cap[i] = math.huge
      if tmax and tmax > 0 then cap[i] = tmax + math.ceil(tmax * ratio) end
      count[i] = tonumber(counts[i] or '0') or 0
      local p = redis.call('ZSCORE', passkey, name)
      pass[i] = p and tonumber(p) or vt   -- newly active: start at the virtual time
      local paused = redis.call('EXISTS', prefix .. ':fair:paused:' .. name) == 1
      if not paused and budget then
        local spent = tonumber(redis.call('GET', prefix .. ':tspend:' .. today .. ':' .. name) or '0') or 0
        paused = spent >= math.floor(budget * 1000000 + 0.5)
      end
      elig[i] = (not paused) and count[i] < cap[i]
    end
    while room > 0 do
      local best = nil
      for i = 1, #active do
        if elig[i] and (best == nil or pass[i] < pass[best]) then best = i end
      end
      if best == nil then break end
      local name = active[best]
      local popped = redis.call('ZPOPMIN', prefix .. ':fair:ready:' .. lane .. ':' .. name)
      if #popped == 0 then
        elig[best], gone[best] = false, true
      else
        touched[best] = true
        local id = popped[1]
        local job_key = prefix .. ':job:' .. id
        local st = redis.call('HGET', job_key, 'state')
        -- A record that is gone or already finished (cancelled while waiting) costs no turn.
        if st and not ({_TERMINAL_TEST}) and redis.call('ZADD', inflight, 'NX', now, id) == 1 then
          redis.call('HSET', prefix .. ':fair:owner', id, name)
          redis.call('HINCRBY', prefix .. ':fair:count', name, 1)
          count[best] = count[best] + 1
          redis.call('ZADD', unadmitted, now, id)
          n_in, n_wait, room, taken = n_in + 1, n_wait + 1, room - 1, taken + 1
          vt = pass[best]
          pass[best] = pass[best] + 1 / weight[best]
          if count[best] >= cap[best] then elig[best] = false end
          local doc = redis.call('HGET', job_key, 'doc') or ''
          out[#out + 1] = id
          out[#out + 1] = lane
          out[#out + 1] = string.match(doc, '"endpoint":"([^"]*)"') or ''
          out[#out + 1] = name
        end
      end
    end
    for i, name in ipairs(active) do
      if touched[i] and not gone[i] and redis.call('EXISTS', prefix .. ':fair:ready:' .. lane .. ':' .. name) == 0 then
        gone[i] = true
      end
      if gone[i] then
        redis.call('SREM', prefix .. ':fair:active:' .. lane, name)
        redis.call('ZREM', passkey, name)
      else
        -- Skipped (capped, paused) tenants gather no credit: never below the virtual time.
        redis.call('ZADD', passkey, math.max(pass[i], vt), name)
      end
    end
    redis.call('SET', vtkey, tostring(vt))
  end
end
return out
"""

# free(prefix, id) -> 1 if the job held dispatch room (see FAIR_FREE)
FREE = FAIR_FREE + """
return fair_free(ARGV[1], ARGV[2])
"""
