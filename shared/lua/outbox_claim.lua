-- outbox_claim: take due callback entries by moving their score forward to the claim's end;
-- that score is the claim's token (no other worker sees them due until it passes).
-- Caller: Outbox.claim (falq.shared.callbacks.outbox).
--
-- KEYS[1] outbox  {p}:outbox  zset id -> when due, read/written
-- ARGV: now, claim-until (the token), limit
-- Returns the claimed ids.
local outbox_key = KEYS[1]
local now, until_, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', outbox_key, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do redis.call('ZADD', outbox_key, until_, id) end
return ids
