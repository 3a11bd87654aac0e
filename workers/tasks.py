"""The Celery task: run one step of a job, then re-publish it if work remains."""

from __future__ import annotations

import atexit
import logging
import time
from functools import lru_cache

from celery import Celery, Task
from celery.exceptions import Reject

from falq.shared.engine.publish import TASK_NAME, publish
from falq.shared.errors import StepCrashed, is_redis_oom
from falq.shared.jobs.records import JobRecord
from falq.shared.settings import get_settings
from falq.workers.backoff import backoff_delay
from falq.workers.context import WorkerContext
from falq.workers.steps.runner import Outcome, Runner

log = logging.getLogger("falq.tasks")


@lru_cache(maxsize=1)
def get_context() -> WorkerContext:
    """The process's worker context, built on first use (after gevent patched the process)."""
    from falq.workers.limits.gate import build_admission
    from falq.workers.metrics import MetricsMiddleware

    settings = get_settings()
    ctx = WorkerContext(settings)
    ctx.admission = build_admission(ctx)
    metrics = MetricsMiddleware(ctx.redis, settings.key_prefix)
    ctx.middleware.append(metrics)
    atexit.register(metrics.flush)  # a worker that exits writes its last second of counts
    return ctx


def register(app: Celery) -> Task:
    """Register falq's task on ``app`` and return it."""

    from falq.workers.maintenance.dispatcher import bind_app

    bind_app(app)  # fair dispatch publishes through this app when a slot frees (workers.dispatcher)

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job(self: Task, job_id: str, lane: str = "interactive", endpoint: str = "") -> str:
        ctx = get_context()
        try:
            outcome = Runner(ctx).run_step(job_id)
        except Exception as exc:  # a bug or an outage (Redis down or full): never lose the job
            if is_redis_oom(exc):
                log.warning("step of job %s stopped: Redis memory is full (maxmemory); re-publishing", job_id)
                outcome = Outcome(False, backoff_delay(3, base_s=1.0, max_s=30.0))
            else:
                log.exception("step of job %s crashed (%s); re-publishing", job_id, type(exc).__name__)
                outcome = crashed(ctx, job_id, exc)
        if outcome.done:
            return "done"
        try:
            _republish(self.app, ctx, job_id, lane, endpoint, outcome.delay)
        except Exception as exc:
            # Could not re-publish (broker down): hand the message back instead of acking it.
            log.error("could not re-publish job %s (%s); requeueing the message", job_id, type(exc).__name__)
            raise Reject(requeue=True) from None
        return f"continues in {outcome.delay:.1f}s"

    return run_job


def crashed(ctx: WorkerContext, job_id: str, exc: Exception) -> Outcome:
    """Count a crashed step; after ``FALQ_MAX_STEP_CRASHES`` in a row the job fails as
    ``step_crashed`` with the error on its record (visible, terminal) instead of looping."""
    later = Outcome(False, backoff_delay(3, base_s=1.0, max_s=30.0))
    try:
        count = ctx.store.count_crash(job_id)
        if count is None:  # the record is gone: nothing left to run
            return Outcome(True)
        if count < ctx.settings.max_step_crashes:
            return later
        error = StepCrashed(f"a step of this job crashed {count} times in a row; last: "
                            f"{type(exc).__name__}: {str(exc)[:500]}")

        def failed(r: JobRecord) -> bool:
            if r.terminal:
                return False
            r.add_error(error, retryable=False)
            r.paused = None
            r.move("failed")
            return True

        rec = ctx.store.update(job_id, failed)
        ctx.store.end_crash_streak(job_id)
        if rec.state == "failed":
            ctx.admission.release(rec)
            ctx.notify_finished(rec)
        log.error("job %s failed: %s", job_id, error)
        return Outcome(True)
    except Exception:  # the store is out of reach too: try the step again later
        log.exception("could not record the crash of job %s", job_id)
        return later


def _republish(app: Celery, ctx: WorkerContext, job_id: str, lane: str, endpoint: str, delay: float) -> None:
    """Publish the job's next step. While Redis refuses writes at ``maxmemory``, try again with
    backoff (the message stays unacked meanwhile), up to a quarter of the visibility timeout
    or until shutdown; then the caller hands the message back."""
    wait, end = 0.2, time.monotonic() + ctx.settings.visibility_timeout_s / 4
    while True:
        try:
            publish(app, ctx.settings, job_id, lane=lane, endpoint=endpoint, countdown=delay)
            return
        except Exception as exc:
            if not is_redis_oom(exc) or ctx.shutting_down.is_set() or time.monotonic() + wait > end:
                raise
            time.sleep(wait)
            wait = min(2.0, wait * 2)
