"""falq's own metrics, kept in Redis so they are global across every worker process and host.

Workers write (``workers.metrics.MetricsMiddleware``); the Prometheus exporter
(``falq metrics``) and the terminal view (``falq top``) read. Nothing here lives in a
process's memory, so a worker restart loses no figure, and one scrape sees all workers.

Layout (``{p}`` is ``FALQ_KEY_PREFIX``):

* ``{p}:metrics:counters`` -- hash of counters, field ``kind|label|label`` -> number:
  ``finished|{state}|{endpoint}``, ``transition|{old}|{new}``, ``retry|{error type}``,
  ``failure|{error type}``, ``waits|{reason}``, ``wait_s|{reason}``, ``spend|{endpoint}``,
  ``tenant_finished|{state}|{tenant}``, ``tenant_spend|{tenant}``. The tenant is a label with
  a bound: :meth:`Snapshot.labelled` folds every tenant not in ``{p}:tenants`` (at most
  ``MAX_TENANTS``, plus ``default``) into ``other``.
* ``{p}:metrics:hist:{name}`` -- one histogram per hash: ``{endpoint}|{i}`` counts the
  observations in bucket ``i`` (not cumulative; ``i == len(BUCKETS)`` is ``+Inf``), plus
  ``{endpoint}|sum``. The count is the buckets' total, computed when read (one command less
  per observation); a ``{endpoint}|count`` field older versions wrote is ignored.
* ``{p}:metrics:minute:{epoch minute}`` -- hash ``{completed, failed, cancelled}`` for
  jobs per minute; expires after :data:`MINUTE_TTL_S`.
* ``{p}:metrics:spend:{yyyy-mm-dd}`` -- estimated $ billed that UTC day (float string).

Read, when the global limiter runs (``shared.limits``): ``{p}:spend:{day}`` (the budget's
reservations, integer micro-dollars), ``{p}:limits:{key_id}:slots`` (requests outstanding
at fal), ``{p}:limits:config`` (the runtime cap and daily budget), and per fal key id in
``{p}:limits:keys`` its ``:paused`` (fal answered "User is locked") and ``:waiting:{why}``
(jobs the limiter holds back, and why). Read when the catalogue runs: ``{p}:ended``, the
end-of-job stream, for the finished jobs still to be copied into SQL (its group ``archivers``).

Example::

    snap = read_snapshot(redis.Redis.from_url(url), settings)
    snap.jobs_per_minute(5), snap.states["failed"], snap.quantile("inference", 0.99)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from falq.shared.jobs.ended import backlog
from falq.shared.jobs.records import AT_FAL, STATES
from falq.shared.keys import Keys
from falq.shared.redisconn import text as as_text
from falq.shared.settings import Settings
from falq.shared.tenants.store import DEFAULT_TENANT, MAX_TENANTS

#: The ``tenant`` label of every tenant no longer in the store.
OTHER_TENANT = "other"

#: Histogram bucket upper bounds in seconds (fal queue waits run from sub-second to many minutes).
BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
#: The histograms falq records, with their help text.
HISTOGRAMS: dict[str, str] = {
    "queue_wait": "Time a request waited in fal's queue (submitted -> IN_PROGRESS), seconds",
    "inference": "Inference time fal reported for a finished request, seconds",
    "mirror": "Time from fal's completion to every image stored in S3, seconds",
    "end_to_end": "Time from enqueue to completed (image in S3), seconds",
}
FINISHED = ("completed", "failed", "cancelled")
MINUTE_TTL_S = 3 * 3600


def counters_key(prefix: str) -> str:
    return Keys(prefix).metrics_counters


def hist_key(prefix: str, name: str) -> str:
    return Keys(prefix).metrics_hist(name)


def minute_key(prefix: str, minute: int) -> str:
    return Keys(prefix).metrics_minute(minute)


def utc_day(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime("%Y-%m-%d")


def spend_key(prefix: str, day: str) -> str:
    """falq's own estimate of the day's spend (written at every fal completion)."""
    return Keys(prefix).metrics_spend(day)


def budget_spend_key(prefix: str, day: str) -> str:
    """The key the budget code keeps (preferred when it exists)."""
    return Keys(prefix).spend(day)


def bucket_index(seconds: float) -> int:
    for i, bound in enumerate(BUCKETS):
        if seconds <= bound:
            return i
    return len(BUCKETS)


def observe(pipe: Any, prefix: str, name: str, endpoint: str, seconds: float) -> None:
    """Queue one histogram observation on ``pipe`` (a Redis pipeline)."""
    seconds = max(0.0, float(seconds))
    key = hist_key(prefix, name)
    pipe.hincrby(key, f"{endpoint}|{bucket_index(seconds)}", 1)
    pipe.hincrbyfloat(key, f"{endpoint}|sum", seconds)


# --- reading ---------------------------------------------------------------------------------


@dataclass
class Histogram:
    """One histogram for one endpoint: per-bucket counts (not cumulative), sum, count."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def merge(self, other: Histogram) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.sum += other.sum
        self.count += other.count

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs as Prometheus wants them, ending with ``+Inf``."""
        out, total = [], 0
        for bound, n in zip([*[_fmt(b) for b in BUCKETS], "+Inf"], self.buckets, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimate a quantile by linear interpolation inside its bucket (as PromQL does)."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank, seen = q * total, 0
        for i, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                lo = BUCKETS[i - 1] if i > 0 else 0.0
                if i >= len(BUCKETS):  # the +Inf bucket: the best we can say is its lower bound
                    return BUCKETS[-1]
                return lo + (BUCKETS[i] - lo) * (rank - seen) / n
            seen += n
        return BUCKETS[-1]


def _fmt(bound: float) -> str:
    return repr(float(bound))


@dataclass
class Snapshot:
    """Everything ``falq metrics`` and ``falq top`` show, read from Redis in one go."""

    taken_at: float
    states: dict[str, int]
    counters: dict[str, float]
    histograms: dict[str, dict[str, Histogram]]
    minutes: dict[int, dict[str, int]]
    queue_depth: dict[str, int]
    unacked: int | None
    limiter_slots: dict[str, int]
    outstanding_cap: int | None
    spend_today: float
    spend_source: str
    # Added for the alert rules (ops/prometheus/alerts.yml); defaults keep older callers working.
    #: The daily budget in dollars (runtime config, else the setting); None = no budget.
    budget_daily: float | None = None
    #: fal key id -> 1 while submissions for that key are paused (locked account), else 0.
    paused_keys: dict[str, int] = field(default_factory=dict)
    #: Why jobs wait in the limiter (``budget``, ``locked``, ``interactive``, ``bulk``) -> jobs.
    waiting: dict[str, int] = field(default_factory=dict)
    #: Finished jobs not yet in the SQL catalogue (0 when there is no ``{p}:archive`` stream).
    archive_lag: int = 0
    #: The tenants in the store (``default`` always): the values the ``tenant`` label may take,
    #: with ``other`` for the rest.
    tenants: list[str] = field(default_factory=lambda: [DEFAULT_TENANT])
    #: Per tenant, from fair dispatch (:class:`falq.shared.fairshare.scheduler.TenantFigures`): spend today,
    #: jobs waiting in its ready sets per lane, dispatched, and requests outstanding at fal.
    fair: list[Any] = field(default_factory=list)

    @property
    def outstanding(self) -> int:
        """Requests outstanding at fal: the limiter's slots if it keeps them, else job states."""
        if self.limiter_slots:
            return sum(self.limiter_slots.values())
        return sum(self.states.get(s, 0) for s in AT_FAL)

    def labelled(self, kind: str) -> dict[tuple[str, ...], float]:
        """Counters of one kind, keyed by their labels: ``labelled("retry")[("fal_transient",)]``.

        For the ``tenant_*`` kinds the last label is the tenant, folded into ``other`` unless it
        is one of :attr:`tenants` (so the label stays bounded whatever names old jobs carry).
        """
        out: dict[tuple[str, ...], float] = {}
        known = set(self.tenants)
        for name, value in self.counters.items():
            parts = name.split("|")
            if parts[0] == kind:
                labels = tuple(parts[1:])
                if kind.startswith("tenant_") and labels and labels[-1] not in known:
                    labels = (*labels[:-1], OTHER_TENANT)
                out[labels] = out.get(labels, 0.0) + value
        return out

    def finished_in(self, minutes: int, state: str = "completed") -> float:
        """Jobs that reached ``state`` in the last ``minutes`` x 60 seconds.

        Counts are kept per clock minute; the window's oldest minute is counted for the part
        of it that falls inside the window (a sliding window, not a jumpy clock-minute one).
        """
        now = int(self.taken_at // 60)
        part = (self.taken_at % 60) / 60
        full = sum(self.minutes.get(m, {}).get(state, 0) for m in range(now - minutes + 1, now + 1))
        return full + self.minutes.get(now - minutes, {}).get(state, 0) * (1 - part)

    def jobs_per_minute(self, minutes: int, state: str = "completed") -> float:
        """Average rate over the last ``minutes`` minutes."""
        return self.finished_in(minutes, state) / minutes

    def histogram(self, name: str) -> Histogram:
        """One histogram merged across endpoints."""
        merged = Histogram()
        for h in self.histograms.get(name, {}).values():
            merged.merge(h)
        return merged

    def quantile(self, name: str, q: float) -> float | None:
        return self.histogram(name).quantile(q)


def lane_queues(settings: Settings) -> dict[str, str]:
    return {"interactive": settings.queue_interactive, "bulk": settings.queue_bulk}


def _priority_lists(queue: str) -> list[str]:
    # kombu's Redis transport keeps one list per priority step: "q", "q\x06\x163", ...
    # (the default steps are 0, 3, 6, 9; step 0 is the bare name).
    return [queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9))]


def read_snapshot(r: redis.Redis, settings: Settings, *, now: float | None = None) -> Snapshot:
    """Read falq's metrics, job counts, queue depths and spend from Redis (one round trip)."""
    p = settings.key_prefix
    now = time.time() if now is None else now
    minute = int(now // 60)
    minutes = list(range(minute - 15, minute + 1))
    day = utc_day(now)
    # A broker that follows a Sentinel redis_url is read through ``r`` (its Sentinel client).
    broker_is_redis = settings.broker.startswith(("redis://", "rediss://", "unix://")) or (
        settings.broker == settings.redis_url)
    queues = lane_queues(settings)
    pipe = r.pipeline(transaction=False)
    for s in STATES:
        pipe.zcard(Keys(p).state(s))
    pipe.hgetall(counters_key(p))
    for name in HISTOGRAMS:
        pipe.hgetall(hist_key(p, name))
    for m in minutes:
        pipe.hgetall(minute_key(p, m))
    pipe.get(budget_spend_key(p, day))
    pipe.get(spend_key(p, day))
    pipe.hget(Keys(p).limits_config, "max_outstanding")
    pipe.hget(Keys(p).limits_config, "budget_daily")
    res = pipe.execute()
    # The tenant label's allowed values (bounded by MAX_TENANTS at `falq tenants add`).
    tenants = sorted({DEFAULT_TENANT, *(as_text(t) for t in r.hkeys(Keys(p).tenants))})[: MAX_TENANTS + 1]
    states: dict[str, int] = {s: int(x) for s, x in zip(STATES, res[: len(STATES)], strict=True)}
    i = len(STATES)
    counters = {as_text(k): float(v) for k, v in res[i].items()}
    i += 1
    histograms = {name: _histograms(res[i + n]) for n, name in enumerate(HISTOGRAMS)}
    i += len(HISTOGRAMS)
    mins = {m: {as_text(k): int(v) for k, v in res[i + n].items()} for n, m in enumerate(minutes)}
    i += len(minutes)
    budget, own, configured_cap, configured_budget = res[i], res[i + 1], res[i + 2], res[i + 3]
    # The budget keeps integer micro-dollars reserved at admission (shared.limits); prefer it.
    spend, source = ((int(float(as_text(budget))) / 1e6, "budget") if budget is not None
                     else (float(own or 0.0), "estimate"))
    depth: dict[str, int] = {}
    unacked: int | None = None
    if broker_is_redis:
        broker = r if settings.broker == settings.redis_url else redis.Redis.from_url(settings.broker)
        bp = broker.pipeline(transaction=False)
        for q in queues.values():
            for name in _priority_lists(q):
                bp.llen(name)
        bp.hlen("unacked")
        try:
            lens = bp.execute()
        finally:
            if broker is not r:
                broker.close()
        for n, lane in enumerate(queues):
            depth[lane] = sum(int(x) for x in lens[n * 4:(n + 1) * 4])
        unacked = int(lens[-1])
    return Snapshot(
        taken_at=now, states=states, counters=counters, histograms=histograms, minutes=mins,
        queue_depth=depth, unacked=unacked, limiter_slots=_limiter_slots(r, p),
        outstanding_cap=_cap(configured_cap, settings),
        spend_today=spend, spend_source=source,
        budget_daily=_budget(configured_budget, settings), **_limiter_waits(r, p),
        archive_lag=_archive_lag(r, p) if settings.catalogue else 0,
        tenants=tenants, fair=_fair_figures(r, settings, tenants),
    )


def _fair_figures(r: redis.Redis, settings: Settings, tenants: list[str]) -> list[Any]:
    """Per-tenant fair-share figures (:meth:`falq.shared.fairshare.scheduler.FairShare.figures`), bounded to
    the tenants in the store (the others, names of old jobs, are left out)."""
    from falq.shared.fairshare.scheduler import FairShare

    known = set(tenants)
    return [f for f in FairShare(r, settings).figures(tenants) if f.tenant in known]


def _limiter_slots(r: redis.Redis, prefix: str) -> dict[str, int]:
    """Live slots per fal key id, if the global limiter runs (``falq.shared.limits.store``).

    The limiter keeps ``{p}:limits:{key_id}:slots``, a ZSET of job id -> lease expiry in
    ms (Redis time); a slot whose lease expired belongs to a dead worker and is not
    counted. Without a limiter this returns nothing and the outstanding count comes from
    job states instead.
    """
    keys = list(r.scan_iter(match=Keys(prefix).limits_slots_pattern, count=200))
    if not keys:
        return {}
    sec, usec = r.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    out: dict[str, int] = {}
    for raw in keys:
        key_id = as_text(raw)[len(prefix) + len(":limits:"):].rsplit(":slots", 1)[0]
        if r.type(raw) == b"zset":
            out[key_id] = int(r.zcount(raw, now_ms, "+inf"))
    return out


def _cap(configured: Any, settings: Settings) -> int | None:
    """The cap on outstanding requests: the limiter's runtime config, else the setting; 0 = none."""
    value: Any = as_text(configured) if configured is not None else getattr(settings, "max_outstanding", None)
    try:
        cap = int(float(value))
    except (TypeError, ValueError):
        return None
    return cap if cap > 0 else None


def _budget(configured: Any, settings: Settings) -> float | None:
    """The daily budget: the limiter's runtime config (``none`` = no budget), else the setting."""
    value: Any = as_text(configured) if configured is not None else getattr(settings, "budget_daily", None)
    try:
        budget = float(value)
    except (TypeError, ValueError):
        return None
    return budget if budget > 0 else None


#: The limiter's reasons to hold a job back (``{p}:limits:{kid}:waiting:{why}``, shared/lua/limiter.lua).
WAIT_REASONS = ("interactive", "bulk", "budget", "locked")


def _limiter_waits(r: redis.Redis, prefix: str) -> dict[str, dict[str, int]]:
    """``paused_keys`` and ``waiting`` for every fal key a worker registered (``{p}:limits:keys``).

    A waiting entry's score is its expiry (ms, Redis time): expired ones are not counted.
    """
    kids = sorted(as_text(k) for k in r.hkeys(Keys(prefix).limits_keys))
    if not kids:
        return {"paused_keys": {}, "waiting": {}}
    sec, usec = r.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    pipe = r.pipeline(transaction=False)
    keys = Keys(prefix)
    for kid in kids:
        pipe.exists(keys.limits_paused(kid))
        for why in WAIT_REASONS:
            pipe.zcount(keys.limits_waiting(kid, why), now_ms, "+inf")
    res = iter(pipe.execute())
    paused: dict[str, int] = {}
    waiting = dict.fromkeys(WAIT_REASONS, 0)
    for kid in kids:
        paused[kid] = int(bool(next(res)))
        for why in WAIT_REASONS:
            waiting[why] += int(next(res))
    return {"paused_keys": paused, "waiting": waiting}


def _archive_lag(r: redis.Redis, prefix: str) -> int:
    """End-of-job entries the archivers have not acknowledged (and those of an older release's
    ``{p}:archive``): pending plus not yet delivered (:func:`falq.shared.jobs.ended.backlog`)."""
    keys = Keys(prefix)
    return backlog(r, [keys.ended, keys.archive], "archivers")


def _histograms(raw: dict[Any, Any]) -> dict[str, Histogram]:
    out: dict[str, Histogram] = {}
    for k, v in raw.items():
        endpoint, _, part = as_text(k).rpartition("|")
        h = out.setdefault(endpoint, Histogram())
        if part == "sum":
            h.sum = float(v)
        elif part.isdigit() and int(part) < len(h.buckets):
            h.buckets[int(part)] = int(v)
    for h in out.values():
        # Every observation lands in exactly one bucket (the last is +Inf), so their total is
        # the count, for histograms written by this version and by older ones alike.
        h.count = sum(h.buckets)
    return out




def fmt_seconds(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.1f}s" if v < 120 else f"{v / 60:.1f}m"
