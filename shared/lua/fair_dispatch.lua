-- fair_dispatch: one dispatch round of fair share (stride scheduling over tenants, interactive
-- lane first): moves ready jobs into {p}:inflight while there is room. Caller: FairShare.take
-- (falq.shared.fairshare.scheduler).
--
-- KEYS[1]  inflight       {p}:inflight                 zset, read/written
-- KEYS[2]  unadmitted     {p}:fair:unadmitted          zset, read/written
-- KEYS[3]  config         {p}:limits:config            hash, read
-- KEYS[4]  tenants        {p}:tenants                  hash, read
-- KEYS[5]  fair_count     {p}:fair:count               hash, read/written
-- KEYS[6]  ledger         {p}:ledger                   hash, written (a new entry per job)
-- KEYS[7]  active_int     {p}:fair:active:interactive  set, read/written
-- KEYS[8]  active_bulk    {p}:fair:active:bulk         set, read/written
-- KEYS[9]  pass_int       {p}:fair:pass:interactive    zset, read/written
-- KEYS[10] pass_bulk      {p}:fair:pass:bulk           zset, read/written
-- KEYS[11] vt_int         {p}:fair:vt:interactive      string, read/written
-- KEYS[12] vt_bulk        {p}:fair:vt:bulk             string, read/written
-- ARGV: default max_outstanding, headroom ratio, uncapped room, max jobs, default rate,
--       seconds of submissions that may wait for admission,
--       templates: ready ({p}:fair:ready:HOLE:HOLE, lane then tenant), job ({p}:job:HOLE),
--       pause ({p}:fair:paused:HOLE), tenant spend ({p}:tspend:HOLE:HOLE, day then tenant)
-- Returns a flat list {id, lane, endpoint, tenant, ...} of the jobs dispatched now, to publish.
local inflight, unadmitted, config_key, tenants_key, count_key, ledger_key = unpack(KEYS, 1, 6)
local lanes = {
  {name = 'interactive', k = 2, active = KEYS[7], pass = KEYS[9], vt = KEYS[11]},
  {name = 'bulk', k = 1, active = KEYS[8], pass = KEYS[10], vt = KEYS[12]},
}
local default_mo, ratio, uncapped, max_jobs = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local default_rate, wait_s = tonumber(ARGV[5]) or 0, tonumber(ARGV[6]) or 1
local ready_tpl, job_tpl, paused_tpl, tspend_tpl = ARGV[7], ARGV[8], ARGV[9], ARGV[10]

-- No tenant has a ready job: nothing to dispatch (most rounds a release or an admission starts).
if redis.call('EXISTS', KEYS[7], KEYS[8]) == 0 then return {} end
local now = lib.now_ms()
local today = lib.ymd(math.floor(now / 86400000))
local cfg = redis.call('HMGET', config_key, 'max_outstanding', 'rate')
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
local out = {}
local taken = 0
for _, ln in ipairs(lanes) do
  local lane = ln.name
  local room = math.min(ln.k * target - n_in, ln.k * wtarget - n_wait, max_jobs - taken)
  local active = {}
  if room > 0 then active = redis.call('SMEMBERS', ln.active) end
  if #active > 0 then
    table.sort(active)
    local vt = tonumber(redis.call('GET', ln.vt) or '0') or 0
    local confs = redis.call('HMGET', tenants_key, unpack(active))
    local counts = redis.call('HMGET', count_key, unpack(active))
    local pass, weight, cap, count, elig, gone, touched = {}, {}, {}, {}, {}, {}, {}
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
      local p = redis.call('ZSCORE', ln.pass, name)
      pass[i] = p and tonumber(p) or vt   -- newly active: start at the virtual time
      local paused = redis.call('EXISTS', lib.key(paused_tpl, name)) == 1
      if not paused and budget then
        local spent = tonumber(redis.call('GET', lib.key(tspend_tpl, today, name)) or '0') or 0
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
      local popped = redis.call('ZPOPMIN', lib.key(ready_tpl, lane, name))
      if #popped == 0 then
        elig[best], gone[best] = false, true
      else
        touched[best] = true
        local id = popped[1]
        local job_key = lib.key(job_tpl, id)
        local st = redis.call('HGET', job_key, 'state')
        -- A record that is gone or already finished (cancelled while waiting) costs no turn.
        if st and not lib.is_terminal(st) and redis.call('ZADD', inflight, 'NX', now, id) == 1 then
          local doc = redis.call('HGET', job_key, 'doc') or ''
          local ep = string.match(doc, '"endpoint":"([^"]*)"') or ''
          -- NX: an entry still there keeps the charge its release has yet to settle.
          redis.call('HSETNX', ledger_key, id, lib.ledger_entry(name, ep))
          redis.call('HINCRBY', count_key, name, 1)
          count[best] = count[best] + 1
          redis.call('ZADD', unadmitted, now, id)
          n_in, n_wait, room, taken = n_in + 1, n_wait + 1, room - 1, taken + 1
          vt = pass[best]
          pass[best] = pass[best] + 1 / weight[best]
          if count[best] >= cap[best] then elig[best] = false end
          out[#out + 1] = id
          out[#out + 1] = lane
          out[#out + 1] = ep
          out[#out + 1] = name
        end
      end
    end
    for i, name in ipairs(active) do
      if touched[i] and not gone[i] and redis.call('EXISTS', lib.key(ready_tpl, lane, name)) == 0 then
        gone[i] = true
      end
      if gone[i] then
        redis.call('SREM', ln.active, name)
        redis.call('ZREM', ln.pass, name)
      else
        -- Skipped (capped, paused) tenants gather no credit: never below the virtual time.
        redis.call('ZADD', ln.pass, math.max(pass[i], vt), name)
      end
    end
    redis.call('SET', ln.vt, tostring(vt))
  end
end
return out
