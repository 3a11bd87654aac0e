"""Where a job gets submitted to fal: the submit phase of a step.

The attempt counter is persisted *before* the POST and fal's ``request_id`` right after
it, so a delivery that dies anywhere in between is counted as an attempt (never more
submissions at fal than attempts on the record) and a delivery that finds a
``request_id`` follows that request instead of paying for another generation.

An answer that created nothing at fal (fal's nginx edge page, 408/409/429, a connection never
made, a locked account) is not an attempt: the count is given back, and such answers are
bounded by time instead (``FALQ_SUBMIT_REFUSED_MAX_S``), so a several-minute edge outage fails
no job. A plain 5xx after the POST went out may have created the request: that is an
uncertain submit (``FALQ_SUBMIT_UNCERTAIN``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from falq.shared.errors import (
    AttemptsExhausted,
    FalAccountLocked,
    FalSubmitUncertain,
    PermanentError,
    RetryableError,
    SubmitRefused,
)
from falq.shared.fal.client import Submitted, request_urls, submit_headers
from falq.shared.jobs.records import JobRecord, Submission
from falq.shared.redisconn import replicas_to_wait_for, wait_for_replicas
from falq.workers.backoff import backoff_delay
from falq.workers.steps.step import DONE, WAITED, Fenced, Outcome, StepBase, _note

log = logging.getLogger("falq.runner")


class SubmitInterrupted(RetryableError):
    """A delivery died between counting an attempt and recording fal's answer."""

    kind = "submit_interrupted"


class SubmitPhase(StepBase):
    """Admission, the POST, and recording what fal answered."""

    def _submit(self) -> Outcome | None:
        rec = self.rec
        if rec.state == "submitting":

            def written_off(r: JobRecord) -> None:
                r.add_error(_interrupted(r))
                r.move("queued")

            self.commit(written_off)
        if rec.attempts - rec.retry_from >= self.s.max_attempts:
            last = rec.error.message if rec.error else "none"
            return self._fail(AttemptsExhausted(f"gave up after {rec.attempts} attempts; last error: {last}"))
        was_paused = self.rec.paused
        wait = self.ctx.admission.admit(self.rec)
        if wait is not None:
            paused = self.rec.paused
            if paused != was_paused:  # a waiting job writes its record only when the reason changes
                self.commit(lambda r: setattr(r, "paused", paused))
            waited = self._wait(wait, reason=paused or "limit")
            return None if waited is WAITED else waited

        # Persisted before the POST: a crash from here on counts this attempt. On a replica
        # too, so a failover cannot bring back a record with fewer attempts than fal saw.
        self.commit(_start_attempt)
        self._replicated(f"attempt {self.rec.attempts} of job {self.rec.id}")
        attempt = self.rec.attempts
        # A gateway client's own fal headers (falq.gateway.fal.headers) win over falq's defaults.
        headers = {**submit_headers(self.s, self.rec.lane, self.rec.priority), **self.rec.fal_headers,
                   "X-Falq-Job-Id": self.rec.id,
                   "X-Falq-Attempt": str(attempt)}
        self.ctx.admission.sending(self.rec)
        try:
            sub = self.ctx.fal.submit(self.rec.endpoint, self.rec.input, headers=headers,
                                     webhook_url=self.s.fal_webhook_url)
        except FalSubmitUncertain as exc:
            if exc.request_id:
                # fal named the request it may have created: follow that one, never a second.
                log.warning("job %s: %s; following request %s", self.rec.id, exc, exc.request_id)
                self.commit(_note(exc))
                sub = Submitted(exc.request_id, *request_urls(self.s, self.rec.endpoint, exc.request_id))
            elif self.s.submit_uncertain == "resubmit":
                self.ctx.admission.release(self.rec)
                self.commit(_requeue_with(exc, attempt))
                waited = self._wait(backoff_delay(attempt - 1, base_s=self.s.retry_base_s, max_s=self.s.retry_max_s))
                return None if waited is WAITED else waited
            else:
                self.ctx.admission.release(self.rec)
                return self._fail(exc, prefix="submit outcome unknown, not sent again (FALQ_SUBMIT_UNCERTAIN=fail; "
                                              "`falq retry` sends a new request): ")
        except RetryableError as exc:
            # Nothing was created at fal (FalClient.submit raises a retryable error only then):
            # not an attempt, bounded by time (FALQ_SUBMIT_REFUSED_MAX_S), not by FALQ_MAX_ATTEMPTS.
            self.ctx.admission.release(self.rec)
            locked = isinstance(exc, FalAccountLocked)
            if isinstance(exc, FalAccountLocked):
                self.ctx.admission.account_locked(self.rec, exc)  # the key pauses; no time bound
            since = self.rec.refused_since or time.time()
            if not locked and time.time() - since > self.s.submit_refused_max_s:
                self.commit(_not_an_attempt(exc, attempt))
                return self._fail(SubmitRefused(
                    f"every submit for {time.time() - since:.0f}s met answers that created nothing at fal "
                    f"(FALQ_SUBMIT_REFUSED_MAX_S={self.s.submit_refused_max_s:.0f}; last: {exc}); nothing was "
                    "created or billed"))
            self.commit(_requeue_with(exc, attempt))
            streak = sum(1 for e in self.rec.errors if e.at >= since)
            waited = self._wait(backoff_delay(
                streak - 1, base_s=self.s.retry_base_s, max_s=self.s.retry_max_s, retry_after=exc.retry_after
            ))
            return None if waited is WAITED else waited
        except PermanentError as exc:
            self.ctx.admission.release(self.rec)
            return self._fail(exc)
        now = time.time()

        def accepted(r: JobRecord) -> None:
            r.request_id, r.status_url = sub.request_id, sub.status_url
            r.response_url, r.cancel_url = sub.response_url, sub.cancel_url
            r.submitted_at = now
            r.refused_since = None
            if not any(s.request_id == sub.request_id for s in r.submissions):
                r.submissions = [*r.submissions, Submission(attempt=attempt, request_id=sub.request_id,
                                                            submitted_at=now)]
            if not r.terminal:
                r.move("in_queue")

        # The first thing after fal accepted: record the request id, even onto a record
        # that was cancelled meanwhile (so the cancel below reaches fal). Losing it would
        # mean paying for a second generation, so ride out a Redis outage here.
        self._commit_persistently(accepted, sub.request_id)
        self.ctx.admission.submitted(self.rec)
        if self.rec.terminal:
            self._cancel_at_fal()
            return DONE
        return None

    def _replicated(self, what: str) -> None:
        """Wait until a replica has the record as last saved (Redis ``WAIT``, see
        :func:`falq.shared.redisconn.wait_for_replicas`); a replica that is only slow costs a
        warning. Raises ``redis.ConnectionError`` if the server answering has an older record:
        the save was lost in a failover."""
        if not replicas_to_wait_for(self.ctx.redis, self.s):
            return  # no replicas (or FALQ_REDIS_WAIT_REPLICAS=0): no round trip at all
        pipe = self.ctx.redis.pipeline(transaction=False)
        pipe.hget(self.ctx.store.job_key(self.rec.id), "version")
        (version,) = wait_for_replicas(self.ctx.redis, self.s, pipe=pipe, what=what)
        if version is not None and int(version) < self.rec.version:
            raise redis.ConnectionError(f"job {self.rec.id}: the saved {what} was lost in a Redis failover")

    def _commit_persistently(self, change: Callable[[JobRecord], object], request_id: str) -> None:
        delay, end = 0.2, time.monotonic() + max(60.0, self.s.lease_ttl_s * 3)
        while True:
            try:
                self.commit(change, allow_terminal=True)
                self._replicated(f"request id {request_id} of job {self.rec.id}")
                return
            except Fenced:
                # Our lease ran out while Redis was out of reach: the job's next holder counts a
                # new attempt and never learns of this request. Stop paying for it at fal.
                log.warning("job %s: lease lost before request %s could be recorded; cancelling it at fal",
                            self.rec.id, request_id)
                self._cancel_at_fal()
                raise
            except redis.RedisError as exc:
                if time.monotonic() > end:
                    log.error("job %s: fal accepted request %s but Redis is unreachable (%s); the next delivery "
                              "will count a new attempt", self.rec.id, request_id, type(exc).__name__)
                    raise
                time.sleep(delay)
                delay = min(5.0, delay * 2)


def _start_attempt(r: JobRecord) -> None:
    """Count a new attempt and enter ``submitting``."""
    r.attempts += 1
    r.paused = None
    r.request_id = r.status_url = r.response_url = r.cancel_url = None
    r.submitted_at = None
    r.move("submitting")


def _requeue_with(exc: Exception, attempt: int) -> Callable[[JobRecord], object]:
    """Back to ``queued`` after attempt ``attempt`` met ``exc`` at submit.

    A retryable ``exc`` created nothing at fal (an edge page, 408/409/429, a connection never
    made, a locked account): the attempt is given back (the count is set to the one before
    it, which is also right on a record reloaded after a concurrent save), and the streak of
    such answers is timed from ``refused_since``. A locked account also pauses the key."""

    def change(r: JobRecord) -> None:
        r.add_error(exc)
        if isinstance(exc, RetryableError):
            r.attempts = min(r.attempts, attempt - 1)
        if isinstance(exc, FalAccountLocked):
            r.paused = "account_locked"  # paused, not timed: the job waits for a top-up
        elif isinstance(exc, RetryableError) and r.refused_since is None:
            r.refused_since = r.errors[-1].at
        r.move("queued")

    return change


def _interrupted(r: JobRecord) -> SubmitInterrupted:
    return SubmitInterrupted(
        f"attempt {r.attempts}: the worker stopped during submit; outcome unknown, starting a new attempt")


def _not_an_attempt(exc: Exception, attempt: int) -> Callable[[JobRecord], object]:
    """Note ``exc`` and give back attempt ``attempt``: fal created nothing."""

    def change(r: JobRecord) -> None:
        r.add_error(exc)
        r.attempts = min(r.attempts, attempt - 1)

    return change
