"""Fair dispatch: every tenant with waiting work gets fal's capacity in proportion to its weight.

Celery's Redis queues are FIFO: 50,000 messages of one tenant in front of another tenant's first
one would make it wait for all of them. So falq does not put a waiting job into the broker at
all. A job waits in a **ready set** of its tenant and lane (``{p}:fair:ready:{lane}:{tenant}``,
a ZSET by creation time) and is **dispatched** (taken out, then published to Celery) only when
there is room: at most ``target`` jobs are dispatched and not yet done at fal (``{p}:inflight``),
where ``target = max_outstanding x (1 + FALQ_FAIR_HEADROOM)`` (headroom 0 by default; or
``FALQ_FAIR_UNCAPPED_ROOM`` when the account has no outstanding cap), and, under a rate limit, at
most about ``FALQ_FAIR_WAIT_S`` of the rate dispatched and not yet admitted by the limiter
(``{p}:fair:unadmitted``). The broker then never holds more than about ``target`` job messages,
so its FIFO order no longer matters: the order of dispatch is the order of service.

Which tenant is dispatched next is weighted **stride scheduling**, done in one Lua script
(``shared/lua/fair.lua``): every active tenant (non-empty ready set)
has a *pass*; the tenant with the smallest pass is served and its pass grows by ``1 / weight``.
A tenant that becomes active starts at the lane's virtual time (the pass last served), so it
neither gets credit for the time it was idle (no burst) nor waits behind the others' history (no
starvation). A tenant at its own outstanding cap (``max_outstanding`` plus headroom of
dispatched jobs) or paused for its own budget is skipped and its pass is held at the virtual
time (no credit piles up while it is skipped). Interactive work is dispatched first (its lane
may fill up to twice the target), bulk gets what is left; inside the limiter interactive still
goes before bulk.

Guarantees (every step survives SIGKILL anywhere):

* **No record without a ready entry**: the job store's create script adds the record and its
  ready entry in one step (``shared/lua/job.lua``, inside ``JobStore.create``).
* **Dispatch**: the script pops ids, adds them to ``{p}:inflight`` (with the time) and returns
  them; the caller publishes each message and then marks it ``published``. A caller killed in
  between leaves ``published = 0`` records in ``{p}:inflight``: :func:`recover_dispatched`
  (run by one worker at a time on every tick) publishes those older than
  ``FALQ_FAIR_RECOVER_AFTER_S``. A record that only waits in a ready set is never published by
  any recovery (the reaper skips unpublished records). A duplicate message is harmless: leases
  and the record's state make it a no-op, so no second fal submission can follow.
* **Room freed**: the limiter's release (the request is done at fal, or never got there) frees
  the job's room in the same script (``lib.fair_free`` in ``shared/lua/lib.lua``); so does
  the save that makes a job terminal (``shared/lua/job.lua``, inside ``JobStore.save``), so a job
  that ends without a release (cancelled while waiting) leaks nothing. The limiter's admission
  takes the job out of ``{p}:fair:unadmitted``.
* **Park**: a job refused because its tenant is over its own budget goes back to its ready set
  (:meth:`FairShare.park`), so paused jobs hold neither room nor a broker message.

Who dispatches: the producer right after an enqueue; a worker the moment room frees (after a
release, an admission, a park: :func:`falq.workers.maintenance.dispatcher.room_freed`); and every worker on
a tick of ``FALQ_FAIR_TICK_S`` for anything else (:mod:`falq.workers.maintenance.dispatcher`).

``FALQ_FAIR_DISPATCH=false`` publishes every job at enqueue (plain FIFO, falq's behaviour before
tenants); ready sets left from before are still drained by the workers' ticks.

Example::

    fair = FairShare(redis_client, settings)
    fair.make_ready(rec, app)      # THE way to make an existing record runnable (see below)
    fair.dispatch(app)             # publish as many jobs as there is room for, fairly
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import redis
from celery import Celery

from falq.shared.engine.publish import publish
from falq.shared.jobs.records import TERMINAL, JobRecord
from falq.shared.jobs.store import record_from
from falq.shared.keys import HOLE, Keys, room_keys
from falq.shared.limits.store import Limiter, key_id, known_keys, tenant_spend_today
from falq.shared.redisconn import text
from falq.shared.scripts import register
from falq.shared.settings import Settings

log = logging.getLogger("falq.fairshare")

LANES = ("interactive", "bulk")

@dataclass(frozen=True)
class TenantFigures:
    """What ``falq top`` and the metrics show for one tenant."""

    tenant: str
    spend_today_usd: float
    ready: dict[str, int]
    dispatched: int
    outstanding: int


class FairShare:
    """Ready sets, fair dispatch and its recovery, for one deployment (``FALQ_KEY_PREFIX``).

    Parameters:
        client: Redis connection.
        settings: prefix, limits defaults, ``FALQ_FAIR_*``.
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.s = settings
        self.prefix = settings.key_prefix
        self.keys = Keys(self.prefix)
        self._ready = register(client, "fair.ready")
        self._dispatch = register(client, "fair.dispatch")
        self._free = register(client, "fair.free")
        self._recount = register(client, "fair.recount")
        k = self.keys
        #: The fair-dispatch room of a job (lib.fair_free).
        self._room = room_keys(k)
        self._dispatch_keys = [k.inflight, k.fair_unadmitted, k.limits_config, k.tenants, k.fair_count,
                               k.ledger, k.fair_active("interactive"), k.fair_active("bulk"),
                               k.fair_pass("interactive"), k.fair_pass("bulk"), k.fair_vt("interactive"),
                               k.fair_vt("bulk")]
        self._dispatch_tpls = [k.fair_ready(HOLE, HOLE), k.job(HOLE), k.fair_paused(HOLE),
                               k.tenant_spend(HOLE, HOLE)]

    @property
    def enabled(self) -> bool:
        return bool(self.s.fair_dispatch)

    # --- making jobs runnable --------------------------------------------------------------------
    def make_ready(self, rec: JobRecord, app: Celery | None = None, *, dispatch: bool = True) -> bool:
        """Make an existing, non-terminal record runnable: THE one path for that.

        With fair dispatch the job enters its tenant's ready set (and leaves ``{p}:inflight`` if
        it was dispatched), then, with ``dispatch`` and an ``app``, a dispatch runs. Without fair
        dispatch its message is published at once and the record marked published. Used for
        jobs released later (children of a batch or chain whose parents completed), failed
        jobs retried, and jobs whose producer died before publishing. New jobs need not call it:
        ``JobStore.create(..., fair=True)`` adds the ready entry with the record.

        Example::

            rec = store.get(child_id)          # its state just moved from waiting to queued
            FairShare(r, settings).make_ready(rec, app)
        """
        if not self.enabled:
            if app is None:
                raise ValueError("make_ready without fair dispatch publishes, so it needs the Celery app")
            publish(app, self.s, rec.id, lane=rec.lane, endpoint=rec.endpoint, tenant=rec.tenant)
            self.r.hset(self.keys.job(rec.id), "published", "1")
            return True
        ok = self._make_ready(rec)
        if ok and dispatch and app is not None:
            self.dispatch(app)
        return ok

    def park(self, rec: JobRecord) -> bool:
        """Put a job back into its ready set (its tenant is over its own budget), so it holds no
        dispatch room and no broker message while it waits. True when the job now waits there;
        the step then ends without re-publishing (its message is acked: the ready entry is its
        hand-off). False without fair dispatch: the job then waits in place, as before."""
        if not self.enabled:
            return False
        return self._make_ready(rec)

    def _make_ready(self, rec: JobRecord) -> bool:
        """``fair.ready``: the job (back) in its tenant's ready set; False if gone or terminal."""
        tenant = rec.tenant or "default"
        k = self.keys
        keys = [k.job(rec.id), k.fair_ready(rec.lane, tenant), k.fair_active(rec.lane), *self._room]
        return bool(self._ready(keys=keys, args=[rec.id, tenant, rec.created_at]))

    # --- dispatch --------------------------------------------------------------------------------
    def take(self, max_jobs: int = 500) -> list[tuple[str, str, str, str]]:
        """Run the dispatch script: ``[(job id, lane, endpoint, tenant)]`` now dispatched, to publish."""
        raw = self._dispatch(keys=self._dispatch_keys, args=[
            int(self.s.max_outstanding), float(self.s.fair_headroom), int(self.s.fair_uncapped_room),
            int(max_jobs), float(self.s.rate_per_s), float(self.s.fair_wait_s), *self._dispatch_tpls,
        ])
        vals = [text(x) for x in raw]
        return [(vals[i], vals[i + 1], vals[i + 2], vals[i + 3]) for i in range(0, len(vals), 4)]

    def dispatch(self, app: Celery, max_jobs: int = 500) -> list[str]:
        """Dispatch as many jobs as there is room for, in weighted fair order, and publish them.

        Returns their ids. A crash after the script leaves them ``published = 0`` in
        ``{p}:inflight``; :func:`recover_dispatched` publishes them later."""
        jobs = self.take(max_jobs)
        if not jobs:
            return []
        sent: list[str] = []
        try:
            with app.producer_or_acquire() as producer:
                for job_id, lane, endpoint, tenant in jobs:
                    publish(app, self.s, job_id, lane=lane, endpoint=endpoint, producer=producer, tenant=tenant)
                    sent.append(job_id)
        finally:
            if sent:
                pipe = self.r.pipeline(transaction=False)
                for job_id in sent:
                    pipe.hset(self.keys.job(job_id), "published", "1")
                pipe.execute()
        return sent

    def try_dispatch(self, app: Celery) -> list[str]:
        """:meth:`dispatch`, logging instead of raising: the jobs stay in their ready sets (or
        dispatched-unpublished, for the recovery) and a later dispatch sends them."""
        try:
            return self.dispatch(app)
        except Exception as exc:
            log.warning("fair dispatch failed (%s); the jobs wait for the next dispatch", type(exc).__name__)
            return []

    # --- recovery --------------------------------------------------------------------------------
    def free(self, job_id: str) -> bool:
        """The job stops taking dispatch room (a stale inflight entry; a job waiting at its batch's
        spend cap, so other batches, tenants and lanes go meanwhile). True if it took room."""
        return bool(self._free(keys=self._room, args=[job_id]))

    def recount(self) -> int:
        """Recount each tenant's dispatched jobs from ``{p}:inflight`` and the ledger; returns how
        many tenants' counts were wrong (0 unless something freed room outside ``lib.fair_free``)."""
        k = self.keys
        wrong = int(self._recount(keys=[k.inflight, k.ledger, k.fair_count, k.fair_owner], args=[]))
        if wrong:
            log.warning("fair dispatch: recounted the dispatched jobs of %d tenant(s)", wrong)
        return wrong

    def recover_dispatched(self, app: Celery, *, batch: int = 1000, every_dispatched: bool = False) -> list[str]:
        """Publish dispatched jobs whose dispatcher died before publishing them, and free the room
        of dispatched jobs whose record is gone or finished. Returns the published ids.

        Reads only jobs dispatched over ``FALQ_FAIR_RECOVER_AFTER_S`` ago that the limiter has not
        admitted (``{p}:fair:unadmitted``): an admitted job was delivered, so it was published,
        and a job at fal for minutes is not read again every pass. ``every_dispatched`` reads all
        of ``{p}:inflight`` instead (the slower sweep, which also finds a job freed or dispatched
        outside the scripts, such as by a worker of an older release)."""
        sec, usec = self.r.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        old = now_ms - int(self.s.fair_recover_after_s * 1000)
        scanned = self.keys.inflight if every_dispatched else self.keys.fair_unadmitted
        ids = [text(x) for x in self.r.zrangebyscore(scanned, "-inf", old, start=0, num=batch)]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(job_id), "state", "published")
        rows = pipe.execute()
        stale, lost = [], []
        for job_id, (state, published) in zip(ids, rows, strict=True):
            if state is None or text(state) in TERMINAL:
                stale.append(job_id)
            elif published != b"1":
                lost.append(job_id)
        # Gone (expired, deleted) or finished without the terminal save seeing it: free the room.
        for job_id in stale:
            self.free(job_id)
        sent = []
        for job_id in lost:
            doc, version, inp = self.r.hmget(self.keys.job(job_id), "doc", "version", "input")
            if doc is None:
                continue  # gone since it was looked at: the next look frees its room
            try:
                rec = record_from(doc, version, inp)
            except Exception:
                continue
            publish(app, self.s, job_id, lane=rec.lane, endpoint=rec.endpoint, tenant=rec.tenant)
            self.r.hset(self.keys.job(job_id), "published", "1")
            sent.append(job_id)
        if sent:
            log.warning("published %d dispatched job(s) whose dispatcher stopped before publishing: %s",
                        len(sent), ", ".join(sent[:10]))
        return sent

    # --- figures ---------------------------------------------------------------------------------
    def ready_depths(self) -> dict[str, dict[str, int]]:
        """tenant -> lane -> jobs waiting in its ready set."""
        tenants: set[str] = set()
        for lane in LANES:
            tenants.update(text(t) for t in self.r.smembers(self.keys.fair_active(lane)))
        names = sorted(tenants)
        pipe = self.r.pipeline(transaction=False)
        for t in names:
            for lane in LANES:
                pipe.zcard(self.keys.fair_ready(lane, t))
        vals = pipe.execute()
        return {t: {lane: int(vals[2 * i + j]) for j, lane in enumerate(LANES)} for i, t in enumerate(names)}

    def figures(self, tenants: list[str]) -> list[TenantFigures]:
        """Per-tenant spend today, ready-set depth per lane, dispatched jobs and requests
        outstanding at fal (through this deployment's fal key), for ``falq top`` and metrics."""
        depths = self.ready_depths()
        names = sorted(set(tenants) | set(depths))
        _, spend = tenant_spend_today(self.r, self.prefix, names)
        counts = self.r.hmget(self.keys.fair_count, names) if names else []
        # Every fal key a worker registered (and this process' own): a reader such as `falq top`
        # need not hold the key.
        kids = {key_id(self.s.fal_key_value()), *known_keys(self.r, self.prefix)}
        outstanding: Counter[str] = Counter()
        for kid in sorted(kids):
            outstanding.update(Limiter(self.r, self.s, kid=kid).tenant_outstanding(names))
        return [
            TenantFigures(t, spend.get(t, 0.0), depths.get(t, {lane: 0 for lane in LANES}),
                          max(0, int(text(c or b"0"))), outstanding.get(t, 0))
            for t, c in zip(names, counts, strict=True)
        ]

    def target(self) -> int:
        """The dispatch target now (see the module docstring)."""
        raw = self.r.hget(self.keys.limits_config, "max_outstanding")
        mo = int(float(text(raw))) if raw is not None else int(self.s.max_outstanding)
        if mo <= 0:
            return int(self.s.fair_uncapped_room)
        return mo + math.ceil(mo * self.s.fair_headroom)


