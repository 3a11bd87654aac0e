"""A batch's spend cap: nothing of the batch is submitted past it.

A batch may carry ``max_spend`` (USD; ``falq bulk --max-spend 25``, ``POST /v1/batches?max_spend=25``,
``falq batches set-cap ID 40``, ``PATCH /v1/batches/{id}``). Right before a job of the batch is
admitted, :meth:`BatchCaps.reserve` reserves its cost (``num_images`` x the account's unit price,
:mod:`falq.shared.spend.pricing`) in one atomic Lua step, only while::

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
from falq.shared.scripts import register

#: The largest cap accepted (USD).
MAX_CAP_USD = 1_000_000_000.0
CAP_RULE = f"must be a number of USD from 0 to {MAX_CAP_USD:,.0f} (or none to remove the cap)"
PAUSED_REASON = "batch_spend_cap"

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
        self._reserve = register(client, "batch_cap.reserve")
        self._refund = register(client, "batch_cap.refund")
        self._settle = register(client, "batch_cap.settle")

    def set_cap(self, batch_id: str, usd: float | None) -> None:
        """Set (``None``: remove) the batch's cap; waiting jobs go at their next poll if they fit."""
        self.r.hset(self.keys.batch_cap(batch_id), "cap_micro", "none" if usd is None else str(micro(usd)))

    def reserve(self, batch_id: str, job_id: str, cost_micro: int) -> bool:
        """Reserve the job's cost if it fits under the cap (True), else mark it waiting (False)."""
        raw = self._reserve(keys=self._keys(batch_id)[:3], args=[job_id, int(cost_micro)])
        return int(raw[0]) == 1

    def refund(self, batch_id: str, job_id: str) -> None:
        self._refund(keys=self._keys(batch_id)[:3], args=[job_id])

    def settle(self, batch_id: str, job_id: str, billed_usd: float) -> None:
        self._settle(keys=self._keys(batch_id), args=[job_id, micro(billed_usd)])

    def _keys(self, batch_id: str) -> list[str]:
        """The cap hash, its charges, waiting set and billed hash (the scripts' KEYS)."""
        k = self.keys
        return [k.batch_cap(batch_id), k.batch_cap_charges(batch_id), k.batch_cap_waiting(batch_id),
                k.batch_cap_billed(batch_id)]

    def state(self, batch_id: str) -> CapState:
        base = self.keys.batch_cap(batch_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(base, "cap_micro", "billed_micro", "reserved_micro")
        pipe.scard(self._keys(batch_id)[2])
        (cap, billed, reserved), waiting = pipe.execute()
        cap_s = cap.decode() if isinstance(cap, bytes) else cap
        return CapState(max_spend_usd=None if cap_s in (None, "none") else int(cap_s) / 1e6,
                        billed_usd=int(billed or 0) / 1e6, reserved_usd=int(reserved or 0) / 1e6,
                        waiting=int(waiting))


__all__ = ["CAP_RULE", "PAUSED_REASON", "BatchCaps", "CapState", "parse_cap"]
