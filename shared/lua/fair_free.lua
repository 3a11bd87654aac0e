-- fair_free: the job no longer takes dispatch room (lib.fair_free): a stale inflight entry, or a
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
local inflight_key, unadmitted_key, ledger_key, count_key, owner_key = unpack(KEYS)
local id = ARGV[1]
return lib.fair_free(inflight_key, unadmitted_key, ledger_key, count_key, owner_key, id)
