"""Following a submitted request until fal finishes it, without polling hard.

The SSE status stream is used first: fal pushes each change, so a finished request is
noticed at once (the mirror-latency goal depends on it) and a waiting job costs one idle
connection, not a poll loop. When the stream is unavailable the follower polls with
backoff (``FALQ_POLL_MIN_S`` growing to ``FALQ_POLL_MAX_S``): never fal-client's 10 polls
per second.

Example::

    outcome = Follower(fal, settings).follow(rec.status_url, should_stop=lambda: None,
                                             on_status=print)
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.errors import (
    TRANSIENT_ERROR_TYPES,
    FalqError,
    FalRequestFailed,
    FalRequestFailedTransient,
    PermanentError,
    RetryableError,
    fal_failure,
)
from shared.falclient import FalClient, Status, StreamUnsupported
from shared.records import LOGS_TAIL, JobRecord, State
from shared.settings import Settings
from workers.backoff import backoff_delay
from workers.step import Outcome, StepBase

_STATE_OF = {"IN_QUEUE": "in_queue", "IN_PROGRESS": "in_progress"}

#: Returned by ``should_stop`` to end following early: "cancel", "deadline", "step", ...
StopReason = str


class Follower:
    """Follows one request by its ``status_url``.

    Parameters:
        fal: the fal client.
        settings: polling bounds and whether to use the status stream.
        on_error: called with every transient error met while following (for the record).
    """

    def __init__(self, fal: FalClient, settings: Settings, on_error: Callable[[Exception], None] | None = None) -> None:
        self.fal = fal
        self.settings = settings
        self.on_error = on_error or (lambda exc: None)

    def follow(
        self,
        status_url: str,
        *,
        should_stop: Callable[[], StopReason | None],
        on_status: Callable[[Status], None],
        slice_s: float = 5.0,
    ) -> Status | StopReason:
        """Return the COMPLETED status, or the reason ``should_stop`` gave for stopping.

        ``slice_s`` bounds how long the follower goes without asking ``should_stop``.
        """
        use_stream = self.settings.use_status_stream
        poll = self.settings.poll_min_s
        failures = 0
        while True:
            reason = should_stop()
            if reason:
                return reason
            try:
                if use_stream:
                    for st in self.fal.stream_status(status_url, read_timeout=slice_s):
                        failures = 0
                        on_status(st)
                        if st.done:
                            return st
                        reason = should_stop()
                        if reason:
                            return reason
                    continue  # closed or quiet for slice_s: check and reconnect
                st = self.fal.status(status_url)
                failures = 0
                on_status(st)
                if st.done:
                    return st
                reason = _sleep(poll, should_stop)
                if reason:
                    return reason
                poll = min(self.settings.poll_max_s, poll * 1.5)
            except StreamUnsupported:
                use_stream = False
            except RetryableError as exc:
                self.on_error(exc)
                failures += 1
                delay = backoff_delay(
                    failures, base_s=self.settings.retry_base_s / 2, max_s=min(30.0, self.settings.retry_max_s),
                    retry_after=exc.retry_after,
                )
                reason = _sleep(delay, should_stop)
                if reason:
                    return reason


def _sleep(seconds: float, should_stop: Callable[[], StopReason | None]) -> StopReason | None:
    """Sleep in slices of at most a second, waking early when asked to stop."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(1.0, left))
        reason = should_stop()
        if reason:
            return reason


class FollowPhase(StepBase):
    """Following a submitted request in a step: state changes, logs, completion or failure."""

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

        try:
            pushed = self._await_webhook() if self.s.fal_webhook_url else None
            result = pushed or Follower(self.ctx.fal, self.s, on_error=on_error).follow(
                self.rec.status_url, should_stop=self.stop_reason, on_status=on_status
            )
        except PermanentError as exc:
            # fal answered something unusable while we followed it (non-JSON, an unknown status,
            # an oversized event). Left to escape, it would reach the task's catch-all and the
            # job would loop until its deadline: stop paying for the request and fail the job.
            self._cancel_at_fal()
            return self._fail(exc)
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
        self.fresh_mirror = True
        return None

    def _await_webhook(self) -> Status | str | None:
        """fal's pushed completion (see :mod:`workers.falhooks`), a stop reason, or None once
        ``FALQ_FAL_WEBHOOK_WAIT_S`` passed without one (the request is then followed)."""
        request_id = self.rec.request_id
        assert request_id
        until = (self.rec.submitted_at or time.time()) + self.s.fal_webhook_wait_s
        while time.time() < until:
            reason = self.stop_reason()
            if reason:
                return reason
            doc = self.ctx.falhooks.wait(request_id, timeout=min(1.0, max(0.05, until - time.time())))
            if doc is not None:
                if doc["status"] == "OK":
                    return Status("COMPLETED")
                error = str(doc.get("error") or "fal reported an error")
                detail = doc.get("payload")
                error_type = detail.get("error_type") if isinstance(detail, dict) else None
                return Status("COMPLETED", error=error, error_type=error_type)
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
