"""Job listing and search for ``GET /v1/jobs``: by state, time window and metadata.

Redis keeps three kinds of index (:mod:`falq.shared.jobs.store`): ``{p}:created:t:{tenant}``
(the tenant's jobs by creation time), ``{p}:created`` (every job) and ``{p}:state:{state}``
(by last update). A search walks the right index newest first, in pages, and keeps the records
whose metadata matches. Metadata is not indexed, so a walk stops after :data:`SCAN_CAP` records
and says so (``truncated``); ``next_until`` continues a listing where the last page ended.

A search sees one tenant's jobs only (the caller's), and walks only those: without ``state``
the tenant's own creation index; with ``state``, the tenant's ids found in the state index
(:meth:`~falq.shared.jobs.store.JobStore.tenant_rows_in_state`), the same rows in the same order
as a walk of the state index. So other tenants' jobs, however many, neither count towards the
cap nor show in ``scanned`` or ``truncated``. Some searches still walk a shared index and skip
other tenants' records: a ``state=`` search of a tenant with more than
:data:`~falq.shared.jobs.store.TENANT_STATE_CAP` jobs in Redis, or with at least as many as the
state holds (that walk is then the shorter, and no longer than the tenant's own jobs), and any
search while the one-time backfill of records older than the per-tenant index has not finished
(after an upgrade; :meth:`~falq.shared.jobs.store.JobStore.tenant_index_ready`).

Example::

    q = JobQuery(state="completed", metadata={"batch": "b7"}, limit=50)
    page = search(store, q, tenant="shop")  # {"jobs": [...], "count": n, "truncated": False, "next_until": ...}
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from falq.shared.catalogue.search import merge_newest, record_matches
from falq.shared.errors import CatalogueUnavailable, FieldError, InvalidInput
from falq.shared.jobs.records import STATES, TERMINAL, JobRecord
from falq.shared.jobs.store import JobStore

if TYPE_CHECKING:
    from falq.shared.catalogue.store import Catalogue

SCAN_CAP = 20_000
PAGE = 500
MAX_LIMIT = 1000


@dataclass(frozen=True)
class JobQuery:
    """A parsed listing request. ``since`` is inclusive, ``until`` exclusive (epoch seconds)."""

    state: str | None = None
    since: float | None = None
    until: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    endpoint: str | None = None
    limit: int = 100
    #: ``text=WORDS``: every word in the prompt (full-text in the catalogue).
    text: str | None = None
    batch_id: str | None = None


def parse_query(params: dict[str, str] | Any) -> JobQuery:
    """Build a :class:`JobQuery` from query parameters; raise :class:`InvalidInput` listing every problem.

    ``since``/``until`` accept epoch seconds, ISO date-times (UTC unless they say) or durations
    ago (``30s``, ``10m``, ``2h``, ``1d``); ``metadata.KEY=VALUE`` filters on metadata.
    """
    errors: list[FieldError] = []
    state = params.get("state") or None
    if state is not None and state not in STATES:
        errors.append(FieldError("state", f"must be one of {', '.join(STATES)}"))
    since = _time(params.get("since"), "since", errors)
    until = _time(params.get("until"), "until", errors)
    limit = 100
    raw_limit = params.get("limit")
    if raw_limit is not None:
        if raw_limit.strip().isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT:
            limit = int(raw_limit)
        else:
            errors.append(FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}"))
    meta = {k.removeprefix("metadata."): v for k, v in params.items() if k.startswith("metadata.")}
    if any(not k for k in meta):
        errors.append(FieldError("metadata", "use metadata.KEY=VALUE"))
    text = params.get("text") or None
    if text is not None and len(text) > 500:
        errors.append(FieldError("text", "must be at most 500 characters"))
    if errors:
        raise InvalidInput(errors)
    return JobQuery(state=state, since=since, until=until, metadata=meta, endpoint=params.get("endpoint") or None,
                    limit=limit, text=text, batch_id=params.get("batch_id") or None)


def _time(text: str | None, name: str, errors: list[FieldError]) -> float | None:
    if text is None or not text.strip():
        return None
    from falq.shared.since import parse_since

    try:
        value = parse_since(text)
    except (InvalidInput, OverflowError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        errors.append(FieldError(name, "must be epoch seconds, an ISO date/time or a duration (30s, 10m, 2h, 1d)"))
        return None
    return value


def matches(rec: JobRecord, q: JobQuery) -> bool:
    """Whether ``rec`` passes the query's endpoint and metadata filters."""
    if q.endpoint is not None and rec.endpoint != q.endpoint:
        return False
    for key, want in q.metadata.items():
        if key not in rec.metadata:
            return False
        have = rec.metadata[key]
        if not (str(have) == want or json.dumps(have, separators=(",", ":")) == want):
            return False
    return True


def _index_pages(store: JobStore, q: JobQuery, tenant: str) -> Callable[[int, int], Sequence[tuple[Any, float]]]:
    """``fetch(offset, n)``: the next ``(id, score)`` rows of the index the query walks, newest first."""
    if q.state:
        own = store.tenant_rows_in_state(tenant, q.state, since=q.since, until=q.until)
        if own is not None:
            return lambda offset, n: own[offset:offset + n]
        index = store.keys.state(q.state)
    else:
        index = store.keys.created_tenant(tenant) if store.tenant_index_ready() else store.keys.created
    hi: str | float = f"({q.until!r}" if q.until is not None else "+inf"
    lo: str | float = q.since if q.since is not None else "-inf"
    return lambda offset, n: store.r.zrevrangebyscore(index, hi, lo, start=offset, num=n, withscores=True)


def search(store: JobStore, q: JobQuery, *, tenant: str, catalogue: Catalogue | None = None) -> dict[str, Any]:
    """One page of ``tenant``'s matching records, newest first (see module docs for the fields).

    With ``catalogue`` (:mod:`falq.shared.catalogue`), finished jobs Redis no longer holds come
    from it too (one indexed SQL query, the tenant's rows only), merged newest first by creation."""
    fetch = _index_pages(store, q, tenant)
    found: list[JobRecord] = []
    scanned, walked, offset, last_score, more = 0, 0, 0, None, True
    while len(found) < q.limit and walked < SCAN_CAP:
        rows = fetch(offset, PAGE)
        if not rows:
            more = False
            break
        offset += len(rows)
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m, _ in rows]
        consumed_all = True
        for i, ((_, score), rec) in enumerate(zip(rows, store.get_many(ids), strict=True)):
            walked += 1
            last_score = float(score)
            if rec is None or rec.tenant != tenant:
                continue
            scanned += 1
            if matches(rec, q) and record_matches(rec, text=q.text, batch_id=q.batch_id):
                found.append(rec)
                if len(found) >= q.limit:
                    consumed_all = i == len(rows) - 1
                    break
        if len(rows) < PAGE and consumed_all:
            more = False
            break
    next_until = last_score if more else None
    history = "included" if catalogue is not None else "off"
    if catalogue is not None and (q.state is None or q.state in TERMINAL):
        from falq.shared.catalogue.store import CatalogueQuery

        try:
            archived = catalogue.search(CatalogueQuery(
                state=q.state, endpoint=q.endpoint, tenant=tenant, batch_id=q.batch_id, since=q.since,
                until=q.until, metadata=q.metadata, text=q.text, limit=q.limit))
        except CatalogueUnavailable:  # live jobs still answer; the page says history is missing
            archived, history = [], "unavailable"
        found = merge_newest(found, archived, q.limit)
        more = len(found) >= q.limit
        next_until = found[-1].created_at if more else None
    return {
        "jobs": [r.public() for r in found],
        "count": len(found),
        "scanned": scanned,
        "truncated": more and len(found) < q.limit,
        "next_until": next_until,
        "history": history,
    }
