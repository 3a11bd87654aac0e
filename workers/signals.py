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
    from falq.workers.maintenance.reaper import start_reaper, start_takeover
    from falq.workers.maintenance.recovery import start_sweeper
    from falq.workers.tasks import get_context

    interval = app.conf.broker_transport_options.get("unacked_restore_interval", 10)
    start_sweeper(app, float(interval))
    ctx = get_context()
    start_reaper(app, ctx.store, ctx.settings)
    # Per-job callbacks from the Redis outbox; stops claiming on a warm shutdown.
    start_callbacks(ctx.store, ctx.settings, ctx.callback_http, stop=ctx.shutting_down)
    if ctx.settings.catalogue:  # finished jobs into the SQL catalogue (falq.workers.maintenance.archive)
        from falq.workers.maintenance.archive import start_archiver

        start_archiver(ctx.store, ctx.settings, ctx.storage, stop=ctx.shutting_down)
    # Children of jobs that just ended (the chain:done stream, falq.workers.maintenance.chains).
    from falq.workers.maintenance.chains import start_chains

    start_chains(ctx.store, ctx.settings, app, stop=ctx.shutting_down)
    if ctx.settings.takeover:
        start_takeover(app, ctx.store, ctx.settings, ctx.leases)
        # A host cut off from fal or S3 (Redis still reachable) hands its jobs to hosts that are not.
        from falq.workers.maintenance.reach import Reach

        ctx.reach = Reach(ctx.redis, ctx.settings, owner=ctx.leases.owner).start()
    # Fair dispatch ticks and the recovery of dispatched-unpublished jobs (falq.workers.maintenance.dispatcher).
    from falq.workers.maintenance.dispatcher import start_dispatcher

    start_dispatcher(app, ctx)


def _on_shutdown(**_: Any) -> None:
    # Running steps see this flag within a second, re-publish their job and return, so a
    # warm shutdown finishes quickly and loses nothing.
    from falq.workers.tasks import get_context

    get_context().shutting_down.set()
