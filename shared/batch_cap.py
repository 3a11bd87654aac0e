"""A batch's spend cap: nothing of the batch is submitted past it.

A batch may carry ``max_spend`` (USD; ``falq bulk --max-spend 25``, ``POST /v1/batches?max_spend=25``,
``falq batches set-cap ID 40``, ``PATCH /v1/batches/{id}``). Right before a job of the batch is
admitted, :meth:`BatchCaps.reserve` reserves its cost (``num_images`` x the account's unit price,
:mod:`falq.shared.pricing`) in one atomic Lua step, only while::

    billed + reserved + this job's cost <= max_spend

A job that does not fit waits, ``paused: batch_spend_cap``, and polls again; the batch shows why
(``spend_cap.waiting``). Raising the cap lets the waiting jobs through at their next poll.

* A job's reservation is made once (a job that asks again holds it already).
* When fal's result says what it billed (``x-fal-billable-units`` x the unit price),
  :meth:`settle` replaces the job's reservation with that amount (once per job).
* A request fal never accepted is refunded (:meth:`refund`); one it accepted and that ended
  without a result keeps its reservation: falq cannot tell whether fal billed it, so the cap errs
  on the side of spending less.

Layout: ``{p}:bcap:{batch}`` hash (``cap_micro`` or ``none``, ``reserved_micro``, ``billed_micro``),
``:charges`` (job -> micro reserved), ``:billed`` (job -> micro billed), ``:waiting`` (set of
jobs refused by the cap). Amounts are integer micro-dollars, as the daily budget's.

Example::

    caps = BatchCaps(redis_client, prefix="falq")
    caps.set_cap("b5e0c...", 25.0)
    caps.reserve("b5e0c...", job_id, 35_000)    # True: go; False: wait, paused: batch_spend_cap
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import redis

from falq.shared.errors import FieldError, InvalidInput
from falq.shared.keys import Keys
from falq.shared.lua_common import FAIR_FREE

#: The largest cap accepted (USD).
MAX_CAP_USD = 1_000_000_000.0
CAP_RULE = f"must be a number of USD from 0 to {MAX_CAP_USD:,.0f} (or none to remove the cap)"
PAUSED_REASON = "batch_spend_cap"

# reserve(base, job, cost_micro) -> {ok 0|1, cap (-1: none), billed, reserved}
_RESERVE = """
local base, job, cost = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cap = redis.call('HGET', base, 'cap_micro')
local billed = tonumber(redis.call('HGET', base, 'billed_micro') or '0')
local reserved = tonumber(redis.call('HGET', base, 'reserved_micro') or '0')
local capn = tonumber(cap or 'none') or -1
if redis.call('HEXISTS', base .. ':charges', job) == 1 then
  redis.call('SREM', base .. ':waiting', job)
  return {1, capn, billed, reserved}
end
if capn >= 0 and billed + reserved + cost > capn then
  redis.call('SADD', base .. ':waiting', job)
  return {0, capn, billed, reserved}
end
redis.call('HSET', base .. ':charges', job, cost)
redis.call('HINCRBY', base, 'reserved_micro', cost)
redis.call('SREM', base .. ':waiting', job)
return {1, capn, billed, reserved + cost}
"""

# refund(base, job): give back the job's reservation (fal never accepted its request).
_REFUND = """
local base, job = ARGV[1], ARGV[2]
redis.call('SREM', base .. ':waiting', job)
local charge = redis.call('HGET', base .. ':charges', job)
if not charge then return 0 end
redis.call('HDEL', base .. ':charges', job)
redis.call('HINCRBY', base, 'reserved_micro', -tonumber(charge))
return 1
"""

# settle(base, job, billed_micro): the job's reservation becomes what fal billed (once per job).
_SETTLE = """
local base, job, amount = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('SREM', base .. ':waiting', job)
local charge = redis.call('HGET', base .. ':charges', job)
if charge then
  redis.call('HDEL', base .. ':charges', job)
  redis.call('HINCRBY', base, 'reserved_micro', -tonumber(charge))
end
if redis.call('HSETNX', base .. ':billed', job, amount) == 1 then
  redis.call('HINCRBY', base, 'billed_micro', amount)
  return 1
end
return 0
"""


# unroom(prefix, job): a job waiting at its batch's cap gives back its fair-dispatch room, so the
# jobs of other batches, tenants and lanes are dispatched meanwhile (it waits in its worker, not in
# the dispatcher's count). Its later release frees nothing twice (fair_free is idempotent).
_UNROOM = FAIR_FREE + """
return fair_free(ARGV[1], ARGV[2])
"""


def micro(usd: float) -> int:
    return math.floor(usd * 1_000_000 + 0.5)


def parse_cap(value: Any, field: str = "max_spend") -> float | None:
    """A cap as given by a user (number or text; ``none``/``null``/empty: no cap); raises
    :class:`InvalidInput` naming ``field`` for a negative, NaN, infinite or non-numeric value."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, bool):
        raise InvalidInput([FieldError(field, CAP_RULE)])
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InvalidInput([FieldError(field, CAP_RULE)]) from None
    if not math.isfinite(f) or not 0 <= f <= MAX_CAP_USD:
        raise InvalidInput([FieldError(field, CAP_RULE)])
    return round(f, 6)


@dataclass(frozen=True)
class CapState:
    """A batch's cap and its spend against it."""

    max_spend_usd: float | None
    billed_usd: float
    reserved_usd: float
    waiting: int

    def as_json(self) -> dict[str, Any]:
        return {"max_spend_usd": self.max_spend_usd, "billed_usd": round(self.billed_usd, 6),
                "reserved_usd": round(self.reserved_usd, 6), "waiting": self.waiting,
                "paused_reason": PAUSED_REASON if self.waiting else None}


class BatchCaps:
    """Spend caps of batches, kept in Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "falq") -> None:
        self.r = client
        self.keys = Keys(prefix)
        self._reserve = client.register_script(_RESERVE)
        self._refund = client.register_script(_REFUND)
        self._settle = client.register_script(_SETTLE)
        self._unroom = client.register_script(_UNROOM)
        self.prefix = prefix

    def set_cap(self, batch_id: str, usd: float | None) -> None:
        """Set (``None``: remove) the batch's cap; waiting jobs go at their next poll if they fit."""
        self.r.hset(self.keys.batch_cap(batch_id), "cap_micro", "none" if usd is None else str(micro(usd)))

    def reserve(self, batch_id: str, job_id: str, cost_micro: int) -> bool:
        """Reserve the job's cost if it fits under the cap (True), else mark it waiting (False)."""
        raw = self._reserve(keys=[], args=[self.keys.batch_cap(batch_id), job_id, int(cost_micro)])
        return int(raw[0]) == 1

    def give_back_room(self, job_id: str) -> bool:
        """The job waits at its cap: it stops counting as dispatched (True if it did)."""
        return bool(self._unroom(keys=[], args=[self.prefix, job_id]))

    def refund(self, batch_id: str, job_id: str) -> None:
        self._refund(keys=[], args=[self.keys.batch_cap(batch_id), job_id])

    def settle(self, batch_id: str, job_id: str, billed_usd: float) -> None:
        self._settle(keys=[], args=[self.keys.batch_cap(batch_id), job_id, micro(billed_usd)])

    def state(self, batch_id: str) -> CapState:
        base = self.keys.batch_cap(batch_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(base, "cap_micro", "billed_micro", "reserved_micro")
        pipe.scard(f"{base}:waiting")
        (cap, billed, reserved), waiting = pipe.execute()
        cap_s = cap.decode() if isinstance(cap, bytes) else cap
        return CapState(max_spend_usd=None if cap_s in (None, "none") else int(cap_s) / 1e6,
                        billed_usd=int(billed or 0) / 1e6, reserved_usd=int(reserved or 0) / 1e6,
                        waiting=int(waiting))


__all__ = ["CAP_RULE", "PAUSED_REASON", "BatchCaps", "CapState", "parse_cap"]
