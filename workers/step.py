"""The step of a job: shared machinery for the phases of the state machine.

A :class:`StepBase` holds one job's record and lease for one task delivery and knows how
to save changes (compare-and-set, reapplied after a concurrent write), when to stop
(cancel, shutdown, lost lease, step budget, deadline), how to wait, and how a job ends
(failed, cancelled). The phases build on it: :mod:`falq.workers.submit`, :mod:`falq.workers.follow`
and :mod:`falq.workers.mirror_step`; :mod:`falq.workers.runner` drives them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from falq.shared.errors import (
    DeadlineExceeded,
    FalAccountLocked,
    FalContentPolicy,
    FalqError,
    FalRequestFailedTransient,
    JobNotFound,
    is_redis_oom,
)
from falq.shared.jobstore import Conflict, LeaseLost
from falq.shared.records import AT_FAL, JobRecord
from falq.shared.settings import Settings
from falq.workers.backoff import backoff_delay
from falq.workers.context import WorkerContext
from falq.workers.lease import Lease
from falq.workers.reach import NEEDS

log = logging.getLogger("falq.runner")


@dataclass(frozen=True)
class Outcome:
    """What the task does after a step: stop (``done``) or re-publish after ``delay`` s."""

    done: bool
    delay: float = 0.0


DONE = Outcome(True)


class Stop(Exception):
    """The record turned terminal under us (cancelled or retried by someone else)."""


class Fenced(Exception):
    """A save was refused because this step no longer holds the job's lease (it expired while
    the host was cut off from Redis, and another worker may have taken the job over). The step
    ends without writing anything; the job goes on wherever its lease now is."""


class StepBase:
    """One step of one job (holds the lease for its duration).

    Parameters:
        ctx: the worker process's shared clients.
        rec: the job record as read at the start of the step.
        lease: the job's lease, held by this step.
    """

    def __init__(self, ctx: WorkerContext, rec: JobRecord, lease: Lease) -> None:
        self.ctx = ctx
        self.s: Settings = ctx.settings
        self.rec = rec
        self.lease = lease
        self.ends_at = time.monotonic() + self.s.visibility_timeout_s / 2
        #: True when this step itself moved the job into ``mirroring`` (no copy can exist yet).
        self.fresh_mirror = False

    # --- persistence ----------------------------------------------------------------------------
    def commit(self, change: Callable[[JobRecord], object], *, allow_terminal: bool = False) -> None:
        """Apply ``change`` and save; on a concurrent write, reload and apply it again.

        While Redis refuses writes at ``maxmemory`` (OOM), the save is retried with backoff
        for as long as the step holds its lease and has time: the job keeps its progress
        and goes on the moment memory frees (see :meth:`_ride_out_oom`).

        Every save is fenced by the step's lease token (checked inside the save's script): a
        step whose lease expired (its host was cut off from Redis longer than the lease) gets
        :class:`Fenced` instead of overwriting what the job's new holder wrote."""
        conflicts, oom_delay = 0, 0.0
        fence = (self.ctx.leases.key(self.rec.id), self.lease.token)
        while conflicts < 50:
            old_state, old_errors = self.rec.state, len(self.rec.errors)
            change(self.rec)
            try:
                self.ctx.store.save(self.rec, fence=fence)
                self._notify(old_state, old_errors)
                return
            except LeaseLost:
                log.warning("job %s: this step lost its lease (another worker may hold the job); it stops "
                            "without saving", self.rec.id)
                raise Fenced(self.rec.id) from None
            except Conflict:
                conflicts += 1
            except redis.RedisError as exc:
                if not is_redis_oom(exc):
                    raise
                oom_delay = self._ride_out_oom(exc, oom_delay)
            self.rec = self.ctx.store.get(self.rec.id)
            if self.rec.terminal and not allow_terminal:
                raise Stop() from None
        raise Conflict(self.rec.id)

    def _ride_out_oom(self, exc: Exception, delay: float) -> float:
        """Wait before saving again into a full Redis; re-raise once the step must end
        (shutdown, lease lost, step budget spent): the task then re-publishes the job."""
        if self.ctx.shutting_down.is_set() or not self.ctx.leases.still_held(self.lease) \
                or time.monotonic() + delay > self.ends_at:
            raise exc
        if not delay:
            log.warning("job %s: Redis memory is full (maxmemory); retrying the save until it frees", self.rec.id)
        time.sleep(delay)
        return min(2.0, max(0.2, delay * 2))

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

    def stop_reason(self) -> str | None:
        if self.ctx.leases.cancel_seen(self.rec.id):
            return "cancel"
        if self.ctx.leases.deleted_seen(self.rec.id):
            raise JobNotFound(f"job {self.rec.id} was deleted while it ran")
        if self.ctx.shutting_down.is_set():
            return "shutdown"
        if not self.ctx.leases.still_held(self.lease):
            return "lease"
        reach = self.ctx.reach
        if reach is not None and reach.hand_back(NEEDS.get(self.rec.state, "")):
            return "unreachable"  # this host is cut off from fal or S3, others are not (workers.reach)
        if time.monotonic() > self.ends_at:
            return "step"
        sub = self.rec.submitted_at
        if sub is not None and self.rec.state in AT_FAL and time.time() > sub + self.s.job_deadline_s:
            return "deadline"
        return None

    # --- waiting and endings --------------------------------------------------------------------
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
                if stop == "unreachable":
                    return Outcome(False, 0.0)  # another host goes on at once
                if stop in ("cancel", "shutdown", "lease"):
                    return self._cancel() if stop == "cancel" else Outcome(False, max(0.0, end - time.monotonic()))
            return None
        return Outcome(False, delay)

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

    def _fail(self, exc: FalqError, prefix: str = "") -> Outcome:
        self.ctx.admission.release(self.rec)
        message = prefix + str(exc)

        def failed(r: JobRecord) -> None:
            r.add_error(exc, retryable=False)
            if prefix and r.errors:
                r.errors[-1].message = message[:2000]
            if isinstance(exc, FalContentPolicy):
                r.moderation = exc.categories or ["unspecified"]
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
            r.paused = "account_locked"
        r.move("queued")

    return change
