"""Records falq's metrics into Redis from the runner's middleware hooks.

Every figure goes to Redis (pipelined ``HINCRBY``/``HINCRBYFLOAT``, one round trip per
hook), never to process memory, so the exporter sees the sum over all worker processes
and hosts and a restarted worker loses nothing. See :mod:`falq.shared.metrics` for the layout.

What is recorded, and when:

* every transition (``falq_transitions_total``); entering a terminal state counts the
  job as finished by state and endpoint and in the per-minute counter (jobs/min);
* entering ``in_progress``: fal queue wait of this attempt (submitted -> in progress);
* entering ``mirroring`` (fal finished a request successfully, which fal bills): the
  inference time fal reported and the job's cost (spend): fal's billed amount when the
  result carried ``x-fal-billable-units``, else the price-table estimate;
* entering ``completed``: fal-completion -> image-in-S3 time, and enqueue -> completed;
* ``failed``: the final error's type (``falq_failures_total{reason}``);
* per tenant (``tenant_finished|{state}|{tenant}``, ``tenant_spend|{tenant}``): jobs finished
  and spend; the exporter folds tenants no longer in the store into ``other`` (bounded labels);
* every retryable error (``falq_retries_total{reason}``) and every wait (``reason`` is
  ``retry``, ``limit``, ``budget`` ...) with its length.
"""

from __future__ import annotations

import logging
import time

import redis

from falq.shared.jobs.records import ErrorInfo, JobRecord
from falq.shared.metrics import FINISHED, MINUTE_TTL_S, counters_key, minute_key, observe, spend_key, utc_day
from falq.workers.middleware import Middleware

log = logging.getLogger("falq.metrics")


class MetricsMiddleware(Middleware):
    """Writes falq's metrics to Redis; hooks never raise (a metric must not break a job).

    Parameters:
        client: the worker's Redis client.
        prefix: ``FALQ_KEY_PREFIX``.

    Example::

        ctx.middleware.append(MetricsMiddleware(ctx.redis, ctx.settings.key_prefix))
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.prefix = prefix
        self.counters = counters_key(prefix)

    def after_transition(self, rec: JobRecord, old: str, new: str) -> None:
        now = rec.timestamps.get(new, time.time())
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(self.counters, f"transition|{old}|{new}", 1)
        if new == "in_progress" and rec.submitted_at:
            observe(pipe, self.prefix, "queue_wait", rec.endpoint, now - rec.submitted_at)
        elif new == "mirroring":
            if rec.inference_time is not None:
                observe(pipe, self.prefix, "inference", rec.endpoint, rec.inference_time)
            if rec.cost:  # fal's billed amount when it reported one, else the estimate
                pipe.hincrbyfloat(self.counters, f"spend|{rec.endpoint}", rec.cost)
                pipe.hincrbyfloat(self.counters, f"tenant_spend|{rec.tenant}", rec.cost)
                day = spend_key(self.prefix, utc_day(now))
                pipe.incrbyfloat(day, rec.cost)
                pipe.expire(day, 40 * 86400)
        if new == "completed":
            if rec.fal_completed_at:
                observe(pipe, self.prefix, "mirror", rec.endpoint, now - rec.fal_completed_at)
            observe(pipe, self.prefix, "end_to_end", rec.endpoint, now - rec.created_at)
        if new == "failed":
            reason = rec.error.type if rec.error else "unknown"
            pipe.hincrby(self.counters, f"failure|{reason}", 1)
        if new in FINISHED:
            pipe.hincrby(self.counters, f"finished|{new}|{rec.endpoint}", 1)
            pipe.hincrby(self.counters, f"tenant_finished|{new}|{rec.tenant}", 1)
            minute = minute_key(self.prefix, int(now // 60))
            pipe.hincrby(minute, new, 1)
            pipe.expire(minute, MINUTE_TTL_S)
        self._run(pipe)

    def after_error(self, rec: JobRecord, error: ErrorInfo) -> None:
        if error.retryable:
            self._run(self.r.pipeline(transaction=False).hincrby(self.counters, f"retry|{error.type}", 1))

    def after_wait(self, rec: JobRecord, reason: str, seconds: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(self.counters, f"waits|{reason}", 1)
        pipe.hincrbyfloat(self.counters, f"wait_s|{reason}", max(0.0, float(seconds)))
        self._run(pipe)

    def _run(self, pipe: redis.client.Pipeline) -> None:  # type: ignore[type-arg]
        try:
            pipe.execute()
        except redis.RedisError as exc:  # metrics are best effort; the job record is the truth
            log.warning("could not record metrics (%s)", type(exc).__name__)
