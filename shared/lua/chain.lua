-- chain: chains: a child job linked to the parents whose outputs it takes
-- (falq.shared.batches.chains).
-- Owner: Chains; operations: link.
--
-- ARGV[1] names the operation; the operation's own ARGV follow it (ARGV below counts from
-- there). Each operation is a function below, headed by what it reads and writes.
local op = table.remove(ARGV, 1)
local ops = {}

-- link: register a waiting child with its parents; a parent that has already ended goes
-- on the end-of-job stream again (for the chains group only: ch 1), so a parent that ended
-- before this ran still releases (or fails) the child.
-- Caller: Chains.link (falq.shared.batches.chains).
--
-- KEYS[1]        ended  {p}:ended  stream, appended (falq.shared.jobs.ended)
-- KEYS[2i], KEYS[2i+1]  per parent i: {p}:children:{parent} (set, written), {p}:job:{parent} (read)
-- ARGV: child id, ttl of the children sets (0: none), then the parent ids (in KEYS' order)
-- Returns 1.
function ops.link()
  local ended_key = KEYS[1]
  local child, ttl = ARGV[1], tonumber(ARGV[2])
  for i = 3, #ARGV do
    local parent = ARGV[i]
    local children_key, parent_key = KEYS[2 * (i - 2)], KEYS[2 * (i - 2) + 1]
    redis.call('SADD', children_key, child)
    if ttl > 0 then redis.call('EXPIRE', children_key, ttl) end
    local st = redis.call('HGET', parent_key, 'state')
    if (not st) or lib.is_terminal(st) then
      redis.call('XADD', ended_key, '*', 'id', parent, 'v', '', 'state', st or 'gone', 'ar', '0', 'cb', '0', 'ch', '1')
    end
  end
  return 1
end

local run = ops[op]
if not run then return redis.error_reply('falq chain.lua: no operation ' .. tostring(op)) end
return run()
