-- batch_cap_unroom: a job waiting at its batch's spend cap gives back its fair-dispatch room
-- (lib.fair_free), so other batches, tenants and lanes are dispatched meanwhile; its later
-- release frees nothing twice. Caller: BatchCaps.give_back_room (falq.shared.spend.batch_cap).
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
