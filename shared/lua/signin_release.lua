-- signin_release: a sign-in succeeded; give its attempt back to each count.
-- Caller: SignInLimiter.succeeded (falq.gateway.console.access).
--
-- KEYS: the counts (as signin_acquire)
-- ARGV: none
-- Returns 0.
for _, k in ipairs(KEYS) do
  if tonumber(redis.call('GET', k) or '0') > 0 then redis.call('DECR', k) end
end
return 0
