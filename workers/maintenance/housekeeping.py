"""One maintenance pass, in one loop (``falq-maintenance``), under one lock.

Every structure that can strand work contributes a cleanup to the pass (see
docs/internals/recovery.md, "Background loops"). A pass runs every ``period_s`` (about a
second: the takeover of expired leases runs every pass, so a dead worker's job is taken over
within about a second of its lease's end). The worker that wins ``{p}:maintenance:lock`` for
this pass runs the cleanups that must run one worker at a time; a slower cleanup runs only when
its cluster-wide stamp ``{p}:maintenance:due:{name}`` has lapsed, so its cadence holds however
many workers there are. Cleanups that every worker runs for itself (its dispatch tick) run
outside the lock. A cleanup that fails is logged and does not stop the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from celery import Celery

from falq.shared.jobs.ended import GROUPS as ENDED_GROUPS
from falq.shared.jobs.ended import trim as ended_trim
from falq.shared.keys import Keys
from falq.workers.loops import every
from falq.workers.maintenance.chains import chain_sweep
from falq.workers.maintenance.dispatcher import dispatch_tick, recount_tick, recover_tick
from falq.workers.maintenance.reaper import prune_expired, reap_once, takeover_once
from falq.workers.maintenance.recovery import needs_sweeper, sweep_once

if TYPE_CHECKING:
    from falq.workers.context import WorkerContext

log = logging.getLogger("falq.maintenance")

UNACKED_EVERY_S = 10.0
"""Default cadence of kombu's unacked sweep (the broker's ``unacked_restore_interval``)."""


@dataclass(frozen=True)
class Cleanup:
    """One structure's contribution to the pass.

    Attributes:
        name: names the cleanup in logs and in its ``due`` stamp.
        fn: the cleanup itself.
        every_s: None: every pass; else at most once per ``every_s`` across all workers.
        locked: run by the pass-lock holder only (False: every worker, for itself).
    """

    name: str
    fn: Callable[[], object]
    every_s: float | None = None
    locked: bool = True


class MaintenancePass:
    """The cleanups of one worker, run by :meth:`run_once` (one pass)."""

    def __init__(self, client: redis.Redis, keys: Keys, period_s: float, cleanups: list[Cleanup]) -> None:
        self.r = client
        self.keys = keys
        self.period_s = period_s
        self.cleanups = cleanups

    def run_once(self) -> list[str]:
        """One pass; returns the names of the cleanups that ran."""
        ran: list[str] = []
        locked = [c for c in self.cleanups if c.locked]
        if locked and self.r.set(self.keys.maintenance_lock, b"1", nx=True, px=max(500, int(self.period_s * 900))):
            for c in locked:
                if c.every_s is None or self._due(c):
                    self._run(c, ran)
        for c in self.cleanups:
            if not c.locked:
                self._run(c, ran)
        return ran

    def _due(self, c: Cleanup) -> bool:
        assert c.every_s is not None
        return bool(self.r.set(self.keys.maintenance_due(c.name), b"1", nx=True, px=max(1, int(c.every_s * 1000))))

    def _run(self, c: Cleanup, ran: list[str]) -> None:
        try:
            c.fn()
            ran.append(c.name)
        except Exception as exc:  # Redis or the broker may be restarting; the next pass tries again
            log.warning("%s failed: %s", c.name, type(exc).__name__)


def build_pass(app: Celery, ctx: WorkerContext) -> MaintenancePass:
    """This worker's pass: the cleanups its settings and broker call for, with their cadences."""
    s = ctx.settings
    store = ctx.store
    cleanups: list[Cleanup] = []
    period = float(s.fair_tick_s)
    if s.takeover:
        # Expired leases: read every pass (one ZRANGEBYSCORE when nothing died).
        period = min(period, max(0.2, min(1.0, s.lease_ttl_s / 4)))
        cleanups.append(Cleanup("takeover", lambda: takeover_once(app, store, s, ctx.leases)))
    # Fair dispatch's dispatched-unpublished jobs (those the limiter has not admitted yet).
    cleanups.append(Cleanup("fair recovery", lambda: recover_tick(app, ctx)))
    # Jobs whose delivery was lost without a lease (the reaper), then index entries of expired records.
    cleanups.append(Cleanup("reaper", lambda: (reap_once(app, store, s), prune_expired(store, s)),
                            every_s=max(2.0, s.visibility_timeout_s / 3)))
    # The limiter's expired waiting and slot entries (memory only: admission counts live entries),
    # and every dispatched job looked at (stale entries freed) before the tenants' counts are recounted.
    cleanups.append(Cleanup("limiter housekeeping", lambda: ctx.admission.housekeeping(), every_s=30.0))
    cleanups.append(Cleanup("ledger recount", lambda: recount_tick(app, ctx), every_s=30.0))
    # The end-of-job stream: entries every consumer group acknowledged (the catalogue's group
    # only where it is on: a group that does not exist yet is created first, never skipped).
    groups = [g for g in ENDED_GROUPS if g != "archivers" or s.catalogue]
    cleanups.append(Cleanup("end-of-job trim", lambda: ended_trim(ctx.redis, store.keys, groups), every_s=10.0))
    # Chain children a crash left waiting (released, or ended with their parent).
    cleanups.append(Cleanup("chain sweep", chain_sweep(app, store, s), every_s=float(s.chain_sweep_s)))
    if needs_sweeper(app):  # kombu's unacked messages of dead consumers (Redis brokers)
        interval = float(app.conf.broker_transport_options.get("unacked_restore_interval", UNACKED_EVERY_S))
        cleanups.append(Cleanup("unacked sweep", lambda: sweep_once(app), every_s=interval))
    # This worker's own dispatch tick and its buffered metrics (every worker, unlocked).
    cleanups.append(Cleanup("dispatch tick", lambda: dispatch_tick(app, ctx), locked=False))
    cleanups.append(Cleanup("metrics flush", lambda: _flush(ctx), locked=False))
    return MaintenancePass(ctx.redis, store.keys, period, cleanups)


def _flush(ctx: WorkerContext) -> None:
    for m in ctx.middleware:
        m.flush()


def start_maintenance(app: Celery, ctx: WorkerContext) -> threading.Thread:
    """Run this worker's pass every period (jittered 10 %) until the worker shuts down."""
    mp = build_pass(app, ctx)
    return every("falq-maintenance", mp.period_s, mp.run_once, ctx.shutting_down, jitter=0.1, logger=log,
                 what="maintenance pass")


__all__ = ["Cleanup", "MaintenancePass", "build_pass", "start_maintenance"]
