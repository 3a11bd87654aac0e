"""The worker side of fair dispatch (:mod:`falq.shared.fairshare.scheduler`): ticks and recovery.

Every worker process's maintenance pass (:mod:`falq.workers.maintenance.housekeeping`, about
every ``FALQ_FAIR_TICK_S``) dispatches (:func:`dispatch_tick`) and, one process at a time,
publishes dispatched jobs whose dispatcher died before publishing (:func:`recover_tick`). :func:`room_freed`
dispatches the moment room frees (a release, an admission, a park). See
docs/internals/fair-dispatch.md.

Example::

    dispatch_tick(app, ctx)        # what every worker's maintenance pass does
"""

from __future__ import annotations

import logging
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


def dispatch_tick(app: Celery, ctx: WorkerContext) -> None:
    """This worker's dispatch tick (every worker, every maintenance pass)."""
    fair_for(ctx).try_dispatch(app)


def recover_tick(app: Celery, ctx: WorkerContext) -> None:
    """Fair dispatch's part of the maintenance pass (one worker at a time): publish
    dispatched-unpublished jobs and free the room of finished ones, then dispatch."""
    fair = fair_for(ctx)
    if fair.recover_dispatched(app):
        fair.try_dispatch(app)


def recount_tick(app: Celery, ctx: WorkerContext) -> None:
    """The slower sweep (one worker, every half minute): every dispatched job looked at once
    (:meth:`FairShare.recover_dispatched` over all of ``{p}:inflight``), then the tenants'
    dispatched counts recounted from the ledger."""
    fair = fair_for(ctx)
    fair.recover_dispatched(app, every_dispatched=True)
    fair.recount()

