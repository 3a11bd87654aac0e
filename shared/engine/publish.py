"""Publishing job messages to the broker: one small message per job step.

A message carries the job id (also used as the Celery task id, so Flower and falq name a
job alike) and a short summary for Flower; the input itself stays in the job record.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from falq.shared.jobs.records import JobRecord
from falq.shared.settings import Settings

TASK_NAME = "falq.job"


def queue_for(lane: str, settings: Settings) -> str:
    return settings.queue_bulk if lane == "bulk" else settings.queue_interactive


def summary(rec: JobRecord) -> dict[str, Any]:
    """What Flower shows about a job: never the input, never a secret."""
    return {"endpoint": rec.endpoint, "lane": rec.lane, "tenant": rec.tenant}


def publish(
    app: Celery,
    settings: Settings,
    job_id: str,
    *,
    lane: str,
    endpoint: str = "",
    countdown: float | None = None,
    producer: Any = None,
    tenant: str | None = None,
) -> None:
    """Send one step message for ``job_id`` to its lane's queue.

    ``countdown`` is capped at a quarter of the visibility timeout: a countdown message
    sits unacked in a worker's memory until due, and must never outlive the timeout
    (Celery issue #5935). The step re-publishes itself if it still has to wait.
    ``tenant`` only labels the message for Flower (``kwargsrepr``); the record is the truth.
    """
    if countdown is not None:
        countdown = max(0.0, min(countdown, settings.visibility_timeout_s / 4))
    app.send_task(
        TASK_NAME,
        args=[job_id],
        kwargs={"lane": lane, "endpoint": endpoint},
        task_id=job_id,
        queue=queue_for(lane, settings),
        countdown=countdown or None,
        producer=producer,
        argsrepr=repr([job_id]),
        kwargsrepr=repr({"endpoint": endpoint, "lane": lane, **({"tenant": tenant} if tenant else {})}),
    )
