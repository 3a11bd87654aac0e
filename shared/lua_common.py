"""Lua snippets shared by several of falq's Redis scripts (the limiter, fair dispatch, the job store).

Kept in one module without falq imports of its own, so every script module can splice them in
without import cycles.
"""

from __future__ import annotations

#: ``ymd(days since 1970-01-01)`` -> ``yyyy-mm-dd`` (H. Hinnant's civil-from-days algorithm):
#: Redis Lua has no ``os.date``, and every script takes the day from Redis ``TIME``.
YMD = """local function ymd(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end
"""

#: ``fair_free(prefix, id)``: the job no longer takes dispatch room (:mod:`falq.shared.fairshare`):
#: it leaves ``{p}:inflight`` and ``{p}:fair:unadmitted`` and its tenant's dispatched count.
#: Idempotent (the count only drops when the inflight entry was there). Returns 1 if it was in.
FAIR_FREE = """local function fair_free(prefix, id)
  redis.call('ZREM', prefix .. ':fair:unadmitted', id)
  if redis.call('ZREM', prefix .. ':inflight', id) == 0 then return 0 end
  local owner = redis.call('HGET', prefix .. ':fair:owner', id)
  if owner then
    redis.call('HDEL', prefix .. ':fair:owner', id)
    redis.call('HINCRBY', prefix .. ':fair:count', owner, -1)
  end
  return 1
end
"""
