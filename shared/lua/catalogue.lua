-- catalogue: the deployment's shared history: which catalogue archivers write
-- (falq.shared.catalogue.registry).
-- Owner: CatalogueRegistry; operations: claim.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- claim: claim the deployment's shared history for a catalogue (falq.shared.catalogue.registry):
-- the first claimant takes it; a database server takes over a claim held by an SQLite file;
-- otherwise the claim stands. Caller: CatalogueRegistry.claim.
--
-- KEYS[1] claim  {p}:catalogue:shared  string (the shared catalogue's identity), read/written
-- ARGV: this catalogue's identity, its kind ('server' or 'file')
-- Returns the identity that holds the claim now.
function ops.claim()
  local claim_key = KEYS[1]
  local identity, kind = ARGV[1], ARGV[2]
  local cur = redis.call('GET', claim_key)
  if not cur or cur == identity then
    if not cur then redis.call('SET', claim_key, identity) end
    return identity
  end
  if kind == 'server' and string.sub(cur, 1, 9) == 'sqlite://' then
    redis.call('SET', claim_key, identity)
    return identity
  end
  return cur
end

local run = ops[op]
if not run then return redis.error_reply('falq catalogue.lua: no operation ' .. tostring(op)) end
return run()
