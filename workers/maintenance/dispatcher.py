"""The worker side of fair dispatch (:mod:`falq.shared.fairshare.scheduler`): ticks and recovery.

Every worker process runs a thread that, every ``FALQ_FAIR_TICK_S`` (jittered), dispatches
(:meth:`FairShare.try_dispatch`) and, one process at a time, publishes dispatched jobs whose
dispatcher died before publishing (:meth:`FairShare.recover_dispatched`). :func:`room_freed`
dispatches the moment room frees (a release, an admission, a park). See
docs/internals/fair-dispatch.md.

Example::

    start_dispatcher(app, ctx)     # what the worker_ready signal does
"""

from __future__ import annotations

import logging
import random
import threading
from typing import TYPE_CHECKING

from celery import Celery

from falq.shared.fairshare.scheduler import FairShare

if TYPE_CHECKING:
    from falq.workers.context import WorkerContext

log = logging.getLogger("falq.dispatcher")

_fair: dict[int, FairShare] = {}
_app: list[Celery] = []


def bind_app(app: Celery) -> None:
    """The Celery app this process publishes dispatched jobs with (set when falq's task is registered)."""
    _app[:] = [app]


def fair_for(ctx: WorkerContext) -> FairShare:
    """The process' :class:`FairShare` (scripts registered once)."""
    key = id(ctx)
    if key not in _fair:
        _fair[key] = FairShare(ctx.redis, ctx.settings)
    return _fair[key]


def room_freed(ctx: WorkerContext) -> None:
    """Dispatch room may have freed: dispatch now (never raises; no app bound: the tick will)."""
    if ctx.settings.fair_dispatch and _app:
        fair_for(ctx).try_dispatch(_app[0])


def tick_once(app: Celery, ctx: WorkerContext) -> None:
    """One tick: dispatch; and, if this process wins the lock, the recovery pass."""
    fair = fair_for(ctx)
    fair.try_dispatch(app)
    lock_ms = max(500, int(ctx.settings.fair_tick_s * 900))
    if ctx.redis.set(fair.keys.fair_lock, b"1", nx=True, px=lock_ms) and fair.recover_dispatched(app):
        fair.try_dispatch(app)


def start_dispatcher(app: Celery, ctx: WorkerContext) -> threading.Thread:
    """Run :func:`tick_once` every ``FALQ_FAIR_TICK_S`` (jittered) until the worker shuts down."""
    interval = float(ctx.settings.fair_tick_s)

    def loop() -> None:
        while not ctx.shutting_down.wait(interval * random.uniform(0.8, 1.2)):
            try:
                tick_once(app, ctx)
            except Exception as exc:  # Redis may be restarting; try next tick
                log.warning("dispatch tick failed: %s", type(exc).__name__)

    thread = threading.Thread(target=loop, name="falq-fair-dispatch", daemon=True)
    thread.start()
    return thread
