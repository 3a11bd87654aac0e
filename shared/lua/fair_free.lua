-- fair_free: the job no longer takes dispatch room (lib.fair_free). Caller:
-- FairShare.recover_dispatched (falq.shared.fairshare.scheduler).
--
-- KEYS[1] inflight    {p}:inflight         zset, written
-- KEYS[2] unadmitted  {p}:fair:unadmitted  zset, written
-- KEYS[3] fair_owner  {p}:fair:owner       hash, read/written
-- KEYS[4] fair_count  {p}:fair:count       hash, written
-- ARGV: id
-- Returns 1 if the job held dispatch room.
local inflight_key, unadmitted_key, owner_key, count_key = unpack(KEYS)
local id = ARGV[1]
return lib.fair_free(inflight_key, unadmitted_key, owner_key, count_key, id)
