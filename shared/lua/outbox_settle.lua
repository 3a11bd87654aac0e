-- outbox_settle: note a target that needs no more tries for this delivery id (delivered: 1,
-- refused for good: 0), only while the record exists. Caller: Outbox.settle.
--
-- KEYS[1] job  {p}:job:{id}  hash, 'cb_settled' written ("{delivery id}|kind=1,kind=0,")
-- ARGV: delivery id, "kind=1" or "kind=0"
-- Returns 1 noted, 0 the record is gone.
local job = KEYS[1]
local delivery, note = ARGV[1], ARGV[2]
if redis.call('EXISTS', job) == 0 then return 0 end
local cur = redis.call('HGET', job, 'cb_settled')
local head = delivery .. '|'
if not cur or string.sub(cur, 1, #head) ~= head then cur = head end
redis.call('HSET', job, 'cb_settled', cur .. note .. ',')
return 1
