-- fair: fair dispatch: the tenants' ready sets, stride scheduling over them, and the dispatch room
-- (falq.shared.fairshare.scheduler; docs/internals/fair-dispatch.md).
-- Owner: FairShare; operations: dispatch, ready, free, recount.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- dispatch: one dispatch round of fair share (stride scheduling over tenants, interactive
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
function ops.dispatch()
  local inflight, unadmitted, config_key, tenants_key, count_key, ledger_key = unpack(KEYS, 1, 6)
  local lanes = {
    {name = 'interactive', k = 2, active = KEYS[7], pass = KEYS[9], vt = KEYS[11]},
    {name = 'bulk', k = 1, active = KEYS[8], pass = KEYS[10], vt = KEYS[12]},
  }
  local default_mo, ratio = tonumber(ARGV[1]), tonumber(ARGV[2])
  local uncapped, max_jobs = tonumber(ARGV[3]), tonumber(ARGV[4])
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
          local rec = redis.call('HMGET', job_key, 'state', 'doc')
          local st = rec[1]
          -- A record that is gone or already finished (cancelled while waiting) costs no turn.
          if st and not lib.is_terminal(st) and redis.call('ZADD', inflight, 'NX', now, id) == 1 then
            local ep = string.match(rec[2] or '', '"endpoint":"([^"]*)"') or ''
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
end

-- ready: put a job (back) in its tenant's ready set for fair dispatch. A dispatched job
-- frees its room; the record is marked unpublished, so no recovery publishes it while it waits.
-- Caller: FairShare.make_ready / park (falq.shared.fairshare.scheduler).
--
-- KEYS[1] job         {p}:job:{id}                  hash, read; 'published' written
-- KEYS[2] ready       {p}:fair:ready:{lane}:{tenant} zset, written
-- KEYS[3] active      {p}:fair:active:{lane}        set, written
-- KEYS[4] inflight    {p}:inflight                  zset  \
-- KEYS[5] unadmitted  {p}:fair:unadmitted           zset   | lib.fair_free (Keys.room)
-- KEYS[6] ledger      {p}:ledger                    hash   |
-- KEYS[7] fair_count  {p}:fair:count                hash   |
-- KEYS[8] fair_owner  {p}:fair:owner (before the ledger) /
-- ARGV: id, tenant, score (creation time)
-- Returns 1 the job is in its ready set now, 0 nothing done (the record is gone or terminal).
function ops.ready()
  local job_key, ready_key, active_key, inflight_key, unadmitted_key, ledger_key, count_key, owner_key = unpack(KEYS)
  local id, tenant, score = ARGV[1], ARGV[2], tonumber(ARGV[3])
  local st = redis.call('HGET', job_key, 'state')
  if not st or lib.is_terminal(st) then return 0 end
  lib.fair_free(inflight_key, unadmitted_key, ledger_key, count_key, owner_key, id)
  redis.call('ZADD', ready_key, score, id)
  redis.call('SADD', active_key, tenant)
  redis.call('HSET', job_key, 'published', '0')
  return 1
end

-- free: the job no longer takes dispatch room (lib.fair_free): a stale inflight entry, or a
-- job waiting at its batch's spend cap (its later release frees nothing twice). Caller:
-- FairShare.free (falq.shared.fairshare.scheduler).
--
-- KEYS[1] inflight    {p}:inflight         zset, written
-- KEYS[2] unadmitted  {p}:fair:unadmitted  zset, written
-- KEYS[3] ledger      {p}:ledger           hash, read/written
-- KEYS[4] fair_count  {p}:fair:count       hash, written
-- KEYS[5] fair_owner  {p}:fair:owner       hash, read/written (jobs dispatched before the ledger)
-- ARGV: id
-- Returns 1 if the job held dispatch room.
function ops.free()
  local inflight_key, unadmitted_key, ledger_key, count_key, owner_key = unpack(KEYS)
  local id = ARGV[1]
  return lib.fair_free(inflight_key, unadmitted_key, ledger_key, count_key, owner_key, id)
end

-- recount: each tenant's count of dispatched jobs ({p}:fair:count), recounted from the jobs
-- in {p}:inflight and their ledger entries. Dispatch and lib.fair_free keep the count exact step
-- by step; this puts it right after anything that bypassed them (a worker of an older release
-- freeing a job it cannot find in the ledger during a rolling upgrade). Also empties the owners
-- written before the ledger once their jobs left inflight. Caller: FairShare.recount
-- (falq.shared.fairshare.scheduler), every half minute from the maintenance pass.
--
-- KEYS[1] inflight    {p}:inflight         zset, read
-- KEYS[2] ledger      {p}:ledger           hash, read
-- KEYS[3] fair_count  {p}:fair:count       hash, read/written
-- KEYS[4] fair_owner  {p}:fair:owner       hash, read/written (jobs dispatched before the ledger)
-- ARGV: none
-- Returns the number of tenants whose count was wrong.
function ops.recount()
  local inflight_key, ledger_key, count_key, owner_key = unpack(KEYS)
  local counts = {}
  local legacy = redis.call('HLEN', owner_key) > 0
  for _, id in ipairs(redis.call('ZRANGE', inflight_key, 0, -1)) do
    local tenant = lib.ledger_get(ledger_key, id)
    if not tenant and legacy then tenant = redis.call('HGET', owner_key, id) end
    if tenant then counts[tenant] = (counts[tenant] or 0) + 1 end
  end
  if legacy then
    for _, id in ipairs(redis.call('HKEYS', owner_key)) do
      if not redis.call('ZSCORE', inflight_key, id) then redis.call('HDEL', owner_key, id) end
    end
  end
  local wrong = 0
  local cur = redis.call('HGETALL', count_key)
  for i = 1, #cur, 2 do
    local tenant, n = cur[i], tonumber(cur[i + 1]) or 0
    local want = counts[tenant] or 0
    if n ~= want then
      wrong = wrong + 1
      if want == 0 then redis.call('HDEL', count_key, tenant) else redis.call('HSET', count_key, tenant, want) end
    end
    counts[tenant] = nil
  end
  for tenant, want in pairs(counts) do
    wrong = wrong + 1
    redis.call('HSET', count_key, tenant, want)
  end
  return wrong
end

local run = ops[op]
if not run then return redis.error_reply('falq fair.lua: no operation ' .. tostring(op)) end
return run()
