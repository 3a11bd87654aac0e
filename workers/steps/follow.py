"""Following a submitted request until fal finishes it, then keeping its result.

The SSE status stream is used first: fal pushes each change, so a finished request is
noticed at once (the mirror-latency goal depends on it) and a waiting job costs one idle
connection, not a poll loop. fal's stream is quiet between changes except for a ``: ping``
comment about every 15 s, so one connection serves the request's whole life: it is read
by a background thread (:class:`falq.shared.fal.client.StatusStream`) while the follower checks
cancel, deadline and shutdown every second, and it is reopened only after a real
disconnect. When the stream is unavailable the follower polls with backoff
(``FALQ_POLL_MIN_S`` growing to ``FALQ_POLL_MAX_S``): never fal-client's 10 polls per second.

Logs: stream events carry new entries, a polled status the recent window. Both go
through :func:`fresh_log_lines`, which deduplicates by (timestamp, message) against the
cursor saved in the record, so the tail holds each line once, in order, across reconnects
and redeliveries.

Right after COMPLETED the output JSON is fetched once and saved beside the record
(:meth:`falq.shared.jobs.store.JobStore.save_result`) before mirroring starts: fal keeps results
about an hour (6 minutes at 10 KB or more, and ``sync_mode`` ones not at all), so an S3
outage must never need it again. A request that COMPLETED without an error succeeded and is
billed: an error on its result GET (a 5xx, with or without ``x-fal-request-id``) fetches the
same result again, for up to ``FALQ_FAL_RESULT_RETRY_S``; only a result error naming an
infrastructure ``error_type`` starts a new attempt, and a result fal no longer has fails the job.

A cancel (or ``FALQ_JOB_DEADLINE_S``) asks fal to cancel and goes on following the request:
fal removes a queued request, and a running one may stop or finish anyway. A finished one is
billed, so its output is kept and mirrored like any other (``fal_outcome = "finished"``).

Example::

    outcome = Follower(fal, settings).follow(rec.status_url, should_stop=lambda: None,
                                             on_status=print)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from falq.shared.errors import (
    TRANSIENT_ERROR_TYPES,
    FalContentPolicy,
    FalqError,
    FalRequestFailed,
    FalRequestFailedTransient,
    FalResultGone,
    FalResultUnavailable,
    FalStartTimeout,
    PermanentError,
    RetryableError,
    fal_failure,
)
from falq.shared.fal.client import FalClient, LogEntry, Status, StreamEnd, StreamUnsupported
from falq.shared.jobs.records import LOGS_TAIL, JobRecord, State
from falq.shared.settings import Settings
from falq.workers.backoff import backoff_delay
from falq.workers.steps.step import Outcome, StepBase, Stop

_STATE_OF = {"IN_QUEUE": "in_queue", "IN_PROGRESS": "in_progress"}
#: How often a follower waiting on a quiet stream checks cancel, deadline and shutdown.
CHECK_S = 1.0
#: Messages remembered at the newest timestamp (lines fal logged in the same instant).
_CURSOR_MAX = 64

#: Returned by ``should_stop`` to end following early: "cancel", "deadline", "step", ...
StopReason = str


def _noted_already(rec: JobRecord) -> None:
    """What :meth:`FollowPhase._keep_result` returns when the record already notes the kept
    result: nothing left to write."""


def fresh_log_lines(entries: list[LogEntry], cursor: list[str], tail: list[str]) -> tuple[list[str], list[str]]:
    """The lines of ``entries`` not seen yet, and the cursor after them.

    ``cursor`` is ``[newest timestamp, messages seen at it...]`` as kept in the record.
    Entries older than the cursor were seen; at the same timestamp, a known message was
    seen. Entries without a timestamp fall back to "not in the recent ``tail``".

    Example::

        >>> fresh_log_lines([LogEntry(1.0, "a"), LogEntry(2.0, "b")], ["1.0", "a"], [])
        (['b'], ['2.0', 'b'])
    """
    fresh, after = fresh_log_entries(entries, cursor, tail)
    return [e.message for e in fresh], after


def fresh_log_entries(entries: list[LogEntry], cursor: list[str],
                      tail: list[str]) -> tuple[list[LogEntry], list[str]]:
    """:func:`fresh_log_lines`, keeping each line's timestamp."""
    newest = float(cursor[0]) if cursor else 0.0
    seen_at = set(cursor[1:])
    recent = set(tail)
    out: list[LogEntry] = []
    for entry in entries:
        at, message = entry
        if at <= 0.0:
            if message not in recent:
                out.append(entry)
                recent.add(message)
            continue
        if at < newest or (at == newest and message in seen_at):
            continue
        if at > newest:
            newest, seen_at = at, set()
        seen_at.add(message)
        out.append(entry)
    kept = sorted(seen_at)[:_CURSOR_MAX]
    return out, ([repr(newest), *kept] if newest > 0 else list(cursor))


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
        check_s: float = CHECK_S,
    ) -> Status | StopReason:
        """Return the COMPLETED status, or the reason ``should_stop`` gave for stopping.

        ``check_s`` bounds how long the follower goes without asking ``should_stop``.
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
                    got, result = self._stream_once(status_url, should_stop, on_status, check_s)
                    if result is not None:
                        return result
                    # The server closed the stream before COMPLETED: reconnect at once the
                    # first time, with backoff if it keeps doing so without news.
                    failures = 0 if got else failures + 1
                    if failures:
                        reason = _sleep(min(5.0, 0.25 * 2 ** failures), should_stop)
                        if reason:
                            return reason
                    continue
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

    def _stream_once(
        self, status_url: str, should_stop: Callable[[], StopReason | None],
        on_status: Callable[[Status], None], check_s: float,
    ) -> tuple[bool, Status | StopReason | None]:
        """One stream connection: (whether it brought a status, the outcome or None if it closed)."""
        got = False
        with self.fal.open_stream(status_url) as stream:
            while True:
                item = stream.next(timeout=check_s)
                if item is StreamEnd:
                    return got, None
                if isinstance(item, Status):
                    got = True
                    on_status(item)
                    if item.done:
                        return got, item
                reason = should_stop()
                if reason:
                    return got, reason


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
        pending_logs: list[LogEntry] = []
        cursor = [list(self.rec.log_cursor)]

        def take_logs(r: JobRecord, lines: list[LogEntry], at: list[str]) -> None:
            r.add_logs([e.message for e in lines], [e.at for e in lines])
            r.log_cursor = at

        def on_status(st: Status) -> None:
            tail = [*self.rec.logs, *(e.message for e in pending_logs)]
            fresh, cursor[0] = fresh_log_entries(st.logs, cursor[0], tail)
            pending_logs.extend(fresh)
            del pending_logs[:-LOGS_TAIL]
            new = _STATE_OF.get(st.status)
            if new and new != self.rec.state and not st.done:
                logs, at = list(pending_logs), list(cursor[0])
                pending_logs.clear()

                def moved(r: JobRecord, new: State = new) -> None:  # type: ignore[assignment]
                    if new == "in_progress" and r.submitted_at and r.queue_wait is None:
                        r.queue_wait = time.time() - r.submitted_at
                    take_logs(r, logs, at)
                    r.move(new)

                self.commit(moved)

        def on_error(exc: Exception) -> None:
            self.commit(lambda r: r.add_error(exc))

        try:
            pushed = self._await_webhook() if self.s.fal_webhook_url else None
            result = pushed or Follower(self.ctx.fal, self.s, on_error=on_error).follow(
                self.rec.status_url, should_stop=self.stop_reason, on_status=on_status
            )
        except FalStartTimeout as exc:  # on the status or the stream: fal dropped it, unbilled
            return self._fail(exc)
        except PermanentError as exc:
            # fal answered something unusable while we followed it (non-JSON, an unknown status,
            # an oversized event). Left to escape, it would reach the task's catch-all and the
            # job would loop until its deadline: stop paying for the request and fail the job.
            self._cancel_at_fal()
            return self._fail(exc)
        if not isinstance(result, Status):
            if result == "cancel":
                return self._cancel()  # None: fal was asked; the loop follows the request on
            if result == "deadline":
                return self._deadline()
            if result == "unanswered":
                return self._ended_after_cancel("unknown", "no answer from fal")
            return Outcome(False, 0.0)
        self.ctx.admission.release(self.rec)
        done_at = time.time()
        # fal's log tail and the clock of FALQ_FAL_RESULT_RETRY_S (kept across steps, so the
        # window spans redeliveries) ride on the next save: the move to mirroring once the result
        # is kept, else the first error saved while fetching it. A step that dies before that save
        # loses neither: the next one follows the request again, reads the same logs and starts
        # the clock at its own COMPLETED (the window can only grow by the gap, never cost a
        # submission). A failed request saves them now, before the failure is handled.
        clock = not result.error and self.rec.fal_completed_at is None
        if pending_logs or clock:
            logs, at = list(pending_logs), list(cursor[0])

            def noted(r: JobRecord) -> None:
                if logs:
                    take_logs(r, logs, at)
                if clock:
                    r.fal_completed_at = r.fal_completed_at or done_at

            if result.error:
                self.commit(noted)
            else:
                self.defer(noted)
        if result.error:
            if self.rec.fal_cancel_at is not None:
                # fal's answer to the cancel: removed from its queue, or stopped while running.
                how: Literal["stopped", "removed"] = "removed" if self.rec.state == "in_queue" else "stopped"
                return self._ended_after_cancel(how, f"{result.error_type or ''} {result.error}".strip())
            return self._failed_attempt(self._failure_detail(result))
        kept = self._keep_result()
        if isinstance(kept, Outcome):
            return kept

        def completed(r: JobRecord) -> None:
            # fal's output and what it says (billed units, its time) are saved with the move to
            # mirroring: one save. A step that ends before it finds no result_saved_at and asks
            # fal for the result again (a read, never a new submission).
            kept(r)
            inference = result.metrics.get("inference_time")
            r.inference_time = float(inference) if isinstance(inference, int | float) else None
            r.fal_completed_at = r.fal_completed_at or done_at
            if r.fal_cancel_at is not None:
                r.fal_outcome = "finished"  # fal completed it despite the cancel: billed, kept
            r.move("mirroring")

        fetched = self.saved_result if kept is not _noted_already else None
        try:
            self.commit(completed, result=fetched)
        except Stop:
            if fetched is not None:  # the record turned terminal meanwhile: keep the paid output for `falq retry`
                self.ctx.store.save_result(self.rec.id, fetched)
            raise
        if kept is not _noted_already and self.rec.cost_billed is not None:
            self.ctx.admission.billed(self.rec)  # the batch's reservation becomes what fal billed
        self.fresh_mirror = True
        return None

    def _keep_result(self) -> Outcome | Callable[[JobRecord], None]:
        """Fetch fal's output once (:attr:`saved_result`, for the caller's next save to keep beside
        the record). Returns the change that notes it on the record (billed units, when), for that
        same save to apply.

        The request COMPLETED without an error: it succeeded and is billed. An answer that
        says nothing about the request (an ingress page, a reset, a 5xx with or without a
        request id, :class:`FalResultError`) is asked again with backoff for up to
        ``FALQ_FAL_RESULT_RETRY_S`` from COMPLETED, across steps; never a new submission.
        Only a result error naming an infrastructure ``error_type`` starts a new attempt.
        A user's cancel does not stop this: the output is paid for.
        """
        self.saved_result = None  # only this call's own save may stand in for a read
        if self.rec.result_saved_at is not None and self.ctx.store.load_result(self.rec.id) is not None:
            return _noted_already
        assert self.rec.response_url
        since = self.rec.fal_completed_at or time.time()  # the clock, deferred by the caller, is about now
        tries = 0
        while True:
            try:
                res = self.ctx.fal.result(self.rec.response_url)
                break
            except FalRequestFailedTransient as exc:
                if self.rec.fal_cancel_at is not None:
                    return self._ended_after_cancel("stopped", str(exc))
                out = self._failed_attempt(exc)
                return out if out is not None else Outcome(False, 0.0)  # queued: the next step submits
            except RetryableError as exc:
                tries += 1
                self.commit(lambda r, exc=exc: r.add_error(exc))  # type: ignore[misc]
                waited = time.time() - since
                if waited > self.s.fal_result_retry_s:
                    return self._fail(FalResultUnavailable(
                        f"fal finished request {self.rec.request_id} but its result kept failing for "
                        f"{waited:.0f}s (FALQ_FAL_RESULT_RETRY_S={self.s.fal_result_retry_s:.0f}; last: {exc}); "
                        "it was billed; falq did not submit it again"))
                delay = backoff_delay(tries, base_s=self.s.retry_base_s, max_s=min(30.0, self.s.retry_max_s),
                                      retry_after=exc.retry_after)
                if _sleep(delay, self.io_stop_reason):
                    return Outcome(False, 0.0)  # the next step follows (COMPLETED at once) and fetches again
            except FalRequestFailed as exc:
                if self.rec.fal_cancel_at is not None:
                    return self._ended_after_cancel("stopped", str(exc))
                return self._fail(exc)
            except PermanentError as exc:  # moderation, start timeout, result gone, a hostile body
                return self._fail(exc)
        self.saved_result = res.raw
        saved_at = time.time()
        quote = self.ctx.pricing.quote(self.rec.endpoint)  # the account's price (falq.shared.spend.pricing)

        def kept(r: JobRecord) -> None:
            r.result_saved_at = saved_at
            r.unit_price, r.price_source = quote.unit_price, quote.source
            r.billable_units = res.billable_units
            if res.billable_units is not None:
                r.cost_billed = quote.cost(res.billable_units)
                r.cost_source = "fal_billable_units"

        return kept

    def _await_webhook(self) -> Status | str | None:
        """fal's pushed completion (see :mod:`falq.workers.steps.fal_push`), a stop reason, or None once
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
        except (FalContentPolicy, FalStartTimeout, FalResultGone) as exc:
            return exc if not isinstance(exc, FalResultGone) else fallback
        except FalRequestFailed as exc:
            if status.error_type in TRANSIENT_ERROR_TYPES and not isinstance(exc, FalRequestFailedTransient):
                return fallback  # the status said transient; trust it over a vague result code
            return exc
        except FalqError:
            return fallback
        return fallback
