"""Records falq's metrics into Redis from the runner's middleware hooks.

Every figure ends up in Redis, so the exporter sees the sum over all worker processes and
hosts. Counters and histograms are summed in process memory and written in one pipeline at
most every :data:`FLUSH_S` (by the maintenance pass, by a later hook, and at exit): at 20 jobs/s
that is one round trip a second instead of five per job. A SIGKILLed worker loses at most that
last second of counts. Spend is the exception: it is written at once, one pipeline per billed job,
so the spend on the dashboards never misses a job fal billed. See :mod:`falq.shared.metrics`
for the layout.

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
import threading
import time
from typing import Any

import redis

from falq.shared.jobs.records import ErrorInfo, JobRecord
from falq.shared.metrics import FINISHED, MINUTE_TTL_S, counters_key, minute_key, observe, spend_key, utc_day
from falq.workers.middleware import Middleware

log = logging.getLogger("falq.metrics")


FLUSH_S = 1.0
"""Longest time a count waits in process memory before it is written to Redis."""

SPEND_DAY_TTL_S = 40 * 86400
"""How long a day's recorded spend (``{p}:metrics:spend:{day}``) is kept after its first spend."""


class _Sums:
    """A pipeline stand-in that adds up ``HINCRBY``/``HINCRBYFLOAT``/``EXPIRE`` calls, so the
    same observations can be buffered and written later as one pipeline."""

    def __init__(self) -> None:
        self.ints: dict[tuple[str, str], int] = {}
        self.floats: dict[tuple[str, str], float] = {}
        self.expiries: dict[str, int] = {}

    def hincrby(self, key: str, field: str, n: int) -> None:
        self.ints[(key, field)] = self.ints.get((key, field), 0) + n

    def hincrbyfloat(self, key: str, field: str, x: float) -> None:
        self.floats[(key, field)] = self.floats.get((key, field), 0.0) + x

    def expire(self, key: str, seconds: int) -> None:
        self.expiries[key] = seconds

    def __bool__(self) -> bool:
        return bool(self.ints or self.floats or self.expiries)

    def write_to(self, pipe: Any) -> None:
        for (key, field), n in self.ints.items():
            pipe.hincrby(key, field, n)
        for (key, field), x in self.floats.items():
            pipe.hincrbyfloat(key, field, x)
        for key, seconds in self.expiries.items():
            pipe.expire(key, seconds)


def _made_by(reply: Any, amount: float) -> bool:
    """Whether an ``INCRBYFLOAT`` of ``amount`` answered ``reply`` on a key it created."""
    try:
        return abs(float(reply) - amount) < 1e-9
    except (TypeError, ValueError):
        return True  # unsure: setting the expiry again costs one command


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
        self._lock = threading.Lock()
        self._sums = _Sums()
        self._flushed = time.monotonic()
        #: day spend keys whose expiry Redis refused (set again with the next spend)
        self._unexpired: set[str] = set()

    def after_transition(self, rec: JobRecord, old: str, new: str) -> None:
        now = rec.timestamps.get(new, time.time())
        if new == "mirroring" and rec.cost:  # fal's billed amount when it reported one, else the estimate
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrbyfloat(self.counters, f"spend|{rec.endpoint}", rec.cost)
            pipe.hincrbyfloat(self.counters, f"tenant_spend|{rec.tenant}", rec.cost)
            day = spend_key(self.prefix, utc_day(now))
            pipe.incrbyfloat(day, rec.cost)
            replies = self._run(pipe)
            if replies is not None and (_made_by(replies[-1], rec.cost) or day in self._unexpired):
                # The day's first spend made the key: its expiry, once (as the limiter's day keys;
                # an expiry Redis refused is tried again with this process's next spend).
                self._expire(day, SPEND_DAY_TTL_S)
        with self._lock:
            sums = self._sums
            sums.hincrby(self.counters, f"transition|{old}|{new}", 1)
            if new == "in_progress" and rec.submitted_at:
                observe(sums, self.prefix, "queue_wait", rec.endpoint, now - rec.submitted_at)
            elif new == "mirroring" and rec.inference_time is not None:
                observe(sums, self.prefix, "inference", rec.endpoint, rec.inference_time)
            if new == "completed":
                if rec.fal_completed_at:
                    observe(sums, self.prefix, "mirror", rec.endpoint, now - rec.fal_completed_at)
                observe(sums, self.prefix, "end_to_end", rec.endpoint, now - rec.created_at)
            if new == "failed":
                reason = rec.error.type if rec.error else "unknown"
                sums.hincrby(self.counters, f"failure|{reason}", 1)
            if new in FINISHED:
                sums.hincrby(self.counters, f"finished|{new}|{rec.endpoint}", 1)
                sums.hincrby(self.counters, f"tenant_finished|{new}|{rec.tenant}", 1)
                minute = minute_key(self.prefix, int(now // 60))
                sums.hincrby(minute, new, 1)
                sums.expire(minute, MINUTE_TTL_S)
        self._flush_if_due()

    def after_error(self, rec: JobRecord, error: ErrorInfo) -> None:
        if error.retryable:
            with self._lock:
                self._sums.hincrby(self.counters, f"retry|{error.type}", 1)
            self._flush_if_due()

    def after_wait(self, rec: JobRecord, reason: str, seconds: float) -> None:
        with self._lock:
            self._sums.hincrby(self.counters, f"waits|{reason}", 1)
            self._sums.hincrbyfloat(self.counters, f"wait_s|{reason}", max(0.0, float(seconds)))
        self._flush_if_due()

    def flush(self) -> None:
        """Write what was summed since the last flush (one pipeline). What Redis refuses is kept
        and written with the next flush."""
        with self._lock:
            sums, self._sums = self._sums, _Sums()
            self._flushed = time.monotonic()
        if not sums:
            return
        pipe = self.r.pipeline(transaction=True)  # all or nothing, so a failed flush can be folded back
        sums.write_to(pipe)
        if self._run(pipe) is None:
            with self._lock:  # fold back in: counts are only ever added
                for (key, field), n in sums.ints.items():
                    self._sums.hincrby(key, field, n)
                for (key, field), x in sums.floats.items():
                    self._sums.hincrbyfloat(key, field, x)
                self._sums.expiries.update(sums.expiries)

    def _flush_if_due(self) -> None:
        if time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()

    def _run(self, pipe: redis.client.Pipeline) -> list[Any] | None:  # type: ignore[type-arg]
        """The pipeline's replies; None when Redis refused it (logged)."""
        try:
            return list(pipe.execute())
        except redis.RedisError as exc:  # metrics are best effort; the job record is the truth
            log.warning("could not record metrics (%s)", type(exc).__name__)
            return None

    def _expire(self, key: str, seconds: int) -> None:
        try:
            self.r.expire(key, seconds)
            self._unexpired.discard(key)
        except redis.RedisError as exc:
            self._unexpired.add(key)
            log.warning("could not set the expiry of %s (%s)", key, type(exc).__name__)
