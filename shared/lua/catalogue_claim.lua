-- catalogue_claim: claim the deployment's shared history for a catalogue (falq.shared.catalogue.registry):
-- the first claimant takes it; a database server takes over a claim held by an SQLite file;
-- otherwise the claim stands. Caller: CatalogueRegistry.claim.
--
-- KEYS[1] claim  {p}:catalogue:shared  string (the shared catalogue's identity), read/written
-- ARGV: this catalogue's identity, its kind ('server' or 'file')
-- Returns the identity that holds the claim now.
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
