"""Compare what falq says each fal request cost with what fal billed (``falq report reconcile``).

fal keeps a record per billed request: ``GET {FALQ_FAL_PLATFORM_URL}/models/billing-events``
(ADMIN key, ``FAL_ADMIN_KEY``; https://fal.ai/docs/platform-apis/v1/models/billing-events),
paginated by ``cursor``. Each has ``request_id, endpoint_id, timestamp, output_units, unit_price,
cost_total``. falq's side is its job records (Redis, then the catalogue): every request id a job
submitted, with the cost falq counted for it (``cost_billed``, which is ``x-fal-billable-units`` x
the account's unit price; 0 for a request falq never got a result of).

Every request where the two differ by more than half a micro-dollar is a :class:`Difference`:
``only_at_fal`` (fal billed a request falq counted nothing for: e.g. a generation falq paid for and
did not keep), ``only_in_falq`` (falq counted a cost fal has no record of, or not yet: fal's
records arrive with a delay), or ``cost``/``units`` mismatches.

The admin key is sent only in the Authorization header; it never appears in output or errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from falq.shared.errors import RetryableError
from falq.shared.jobs.records import JobRecord
from falq.shared.settings import Settings
from falq.shared.spend.platform import pages

#: What reconcile says about fal's records, always.
DELAY_NOTE = ("fal's billing records arrive with a delay (minutes, sometimes longer): a request that finished "
              "recently may show as only_in_falq until fal's record of it appears. Run it again later before "
              "acting on those.")
NO_ADMIN_KEY = ("fal's billing events need an ADMIN-scope fal key: set FAL_ADMIN_KEY (create one at "
                "https://fal.ai/dashboard/keys with the ADMIN scope). falq uses it only for this report and never "
                "logs or records it.")
MAX_PAGES = 1000
#: Amounts closer than this (USD) are equal (both sides round to the micro-dollar).
TOLERANCE = 0.0000005


class BillingUnavailable(RetryableError):
    """fal's billing events could not be read."""

    kind = "billing_unavailable"


@dataclass(frozen=True)
class Difference:
    """One request whose cost differs between falq and fal."""

    request_id: str
    kind: str
    job_id: str | None
    endpoint: str | None
    falq_usd: float
    fal_usd: float
    falq_units: float | None
    fal_units: float | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FalqCost:
    job_id: str
    endpoint: str
    cost_usd: float
    units: float | None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fetch_billing_events(settings: Settings, since: float, until: float | None = None, *,
                         transport: httpx.BaseTransport | None = None) -> list[dict[str, Any]]:
    """Every billing event fal shows for ``[since, until)``, every page followed."""
    key = settings.fal_admin_key_value()
    if not key:
        raise BillingUnavailable(NO_ADMIN_KEY)
    url = f"{settings.fal_platform_url}/models/billing-events"
    params: dict[str, str] = {"start": _iso(since), "limit": "10000"}
    if until is not None:
        params["end"] = _iso(until)
    out: list[dict[str, Any]] = []
    with httpx.Client(timeout=httpx.Timeout(30.0), transport=transport) as client:
        for doc in pages(client, url, params, key=key, what="fal's billing events", error=BillingUnavailable,
                         max_pages=MAX_PAGES,
                         refused="fal refused FAL_ADMIN_KEY: it must be an ADMIN-scope key of the account"):
            # The envelope's name is thinly documented: fal's list answers name their items after
            # the resource ("prices" on /models/pricing), so "billing_events" first.
            items = next((doc[k] for k in ("billing_events", "events", "items", "data")
                          if isinstance(doc.get(k), list)), None)
            if items is None:
                raise BillingUnavailable("fal's billing events answer holds no list of events")
            out.extend(e for e in items if isinstance(e, dict) and isinstance(e.get("request_id"), str))
    return out


def falq_costs(records: Iterable[JobRecord]) -> tuple[dict[str, FalqCost], dict[str, str]]:
    """``(request id -> falq's cost of it, request id -> job id of every request submitted)``."""
    costs: dict[str, FalqCost] = {}
    submitted: dict[str, str] = {}
    for rec in records:
        for sub in rec.submissions:
            submitted[sub.request_id] = rec.id
        rid = rec.request_id or (rec.submissions[-1].request_id if rec.submissions else None)
        if rid and rec.cost_billed is not None:
            costs[rid] = FalqCost(rec.id, rec.endpoint, float(rec.cost_billed), rec.billable_units)
    return costs, submitted


def compare(costs: dict[str, FalqCost], submitted: dict[str, str],
            events: list[dict[str, Any]]) -> list[Difference]:
    """Every request whose cost differs between falq and fal (sorted by request id)."""
    fal: dict[str, dict[str, Any]] = {}
    for e in events:
        rid = e["request_id"]
        prev = fal.get(rid)
        total = _num(e.get("cost_total"))
        units = _num(e.get("output_units"))
        if prev is None:
            fal[rid] = {"usd": total, "units": units, "endpoint": e.get("endpoint_id")}
        else:  # several events of one request: their sum is what fal billed for it
            prev["usd"] += total
            prev["units"] = (prev["units"] or 0.0) + (units or 0.0)
    out: list[Difference] = []
    for rid in sorted(set(costs) | set(fal)):
        mine, theirs = costs.get(rid), fal.get(rid)
        if mine is not None and theirs is not None:
            if abs(mine.cost_usd - theirs["usd"]) > TOLERANCE:
                kind = "cost"
            elif mine.units is not None and theirs["units"] is not None and abs(mine.units - theirs["units"]) > 1e-9:
                kind = "units"
            else:
                continue
            out.append(Difference(rid, kind, mine.job_id, mine.endpoint, mine.cost_usd, theirs["usd"], mine.units,
                                  theirs["units"]))
        elif theirs is not None:
            if theirs["usd"] <= TOLERANCE:
                continue
            out.append(Difference(rid, "only_at_fal", submitted.get(rid), theirs["endpoint"], 0.0, theirs["usd"],
                                  None, theirs["units"]))
        elif mine is not None and mine.cost_usd > TOLERANCE:
            out.append(Difference(rid, "only_in_falq", mine.job_id, mine.endpoint, mine.cost_usd, 0.0, mine.units,
                                  None))
    return out


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def records_since(falq: Any, since: float, until: float | None = None) -> list[JobRecord]:
    """Finished jobs of ``[since, until)`` from Redis and the catalogue (Redis' copy wins)."""
    found: dict[str, JobRecord] = {}
    cat = falq.catalogue
    if cat is not None:
        from falq.shared.catalogue.rows import record_from_row
        from falq.shared.catalogue.schema import jobs

        when = sa.func.coalesce(jobs.c.finished_at, jobs.c.updated_at)
        stmt = sa.select(jobs).where(when >= since)
        if until is not None:
            stmt = stmt.where(when < until)
        for row in cat._fetch(stmt):
            rec = record_from_row(row)
            found[rec.id] = rec
    keys = falq.store.keys
    ids: set[str] = set()
    for state in ("completed", "failed", "cancelled", "mirroring"):
        ids.update(x.decode() if isinstance(x, bytes) else str(x)
                   for x in falq.redis.zrangebyscore(keys.state(state), since, until if until is not None else "+inf"))
    ordered = sorted(ids)
    for start in range(0, len(ordered), 1000):
        chunk = ordered[start:start + 1000]
        for rec in falq.store.get_many(chunk):
            if rec is not None:
                found[rec.id] = rec
    return list(found.values())


__all__ = ["DELAY_NOTE", "NO_ADMIN_KEY", "BillingUnavailable", "Difference", "compare", "falq_costs",
           "fetch_billing_events", "records_since"]
