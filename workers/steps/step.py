"""The step of a job: shared machinery for the phases of the state machine.

A :class:`StepBase` holds one job's record and lease for one task delivery and knows how
to save changes (compare-and-set, reapplied after a concurrent write), when to stop
(cancel, shutdown, lost lease, step budget, deadline), how to wait, and how a job ends
(failed, cancelled). The phases build on it: :mod:`falq.workers.steps.submit`, :mod:`falq.workers.steps.follow`
and :mod:`falq.workers.steps.mirror`; :mod:`falq.workers.steps.runner` drives them.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis

from falq.shared.errors import (
    DeadlineExceeded,
    FalContentPolicy,
    FalqError,
    FalRequestFailedTransient,
    FalStartTimeout,
    JobNotFound,
    is_redis_oom,
)
from falq.shared.jobs.records import AT_FAL, JobRecord
from falq.shared.jobs.store import CancelAsked, Conflict, LeaseLost
from falq.shared.settings import Settings
from falq.workers.backoff import backoff_delay
from falq.workers.context import WorkerContext
from falq.workers.lease import Lease
from falq.workers.maintenance.reach import NEEDS

log = logging.getLogger("falq.runner")


@dataclass(frozen=True)
class Outcome:
    """What the task does after a step: stop (``done``) or re-publish after ``delay`` s."""

    done: bool
    delay: float = 0.0


DONE = Outcome(True)


class Waited(enum.Enum):
    """What :meth:`StepBase._wait` returns after waiting in place: the step goes on. A type of
    its own, never ``None``, so no caller can read "waited" as "done" (or "saved")."""

    WAITED = "waited"


WAITED: Literal[Waited.WAITED] = Waited.WAITED


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

    def __init__(self, ctx: WorkerContext, rec: JobRecord, lease: Lease, *, cancel_asked: bool = False) -> None:
        self.ctx = ctx
        self.s: Settings = ctx.settings
        self.rec = rec
        self.lease = lease
        self.ends_at = time.monotonic() + self.s.visibility_timeout_s / 2
        #: True when this step itself moved the job into ``mirroring`` (no copy can exist yet).
        self.fresh_mirror = False
        #: A cancel was asked for when the step's delivery arrived (read with the record).
        self.cancel_asked = cancel_asked
        #: fal's result JSON as this step saved it beside the record (the mirror needs no read back).
        self.saved_result: bytes | None = None
        self._deferred: list[Callable[[JobRecord], object]] = []

    # --- persistence ----------------------------------------------------------------------------
    def defer(self, change: Callable[[JobRecord], object]) -> None:
        """Apply ``change`` with this step's next :meth:`commit`, in the same save. For what may
        be lost if the step ends before that save (a crash): the next step learns it again."""
        self._deferred.append(change)

    def commit(self, change: Callable[[JobRecord], object], *, allow_terminal: bool = False,
               drop_result: bool = False, result: bytes | None = None, unless_cancelled: bool = False) -> None:
        """Apply ``change`` and save; on a concurrent write, reload and apply it again.

        ``unless_cancelled``: save nothing if a cancel was asked for the job; the step's record
        is then read again and :class:`~falq.shared.jobs.store.CancelAsked` raised.

        While Redis refuses writes at ``maxmemory`` (OOM), the save is retried with backoff
        for as long as the step holds its lease and has time: the job keeps its progress
        and goes on the moment memory frees (see :meth:`_ride_out_oom`).

        Every save is fenced by the step's lease token (checked inside the save's script): a
        step whose lease expired (its host was cut off from Redis longer than the lease) gets
        :class:`Fenced` instead of overwriting what the job's new holder wrote.

        A conflict whose reload finds an *older* version than this step saved (versions only
        grow, so Redis lost saves: a restart brings back up to a second of older state with AOF
        ``everysec``, a failover what the replica had not received) writes this step's record
        back, with ``change`` applied once: it holds every save the step made (its attempt
        count, fal's request id), which the older record lacks and a change re-applied to it
        would not bring back (a request id lost means a second paid generation). A lease lost
        with those writes is taken again when nobody holds it (:meth:`LeaseKeeper.retake`)."""
        conflicts, oom_delay = 0, 0.0
        fence = (self.ctx.leases.key(self.rec.id), self.lease.token)
        deferred = list(self._deferred)
        restoring = False
        while conflicts < 50:
            if not restoring:
                old_state, old_errors = self.rec.state, len(self.rec.errors)
                for earlier in deferred:
                    earlier(self.rec)
                change(self.rec)
            try:
                self.ctx.store.save(self.rec, fence=fence, drop_result=drop_result, result=result,
                                    unless_cancelled=unless_cancelled)
                del self._deferred[:len(deferred)]
                self._notify(old_state, old_errors)
                return
            except CancelAsked:
                self.rec = self.ctx.store.get(self.rec.id)  # the change applied to it was not saved
                raise
            except LeaseLost:
                # Redis lost its last writes (restoring): the lease may have gone with them, taken
                # in that same second. A new holder would hold the lease or have saved a newer
                # record, so with no lease at all the job is still this step's.
                if restoring and self.ctx.leases.retake(self.lease):
                    continue
                log.warning("job %s: this step lost its lease (another worker may hold the job); it stops "
                            "without saving", self.rec.id)
                raise Fenced(self.rec.id) from None
            except Conflict:
                conflicts += 1
            except redis.RedisError as exc:
                if not is_redis_oom(exc):
                    raise
                oom_delay = self._ride_out_oom(exc, oom_delay)
            fresh = self.ctx.store.get(self.rec.id)
            restoring = fresh.version < self.rec.version
            if restoring:
                log.warning("job %s: Redis holds version %d of the record, older than this step's %d (a restart "
                            "or failover lost saves); writing this step's record back", self.rec.id, fresh.version,
                            self.rec.version)
                self.rec.version = fresh.version
                continue
            self.rec = fresh
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

    def cancel_in_hand(self) -> bool:
        """A cancel needs nothing more from the loop: fal was asked already (the request is
        followed to its end), or the output is paid for and being mirrored (the job ends
        ``cancelled`` with it)."""
        return self.rec.fal_cancel_at is not None or self.rec.state == "mirroring"

    def stop_reason(self) -> str | None:
        if self.ctx.leases.cancel_seen(self.rec.id) and not self.cancel_in_hand():
            return "cancel"
        if self.ctx.leases.deleted_seen(self.rec.id):
            raise JobNotFound(f"job {self.rec.id} was deleted while it ran")
        if self.ctx.shutting_down.is_set():
            return "shutdown"
        if not self.ctx.leases.still_held(self.lease) and not self._retaken_after_rollback():
            return "lease"
        reach = self.ctx.reach
        if reach is not None and reach.hand_back(NEEDS.get(self.rec.state, "")):
            return "unreachable"  # this host is cut off from fal or S3, others are not (workers.reach)
        if time.monotonic() > self.ends_at:
            return "step"
        sub = self.rec.submitted_at
        if self.rec.state in AT_FAL:
            asked = self.rec.fal_cancel_at
            if asked is not None:
                if time.time() > asked + self.s.fal_after_cancel_s:
                    return "unanswered"
            elif sub is not None and time.time() > sub + self.s.job_deadline_s:
                return "deadline"
        return None

    def _retaken_after_rollback(self) -> bool:
        """The lease is gone. If Redis holds an older record than this step saved (it lost its
        last writes, the lease with them), take the lease again: the step's next save writes its
        record back (:meth:`commit`). Otherwise (a new holder, or a lease that ran out while this
        host was cut off) the step stops."""
        try:
            version = self.ctx.store.version_of(self.rec.id)
        except redis.RedisError:
            return False
        return version is not None and version < self.rec.version and self.ctx.leases.retake(self.lease)

    def io_stop_reason(self) -> str | None:
        """:meth:`stop_reason` for work that goes on whatever the user asked (fetching a paid
        result): only what ends the step itself (shutdown, lease, step budget, reach)."""
        reason = self.stop_reason()
        return None if reason in ("cancel", "deadline", "unanswered") else reason

    # --- waiting and endings --------------------------------------------------------------------
    def _wait(self, delay: float, reason: str = "retry") -> Outcome | Literal[Waited.WAITED]:
        """Wait in place when the step has time (cheap under gevent; then :data:`WAITED`), else
        re-publish later (an :class:`Outcome`)."""
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
                if stop == "cancel":
                    out = self._cancel()
                    return out if out is not None else Outcome(False, 0.0)
                if stop in ("shutdown", "lease"):
                    return Outcome(False, max(0.0, end - time.monotonic()))
            return WAITED
        return Outcome(False, delay)

    def _failed_attempt(self, exc: FalqError) -> Outcome | None:
        """fal finished an attempt with an error: a new attempt if transient, else fail.

        ``None``: the job is ``queued`` again and the loop submits it now."""
        if not isinstance(exc, FalRequestFailedTransient):
            return self._fail(exc)

        def again(r: JobRecord) -> None:
            r.add_error(exc)
            r.request_id = r.status_url = r.response_url = r.cancel_url = None
            r.fal_completed_at = r.result_saved_at = None
            r.move("queued")

        self.commit(again)
        waited = self._wait(backoff_delay(self.rec.attempts - 1, base_s=self.s.retry_base_s,
                                          max_s=self.s.retry_max_s))
        return None if waited is WAITED else waited

    def _fail(self, exc: FalqError, prefix: str = "") -> Outcome:
        self.ctx.admission.release(self.rec)
        message = prefix + str(exc)

        def failed(r: JobRecord) -> None:
            r.add_error(exc, retryable=False)
            if prefix and r.errors:
                r.errors[-1].message = message[:2000]
            if isinstance(exc, FalContentPolicy):
                r.moderation = exc.categories or ["unspecified"]
            if isinstance(exc, FalStartTimeout):
                r.cost_billed = 0.0  # fal drops it unbilled: no runner ever started it
            r.move("failed")

        self.commit(failed)
        log.info("job %s failed: %s", self.rec.id, message[:300])
        self.ctx.notify_finished(self.rec)
        return DONE

    def _deadline(self) -> Outcome | None:
        """FALQ_JOB_DEADLINE_S passed: ask fal to cancel and follow the request to its end
        (``None``: go on following). A running generation is never cut off and thrown away."""
        if self.rec.request_id and self.rec.cancel_url:
            self._ask_fal_to_cancel("deadline")
            return None
        return self._fail(DeadlineExceeded(
            f"fal did not finish request {self.rec.request_id} within {self.s.job_deadline_s:.0f}s "
            "(FALQ_JOB_DEADLINE_S)"
        ))

    def _cancel_at_fal(self) -> str | None:
        """PUT the request's cancel URL; fal's answer word, or None when it was not sent/answered."""
        if self.rec.cancel_url and self.rec.state in AT_FAL | {"cancelled"}:
            try:
                answer = self.ctx.fal.cancel(self.rec.cancel_url)
                log.info("cancel of %s at fal: %s", self.rec.request_id, answer)
                return answer
            except FalqError as exc:
                log.warning("cancel of %s at fal failed: %s", self.rec.request_id, exc)
        return None

    def _ask_fal_to_cancel(self, why: Literal["cancel", "deadline"]) -> None:
        """Send fal the cancel once and record it; the request is then followed until fal says
        how it ended (fal removes a queued request; a running one may stop or finish, billed)."""
        if self.rec.fal_cancel_at is not None:
            return
        self._cancel_at_fal()
        now = time.time()

        def asked(r: JobRecord) -> None:
            if r.fal_cancel_at is None:
                r.fal_cancel_at, r.fal_cancel_why = now, why

        self.commit(asked)

    def _cancel(self) -> Outcome | None:
        """A cancel was asked for. A job with a request at fal asks fal and follows it to its
        end, and one whose output is paid for is mirrored first (``None``: go on); any other
        job ends ``cancelled`` now."""
        rec = self.rec
        if rec.terminal:
            return DONE
        if rec.state == "mirroring":
            return None
        if rec.state in AT_FAL and rec.request_id and rec.cancel_url:
            self._ask_fal_to_cancel("cancel")
            return None
        self._cancel_at_fal()
        self.ctx.admission.release(self.rec)
        self.commit(lambda r: None if r.terminal else r.move("cancelled"), allow_terminal=True)
        self.ctx.notify_finished(self.rec)
        return DONE

    def user_cancelled(self) -> bool:
        """Whether someone asked to cancel this job (``falq cancel``, a batch cancel, the gateway)."""
        return self.cancel_known() or self.ctx.store.cancel_requested(self.rec.id)

    def cancel_known(self) -> bool:
        """:meth:`user_cancelled` from what the step already knows, without asking Redis (a save
        ``unless_cancelled`` asks in the same round trip)."""
        rec = self.rec
        return rec.cancel_requested or rec.fal_cancel_why == "cancel" or self.ctx.leases.cancel_seen(rec.id)

    def _ended_after_cancel(self, how: Literal["stopped", "removed", "unknown"], detail: str) -> Outcome:
        """fal stopped (or removed) a request falq asked it to cancel, or never said how it
        ended: no new attempt. A user's cancel ends ``cancelled``; the deadline fails the job."""
        why = self.rec.fal_cancel_why or "cancel"
        unbilled = how in ("stopped", "removed")
        note = {"stopped": "fal stopped it after the cancel; not billed",
                "removed": "fal removed it from its queue before it ran; not billed",
                "unknown": (f"fal did not say how it ended within {self.s.fal_after_cancel_s:.0f}s of the cancel "
                            "(FALQ_FAL_AFTER_CANCEL_S); whether it was billed is unknown")}[how]

        def noted(r: JobRecord) -> None:
            r.fal_outcome = how
            if unbilled:
                r.cost_billed = 0.0

        if why == "deadline" and not self.user_cancelled():
            self.commit(noted)
            return self._fail(DeadlineExceeded(
                f"fal did not finish request {self.rec.request_id} within {self.s.job_deadline_s:.0f}s "
                f"(FALQ_JOB_DEADLINE_S); falq asked fal to cancel it: {note} ({detail[:200]})"))

        self.ctx.admission.release(self.rec)

        def cancelled(r: JobRecord) -> None:
            noted(r)
            if not r.terminal:
                r.move("cancelled")

        self.commit(cancelled, allow_terminal=True)
        log.info("job %s cancelled: %s", self.rec.id, note)
        self.ctx.notify_finished(self.rec)
        return DONE


def _note(exc: Exception) -> Callable[[JobRecord], object]:
    return lambda r: r.add_error(exc)
