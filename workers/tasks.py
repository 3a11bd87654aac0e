"""The Celery task: run one step of a job, then re-publish it if work remains."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery, Task
from celery.exceptions import Reject

from falq.shared.dispatch import TASK_NAME, publish
from falq.shared.settings import get_settings
from falq.workers.backoff import backoff_delay
from falq.workers.context import WorkerContext
from falq.workers.runner import Outcome, Runner

log = logging.getLogger("falq.tasks")


@lru_cache(maxsize=1)
def get_context() -> WorkerContext:
    """The process's worker context, built on first use (after gevent patched the process)."""
    from falq.workers.limits_admission import build_admission
    from falq.workers.metrics import MetricsMiddleware

    settings = get_settings()
    ctx = WorkerContext(settings)
    ctx.admission = build_admission(ctx)
    ctx.middleware.append(MetricsMiddleware(ctx.redis, settings.key_prefix))
    return ctx


def register(app: Celery) -> Task:
    """Register falq's task on ``app`` and return it."""

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job(self: Task, job_id: str, lane: str = "interactive", endpoint: str = "") -> str:
        ctx = get_context()
        try:
            outcome = Runner(ctx).run_step(job_id)
        except Exception as exc:  # a bug or an outage (Redis down): never lose the job
            log.exception("step of job %s crashed (%s); re-publishing", job_id, type(exc).__name__)
            outcome = Outcome(False, backoff_delay(3, base_s=1.0, max_s=30.0))
        if outcome.done:
            return "done"
        try:
            publish(self.app, ctx.settings, job_id, lane=lane, endpoint=endpoint, countdown=outcome.delay)
        except Exception as exc:
            # Could not re-publish (broker down): hand the message back instead of acking it.
            log.error("could not re-publish job %s (%s); requeueing the message", job_id, type(exc).__name__)
            raise Reject(requeue=True) from None
        return f"continues in {outcome.delay:.1f}s"

    return run_job
