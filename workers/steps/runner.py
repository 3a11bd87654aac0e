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

from falq.shared.errors import JobNotFound
from falq.shared.jobs.records import AT_FAL
from falq.shared.jobs.store import cancel_asked, crash_streak, unflagged
from falq.workers.context import WorkerContext
from falq.workers.maintenance.reach import NEEDS
from falq.workers.maintenance.reaper import mark_seen
from falq.workers.steps.follow import FollowPhase
from falq.workers.steps.mirror import MirrorPhase
from falq.workers.steps.step import DONE, Fenced, Outcome, Stop
from falq.workers.steps.submit import SubmitInterrupted, SubmitPhase

__all__ = ["DONE", "Outcome", "Runner", "SubmitInterrupted"]

log = logging.getLogger("falq.runner")


class Runner:
    """Runs steps of jobs. One per worker process; stateless between steps.

    Parameters:
        ctx: the process's shared clients (Redis, fal, S3, leases, admission).
    """

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.s = ctx.settings

    def run_step(self, job_id: str) -> Outcome:
        if not isinstance(job_id, str) or not job_id:
            # A message no producer of falq writes (its id is a string): drop it, never crash on it.
            log.warning("dropping a message whose job id is a %s, not a job id", type(job_id).__name__)
            return DONE
        # One round trip: the lease, then (so read under it) the record with a cancel asked for
        # and its crash streak, and a sign of life for workers.reaper. A delivery that will not
        # run (no record, a finished job, a host cut off) gives the lease back: rare, against a
        # round trip every step.
        leases = self.ctx.leases
        pipe = self.ctx.redis.pipeline(transaction=False)
        token = leases.acquire_queued(pipe, job_id)
        self.ctx.store.get_queued(pipe, job_id)
        mark_seen(pipe, self.s, job_id)
        got, row, seen = pipe.execute(raise_on_error=False)
        for reply in (row, seen):
            if isinstance(reply, Exception):
                raise reply
        lease = leases.acquired(job_id, token, got)
        try:
            rec = self.ctx.store.record_of(job_id, row)
        except JobNotFound:
            log.warning("job %s has no record (expired or deleted); dropping its message", job_id)
            rec = None
        if rec is None or rec.terminal or (
                self.ctx.reach is not None and self.ctx.reach.bounce(job_id, NEEDS.get(rec.state, ""))):
            if lease is not None:
                leases.release(lease)
            # A host cut off from what the job needs hands it on unrun (workers.reach).
            return DONE if rec is None or rec.terminal else Outcome(False, 0.0)
        if lease is None:
            # Another live delivery works on it. Come back later as a watchdog, so the job
            # still has a message if that worker dies after its own message was requeued.
            return Outcome(False, delay=self.s.lease_ttl_s)
        if unflagged(row) and rec.state != "waiting":
            # The reaper skips an unpublished queued record (it waits for fair dispatch): once
            # delivered, the record says so, or a message lost later would strand it.
            self.ctx.store.mark_published([job_id])
        # A step that raises crashed: its streak goes on (falq.workers.tasks.crashed); one that
        # returns ends the streak the record holds, if any.
        steady = False
        try:
            outcome = _Step(self.ctx, rec, lease, cancel_asked=cancel_asked(row)).run()
            steady = crash_streak(row) > 0
            return outcome
        except JobNotFound:
            log.warning("job %s was deleted while it ran; stopping", job_id)
            return DONE
        finally:
            self.ctx.leases.release(lease, steady=steady)


class _Step(SubmitPhase, FollowPhase, MirrorPhase):
    """One step of one job: drives the phases from whatever state the record is in."""

    def run(self) -> Outcome:
        try:
            return self._loop()
        except Stop:
            return DONE
        except Fenced:
            # A stale step (its host was cut off longer than the lease) wrote nothing. The job
            # lives on with its new holder; this message comes back later as a harmless watchdog.
            return Outcome(False, self.s.lease_ttl_s)
        except JobNotFound:
            # The record was deleted under us: nobody wants this result any more, so stop
            # paying for it at fal before dropping the job.
            self._cancel_at_fal()
            raise

    def _loop(self) -> Outcome:
        if (self.cancel_asked or self.rec.cancel_requested) and not self.cancel_in_hand():
            out = self._cancel()
            if out is not None:
                return out
        while True:
            reason = self.stop_reason()
            if reason in ("cancel", "deadline", "unanswered"):
                out = self._cancel() if reason == "cancel" else self._deadline() if reason == "deadline" else \
                    self._ended_after_cancel("unknown", "no answer from fal")
                if out is not None:
                    return out
                continue
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
