"""The safety net under the broker: re-publish jobs whose message was lost or whose worker died.

Owns two sweeps, each run by one worker at a time (a Redis lock):

* the **reaper**: unfinished jobs with no sign of life (no lease, no recent delivery in
  ``{p}:seen:{id}``, no backlog they could be waiting in) are re-published, closing the gap
  where kombu's Redis transport loses a message (celery/celery #7924, #3501);
* the **takeover**: about every second, jobs in ``{p}:holders`` past their lease's end with no
  lease are re-published, so a dead worker's jobs resume within about ``FALQ_LEASE_TTL_S`` + 1 s
  instead of the visibility timeout.

Also the per-tenant index backfill and the pruning of expired records' index entries. A
duplicate message is harmless (the lease and the record's state make it a no-op). Why and how:
docs/internals/recovery.md.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery

from falq.shared.engine.publish import publish, queue_for
from falq.shared.jobs.records import TERMINAL
from falq.shared.jobs.store import JobStore
from falq.shared.keys import Keys
from falq.shared.settings import Settings
from falq.workers.lease import LeaseKeeper

log = logging.getLogger("falq.reaper")

ACTIVE_STATES = ("queued", "submitting", "in_queue", "in_progress", "mirroring")


def seen_key(prefix: str, job_id: str) -> str:
    return Keys(prefix).seen(job_id)


def mark_seen(r: redis.Redis, settings: Settings, job_id: str) -> None:
    """Record that a message of ``job_id`` was just delivered."""
    r.set(seen_key(settings.key_prefix, job_id), b"1", ex=max(1, int(settings.visibility_timeout_s)))


def queue_depth(r: redis.Redis, queue: str) -> int:
    """Messages waiting in a Redis-broker queue, priority sub-queues included."""
    names = [queue] + [f"{queue}\x06\x16{n}" for n in range(1, 10)]
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return int(sum(pipe.execute()))


def reap_once(app: Celery, store: JobStore, settings: Settings, *, batch: int = 1000) -> list[str]:
    """One pass: re-publish every job that looks orphaned; returns their ids."""
    r = store.r
    stale_before = time.time() - settings.visibility_timeout_s
    depths = {lane: queue_depth(r, queue_for(lane, settings)) for lane in ("interactive", "bulk")}
    reaped: list[str] = []
    for state in ACTIVE_STATES:
        ids = [x.decode() for x in r.zrangebyscore(store.keys.state(state), "-inf", stale_before,
                                                   start=0, num=batch)]
        if not ids:
            continue
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(store.keys.lease(job_id))
            pipe.exists(seen_key(store.prefix, job_id))
        flags = pipe.execute()
        candidates = [j for i, j in enumerate(ids) if not flags[2 * i] and not flags[2 * i + 1]]
        for rec in store.get_many(candidates):
            if rec is None or rec.state in TERMINAL:
                continue
            # An unpublished queued job waits for fair dispatch (its ready set, or the fair
            # recovery's publish). A job past `queued` ran a step, so it was delivered whatever its
            # flag says: a dispatcher killed between the publish and the flag leaves it 0.
            if rec.state == "queued" and not store.is_published(rec.id):
                continue
            if rec.state == "queued" and depths.get(rec.lane, 0) > 0:
                continue  # may still be waiting its turn in the backlog
            mark_seen(r, settings, rec.id)  # one re-publish per visibility timeout at most
            publish(app, settings, rec.id, lane=rec.lane, endpoint=rec.endpoint)
            reaped.append(rec.id)
    if reaped:
        log.warning("re-published %d job(s) whose broker message was lost: %s", len(reaped),
                    ", ".join(reaped[:10]))
    return reaped


def takeover_once(app: Celery, store: JobStore, settings: Settings, leases: LeaseKeeper) -> list[str]:
    """Re-publish every job whose lease holder died (lease expired, never released)."""
    taken: list[str] = []
    for rec in store.get_many(leases.orphans()):
        if rec is None or rec.state in TERMINAL:
            continue
        mark_seen(store.r, settings, rec.id)
        publish(app, settings, rec.id, lane=rec.lane, endpoint=rec.endpoint)
        taken.append(rec.id)
    if taken:
        log.warning("took over %d job(s) whose worker stopped holding them: %s", len(taken), ", ".join(taken[:10]))
    return taken


def prune_expired(store: JobStore, settings: Settings, *, batch: int = 1000) -> int:
    """Drop index entries of records that expired (finished records expire after
    ``FALQ_RECORD_TTL_S``; their ids would otherwise stay in ``{p}:created`` and the finished
    ``{p}:state:*`` sets for ever). Returns how many ids were pruned."""
    r = store.r
    # With the catalogue on, an archived record lives only FALQ_ARCHIVED_TTL_S (falq.workers.maintenance.archive);
    # ids still in Redis (not archived yet, or live) are kept below whatever their age.
    keep_s = min(settings.record_ttl_s, settings.archived_ttl_s) if settings.catalogue else settings.record_ttl_s
    old = time.time() - keep_s
    pruned = 0
    for key in [store.keys.created, *(store.keys.state(s) for s in TERMINAL)]:
        ids = [x.decode() for x in r.zrangebyscore(key, "-inf", old, start=0, num=batch)]
        if not ids:
            continue
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(store.keys.job(job_id))
        gone = [j for j, there in zip(ids, pipe.execute(), strict=True) if not there]
        if gone:
            r.zrem(key, *gone)
            pruned += len(gone)
    return pruned + store.tenant_index_upkeep(old, batch=batch)  # the {p}:created:t:* indexes
