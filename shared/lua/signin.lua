-- signin: the web console's failed sign-in counts, by client address and by key prefix
-- (falq.gateway.console.access).
-- Owner: SignInLimiter; operations: acquire, release.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- acquire: one console sign-in attempt against the failure counts. A full count refuses
-- (it alone counts on, which never extends its window: the first refusal reads limit + 1, and
-- only that one is logged); otherwise every count takes this attempt (a success gives it back,
-- signin_release), so concurrent guesses cannot overshoot the limit.
-- Caller: SignInLimiter.attempt (falq.gateway.console.access).
--
-- KEYS: the counts {p}:console:login:ip:{a}, then {p}:console:login:key:{d} if any (strings, TTL)
-- ARGV: window seconds, then each count's limit (in KEYS' order)
-- Returns {index of the full count or 0, its TTL, its new value}.
function ops.acquire()
  local window = ARGV[1]
  for i, k in ipairs(KEYS) do
    local n = tonumber(redis.call('GET', k) or '0')
    if n >= tonumber(ARGV[i + 1]) then
      n = redis.call('INCR', k)
      local ttl = redis.call('TTL', k)
      if ttl < 0 then redis.call('EXPIRE', k, window); ttl = tonumber(window) end
      return {i, ttl, n}
    end
  end
  for _, k in ipairs(KEYS) do
    if redis.call('INCR', k) == 1 then redis.call('EXPIRE', k, window) end
  end
  return {0, 0, 0}
end

-- release: a sign-in succeeded; give its attempt back to each count.
-- Caller: SignInLimiter.succeeded (falq.gateway.console.access).
--
-- KEYS: the counts (as signin_acquire)
-- ARGV: none
-- Returns 0.
function ops.release()
  for _, k in ipairs(KEYS) do
    if tonumber(redis.call('GET', k) or '0') > 0 then redis.call('DECR', k) end
  end
  return 0
end

local run = ops[op]
if not run then return redis.error_reply('falq signin.lua: no operation ' .. tostring(op)) end
return run()
