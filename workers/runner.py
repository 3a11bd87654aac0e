"""Where a job runs: one bounded step of the job state machine per task delivery.

States: queued -> submitting -> in_queue -> in_progress -> mirroring -> completed, or
failed / cancelled. The record in Redis is the source of truth, so a step can start from
any state a previous (possibly killed) delivery left behind:

* ``submitting`` without a request id: the previous delivery died around the POST, so
  the outcome is unknown; that attempt is written off and a new one starts. The attempt
  counter is persisted *before* every POST, so fal never sees more submissions for a job
  than the attempts its record shows.
* a request id present: the request is followed again; it is never submitted twice.
* ``mirroring``: the result is fetched again and mirrored (idempotently) into S3.

A step ends after at most half the visibility timeout (or on worker shutdown) and asks
to be re-published, so no broker message is held long enough to be redelivered while
its worker is alive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from shared.errors import (
    TRANSIENT_ERROR_TYPES,
    AttemptsExhausted,
    DeadlineExceeded,
    FalAccountLocked,
    FalqError,
    FalRequestFailed,
    FalRequestFailedTransient,
    JobNotFound,
    PermanentError,
    RetryableError,
    fal_failure,
)
from shared.falclient import Status
from shared.jobstore import Conflict
from shared.records import AT_FAL, LOGS_TAIL, JobRecord, State, Submission
from workers.backoff import backoff_delay
from workers.context import WorkerContext
from workers.follow import Follower
from workers.lease import Lease
from workers.mirror_step import mirror_outputs_for
from workers.reaper import mark_seen

log = logging.getLogger("falq.runner")

_STATE_OF = {"IN_QUEUE": "in_queue", "IN_PROGRESS": "in_progress"}


@dataclass(frozen=True)
class Outcome:
    """What the task does after a step: stop (``done``) or re-publish after ``delay`` s."""

    done: bool
    delay: float = 0.0


DONE = Outcome(True)


class SubmitInterrupted(RetryableError):
    """A delivery died between counting an attempt and recording fal's answer."""

    kind = "submit_interrupted"


class _Stop(Exception):
    """The record turned terminal under us (cancelled or retried by someone else)."""


class Runner:
    """Runs steps of jobs. One per worker process; stateless between steps.

    Parameters:
        ctx: the process's shared clients (Redis, fal, S3, leases, admission).
    """

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.s = ctx.settings

    def run_step(self, job_id: str) -> Outcome:
        try:
            rec = self.ctx.store.get(job_id)
        except JobNotFound:
            log.warning("job %s has no record (expired or deleted); dropping its message", job_id)
            return DONE
        if rec.terminal:
            return DONE
        mark_seen(self.ctx.redis, self.s, job_id)  # a sign of life for workers.reaper
        lease = self.ctx.leases.acquire(job_id)
        if lease is None:
            # Another live delivery works on it. Come back later as a watchdog, so the job
            # still has a message if that worker dies after its own message was requeued.
            return Outcome(False, delay=self.s.lease_ttl_s)
        try:
            return _Step(self, rec, lease).run()
        except JobNotFound:
            log.warning("job %s was deleted while it ran; stopping", job_id)
            return DONE
        finally:
            self.ctx.leases.release(lease)


class _Step:
    """One step of one job (holds the lease for its duration)."""

    def __init__(self, runner: Runner, rec: JobRecord, lease: Lease) -> None:
        self.ctx = runner.ctx
        self.s = runner.s
        self.rec = rec
        self.lease = lease
        self.ends_at = time.monotonic() + self.s.visibility_timeout_s / 2

    # --- persistence ----------------------------------------------------------------------------
    def commit(self, change: Callable[[JobRecord], object], *, allow_terminal: bool = False) -> None:
        """Apply ``change`` and save; on a concurrent write, reload and apply it again."""
        for _ in range(50):
            old_state, old_errors = self.rec.state, len(self.rec.errors)
            change(self.rec)
            try:
                self.ctx.store.save(self.rec)
                self._notify(old_state, old_errors)
                return
            except Conflict:
                self.rec = self.ctx.store.get(self.rec.id)
                if self.rec.terminal and not allow_terminal:
                    raise _Stop() from None
        raise Conflict(self.rec.id)

    def _notify(self, old_state: str, old_errors: int) -> None:
        rec = self.rec
        for mw in self.ctx.middleware:
            try:
                if rec.state != old_state:
                    mw.after_transition(rec, old_state, rec.state)
                for err in rec.errors[old_errors:] if len(rec.errors) > old_errors else []:
                    mw.after_error(rec, err)
            except Exception:  # a hook must never break a job
                log.exception("middleware %s failed", type(mw).__name__)

    # --- driving --------------------------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            return self._loop()
        except _Stop:
            return DONE

    def stop_reason(self) -> str | None:
        if self.ctx.leases.cancel_seen(self.rec.id):
            return "cancel"
        if self.ctx.shutting_down.is_set():
            return "shutdown"
        if not self.ctx.leases.still_held(self.lease):
            return "lease"
        if time.monotonic() > self.ends_at:
            return "step"
        sub = self.rec.submitted_at
        if sub is not None and self.rec.state in AT_FAL and time.time() > sub + self.s.job_deadline_s:
            return "deadline"
        return None

    def _loop(self) -> Outcome:
        if self.ctx.store.cancel_requested(self.rec.id) or self.rec.cancel_requested:
            return self._cancel()
        while True:
            reason = self.stop_reason()
            if reason == "cancel":
                return self._cancel()
            if reason == "deadline":
                return self._deadline()
            if reason:
                return Outcome(False, 0.0)
            state = self.rec.state
            if state == "queued" or (state == "submitting" and not self.rec.request_id):
                out = self._submit()
            elif state in AT_FAL:
                out = self._follow()
            elif state == "mirroring":
                out = self._mirror()
            else:
                return DONE
            if out is not None:
                return out

    # --- submit ---------------------------------------------------------------------------------
    def _submit(self) -> Outcome | None:
        rec = self.rec
        if rec.state == "submitting":

            def written_off(r: JobRecord) -> None:
                r.add_error(SubmitInterrupted(
                    f"attempt {r.attempts}: the worker stopped during submit; outcome unknown, starting a new attempt"
                ))
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
            return self._wait(wait, reason=paused or "limit")

        def start_attempt(r: JobRecord) -> None:
            r.attempts += 1
            r.paused = None
            r.request_id = r.status_url = r.response_url = r.cancel_url = None
            r.submitted_at = None
            r.move("submitting")

        # Persisted before the POST: a crash from here on counts this attempt.
        self.commit(start_attempt)
        attempt = self.rec.attempts
        headers = {"X-Falq-Job-Id": self.rec.id, "X-Falq-Attempt": str(attempt)}
        self.ctx.admission.sending(self.rec)
        try:
            sub = self.ctx.fal.submit(self.rec.endpoint, self.rec.input, headers=headers)
        except RetryableError as exc:
            self.ctx.admission.release(self.rec)
            self.commit(_requeue_with(exc))
            return self._wait(backoff_delay(
                attempt - 1, base_s=self.s.retry_base_s, max_s=self.s.retry_max_s, retry_after=exc.retry_after
            ))
        except PermanentError as exc:
            self.ctx.admission.release(self.rec)
            return self._fail(exc)
        now = time.time()

        def accepted(r: JobRecord) -> None:
            r.request_id, r.status_url = sub.request_id, sub.status_url
            r.response_url, r.cancel_url = sub.response_url, sub.cancel_url
            r.submitted_at = now
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

    def _commit_persistently(self, change: Callable[[JobRecord], object], request_id: str) -> None:
        delay, end = 0.2, time.monotonic() + max(60.0, self.s.lease_ttl_s * 3)
        while True:
            try:
                self.commit(change, allow_terminal=True)
                return
            except redis.RedisError as exc:
                if time.monotonic() > end:
                    log.error("job %s: fal accepted request %s but Redis is unreachable (%s); the next delivery "
                              "will count a new attempt", self.rec.id, request_id, type(exc).__name__)
                    raise
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    # --- follow ---------------------------------------------------------------------------------
    def _follow(self) -> Outcome | None:
        assert self.rec.status_url
        self.ctx.admission.following(self.rec)
        pending_logs: list[str] = []
        logs_seen = [0]

        def on_status(st: Status) -> None:
            # fal sends every log line so far with each status; keep only the new ones.
            fresh = st.logs[logs_seen[0]:] if len(st.logs) >= logs_seen[0] else st.logs
            logs_seen[0] = len(st.logs)
            pending_logs.extend(fresh)
            del pending_logs[:-LOGS_TAIL]
            new = _STATE_OF.get(st.status)
            if new and new != self.rec.state and not st.done:
                logs = list(pending_logs)
                pending_logs.clear()

                def moved(r: JobRecord, new: State = new) -> None:  # type: ignore[assignment]
                    if new == "in_progress" and r.submitted_at and r.queue_wait is None:
                        r.queue_wait = time.time() - r.submitted_at
                    r.add_logs(logs)
                    r.move(new)

                self.commit(moved)

        def on_error(exc: Exception) -> None:
            self.commit(lambda r: r.add_error(exc))

        result = Follower(self.ctx.fal, self.s, on_error=on_error).follow(
            self.rec.status_url, should_stop=self.stop_reason, on_status=on_status
        )
        if not isinstance(result, Status):
            if result == "cancel":
                return self._cancel()
            if result == "deadline":
                return self._deadline()
            return Outcome(False, 0.0)
        self.ctx.admission.release(self.rec)
        if result.error:
            return self._failed_attempt(self._failure_detail(result))
        done_at = time.time()

        def completed(r: JobRecord) -> None:
            r.add_logs(pending_logs)
            inference = result.metrics.get("inference_time")
            r.inference_time = float(inference) if isinstance(inference, int | float) else None
            r.fal_completed_at = done_at
            r.move("mirroring")

        self.commit(completed)
        return None

    def _failure_detail(self, status: Status) -> FalqError:
        """fal's own account of a failed request: the result call carries the app's error body
        (e.g. the 422 field errors); the status only says "Invalid status code: 422"."""
        fallback = fal_failure(f"fal finished the request with an error: {status.error}", status.error_type)
        if not self.rec.response_url:
            return fallback
        try:
            self.ctx.fal.result(self.rec.response_url)
        except FalRequestFailed as exc:
            if status.error_type in TRANSIENT_ERROR_TYPES and not isinstance(exc, FalRequestFailedTransient):
                return fallback  # the status said transient; trust it over a vague result code
            return exc
        except FalqError:
            return fallback
        return fallback

    def _failed_attempt(self, exc: FalqError) -> Outcome | None:
        """fal finished an attempt with an error: a new attempt if transient, else fail."""
        if not isinstance(exc, FalRequestFailedTransient):
            return self._fail(exc)

        def again(r: JobRecord) -> None:
            r.add_error(exc)
            r.request_id = r.status_url = r.response_url = r.cancel_url = None
            r.move("queued")

        self.commit(again)
        return self._wait(backoff_delay(self.rec.attempts - 1, base_s=self.s.retry_base_s, max_s=self.s.retry_max_s))

    # --- mirror ---------------------------------------------------------------------------------
    def _mirror(self) -> Outcome | None:
        try:
            output, images = mirror_outputs_for(self.ctx, self.rec)
        except RetryableError as exc:
            if isinstance(exc, FalRequestFailedTransient):
                return self._failed_attempt(exc)
            self.commit(_note(exc))
            since = self.rec.timestamps.get("mirroring", 0.0)
            tries = sum(1 for e in self.rec.errors if e.at >= since)
            if tries >= self.s.max_attempts * 2:
                return self._fail(exc, prefix=f"mirroring failed {tries} times: ")
            return self._wait(backoff_delay(tries, base_s=self.s.retry_base_s, max_s=self.s.retry_max_s,
                                            retry_after=exc.retry_after))
        except PermanentError as exc:
            if hasattr(exc, "error_type"):  # the request itself failed (FalRequestFailed)
                return self._failed_attempt(exc)
            return self._fail(exc)

        def completed(r: JobRecord) -> None:
            r.outputs = images
            r.seed = output.seed
            r.move("completed")

        self.commit(completed)
        self.ctx.notify_finished(self.rec)
        return DONE

    # --- endings --------------------------------------------------------------------------------
    def _wait(self, delay: float, reason: str = "retry") -> Outcome | None:
        """Wait in place when the step has time (cheap under gevent), else re-publish later."""
        for mw in self.ctx.middleware:
            try:
                mw.after_wait(self.rec, reason, delay)
            except Exception:
                log.exception("middleware %s failed", type(mw).__name__)
        if delay <= 30 and time.monotonic() + delay < self.ends_at:
            end = time.monotonic() + delay
            while time.monotonic() < end:
                time.sleep(min(1.0, end - time.monotonic()))
                stop = self.stop_reason()
                if stop in ("cancel", "shutdown", "lease"):
                    return self._cancel() if stop == "cancel" else Outcome(False, max(0.0, end - time.monotonic()))
            return None
        return Outcome(False, delay)

    def _fail(self, exc: FalqError, prefix: str = "") -> Outcome:
        self.ctx.admission.release(self.rec)
        message = prefix + str(exc)

        def failed(r: JobRecord) -> None:
            r.add_error(exc, retryable=False)
            if prefix and r.errors:
                r.errors[-1].message = message[:2000]
            r.move("failed")

        self.commit(failed)
        log.info("job %s failed: %s", self.rec.id, message[:300])
        self.ctx.notify_finished(self.rec)
        return DONE

    def _deadline(self) -> Outcome:
        self._cancel_at_fal()
        return self._fail(DeadlineExceeded(
            f"fal did not finish request {self.rec.request_id} within {self.s.job_deadline_s:.0f}s "
            "(FALQ_JOB_DEADLINE_S); it was cancelled at fal"
        ))

    def _cancel_at_fal(self) -> None:
        if self.rec.cancel_url and self.rec.state in AT_FAL | {"cancelled"}:
            try:
                answer = self.ctx.fal.cancel(self.rec.cancel_url)
                log.info("cancel of %s at fal: %s", self.rec.request_id, answer)
            except FalqError as exc:
                log.warning("cancel of %s at fal failed: %s", self.rec.request_id, exc)

    def _cancel(self) -> Outcome:
        self._cancel_at_fal()
        self.ctx.admission.release(self.rec)
        self.commit(lambda r: None if r.terminal else r.move("cancelled"), allow_terminal=True)
        self.ctx.notify_finished(self.rec)
        return DONE


def _note(exc: Exception) -> Callable[[JobRecord], object]:
    return lambda r: r.add_error(exc)


def _requeue_with(exc: Exception) -> Callable[[JobRecord], object]:
    def change(r: JobRecord) -> None:
        r.add_error(exc)
        if isinstance(exc, FalAccountLocked):
            r.attempts -= 1  # fal refused before creating a request: not an attempt (the key pauses)
        r.move("queued")

    return change
