"""Celery signal hooks: stop running steps promptly when the worker shuts down."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutting_down


def install() -> None:
    worker_shutting_down.connect(_on_shutdown, weak=False)
    worker_ready.connect(_on_ready, weak=False)


def _on_ready(sender: Any = None, **_: Any) -> None:
    from falq.workers.app import app
    from falq.workers.callbacks.sender import start_callbacks
    from falq.workers.consumers import Consumers
    from falq.workers.maintenance.housekeeping import start_maintenance
    from falq.workers.tasks import get_context

    ctx = get_context()
    # Takeover of expired leases, the reaper, kombu's unacked sweep, fair dispatch's tick and
    # recovery: one pass, one loop (falq.workers.maintenance.housekeeping).
    start_maintenance(app, ctx)
    # One consumer loop (falq.workers.consumers), stopping on a warm shutdown: the consumers of
    # the end-of-job stream: per-job callbacks (through the Redis outbox), children of jobs that
    # just ended (falq.workers.maintenance.chains) and finished jobs into the SQL catalogue.
    consumers = Consumers()
    start_callbacks(ctx.store, ctx.settings, ctx.callback_http, into=consumers)
    from falq.workers.maintenance.chains import start_chains

    start_chains(ctx.store, ctx.settings, app, into=consumers)
    if ctx.settings.catalogue:
        from falq.workers.maintenance.archive import start_archiver

        start_archiver(ctx.store, ctx.settings, ctx.storage, into=consumers)
    consumers.start(ctx.shutting_down)
    if ctx.settings.takeover:
        # A host cut off from fal or S3 (Redis still reachable) hands its jobs to hosts that are not.
        from falq.workers.maintenance.reach import Reach

        ctx.reach = Reach(ctx.redis, ctx.settings, owner=ctx.leases.owner).start()


def _on_shutdown(**_: Any) -> None:
    # Running steps see this flag within a second, re-publish their job and return, so a
    # warm shutdown finishes quickly and loses nothing.
    from falq.workers.tasks import get_context

    get_context().shutting_down.set()
