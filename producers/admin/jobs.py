"""Retries, cancels and job listings (``falq retry``, ``falq cancel``, ``falq jobs``,
``/v1/jobs/{id}/retry``, ``/v1/retry-failed``, ``/v1/jobs/{id}/cancel`` and fal's cancel).

The rules of a listing are :class:`JobsQuery`'s (a pydantic model)::

    state     one of falq's job states
    since     a duration (30s, 10m, 2h, 1d), an ISO date/time or epoch seconds; a finite time,
              never blank
    limit     an integer from 1 to 100000
    text      1 to 500 characters
    job ids   at least one (a retry)

Example::

    [out] = admin.retry(["8f3e..."]); out.retried   # also for a job only the catalogue holds
    out.reason                       # when not retried, e.g. 'it completed: a completed job is not run again ...'
    admin.cancel("8f3e...").outcome  # 'cancelled' | 'requested' | 'final' (an archived job: 'final')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator

from falq.producers.admin.base import LIMIT_RULE, MAX_LIMIT, AdminBase, at_least_one_id
from falq.shared.errors import JobNotFound
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.jobs.records import STATES, JobRecord
from falq.shared.since import SINCE_RULE, Since, validate_since
from falq.shared.validation import Checked, Integer

STATE_RULE = f"must be one of {', '.join(STATES)}"
TEXT_RULE = "must be 1 to 500 characters"
# Why a retry left a job as it was (RetryOutcome.reason): the CLI prints it, the gateway's 409 says it.
#: The states the live retry (:meth:`Falq.retry`) runs again; moderated jobs are failed ones.
RETRIED_STATES = ("failed",)
COMPLETED_REASON = ("it completed: a completed job is not run again (fal made and billed its images; "
                    "submit a new job for new ones)")
NOT_FAILED_REASON = "it is {state}: only failed jobs are run again"
LOST_INPUT_REASON = ("its input is not kept whole in the catalogue ({path}: {what}); "
                     "submit it again as a new job with its full input")
GONE_TENANT_REASON = "its tenant {tenant!r} no longer exists"
DENIED_ENDPOINT_REASON = "its tenant {tenant!r} may no longer use {endpoint}"
GONE_ENDPOINT_REASON = "its endpoint {endpoint} is no longer one falq runs"
GONE_BATCH_REASON = "its batch {batch} is no longer kept (its counts could not follow the job)"
GONE_PARENT_REASON = "its parent job {parent} is no longer kept (neither in Redis nor in the catalogue)"
NO_CALLBACK_WARNING = ("its callback URL is not kept in the catalogue (only its host, {host}): "
                       "this run sends no callback")
#: How long a record brought back from the catalogue stays in Redis if nothing moves it on (a
#: parent revived for its child's release; a retry cut off between the revive and the retry).
REVIVE_TTL_MIN_S = 3600


class JobsQuery(Checked):
    """What a job listing asks for (``falq jobs``, ``falq dead-letters``): every rule checked at once."""

    RULES: ClassVar[Mapping[str, str]] = {"state": STATE_RULE, "since": SINCE_RULE, "limit": LIMIT_RULE,
                                          "text": TEXT_RULE}

    state: str | None = Field(None, strict=True)
    since: Since = None
    limit: Integer = Field(50, ge=1, le=MAX_LIMIT)
    text: str | None = Field(None, strict=True)

    @field_validator("state")
    @classmethod
    def _state(cls, value: str | None) -> str | None:
        if value is not None and value not in STATES:
            raise ValueError(STATE_RULE)
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value.strip()) <= 500:
            raise ValueError(TEXT_RULE)
        return value


@dataclass(frozen=True)
class RetryOutcome:
    """One job of a retry: its record now, whether this call queued it again, why not
    (``reason``, when ``retried`` is false) and what the new run lacks (``warning``: a job
    brought back from the catalogue has no callback URL, see :meth:`JobsAdmin.retry`)."""

    record: JobRecord
    retried: bool
    reason: str = ""
    warning: str = ""


@dataclass(frozen=True)
class CancelOutcome:
    """A cancel: ``cancelled`` (at once), ``requested`` (its worker cancels it at fal) or
    ``final`` (it had already ended; nothing was changed)."""

    record: JobRecord
    outcome: Literal["cancelled", "requested", "final"]


class JobsAdmin(AdminBase):
    """The :class:`~falq.producers.admin.Admin` methods ``retry*``, ``cancel``, ``jobs`` and ``dead_letters``."""

    def retry(self, job_ids: Iterable[str]) -> list[RetryOutcome]:
        """Run failed jobs again as new attempts of the same jobs (their error history is kept).

        Jobs that are not ``failed`` are returned unchanged (``retried`` false, ``reason`` says
        why: a completed job is never run again). A failed job only the catalogue still holds
        (its Redis record expired after archiving) runs again too, from its row (see
        :meth:`_retry`). Raises ``JobNotFound`` for an unknown id before anything is changed.
        """
        return self._retry(at_least_one_id(job_ids))

    def retry_failed(self, since: float | str | None = None, *, tenant: str | None = None) -> list[RetryOutcome]:
        """:meth:`retry` every failed job (that failed after ``since``; only ``tenant``'s when given)."""
        ts = validate_since(since)
        ids = self.falq.store.ids_in_state("failed", limit=MAX_LIMIT, since=ts)
        if tenant is not None and ids:
            ids = [r.id for r in self.falq.store.get_many(ids) if r is not None and r.tenant == tenant]
        return self._retry(ids)

    def _retry(self, ids: list[str]) -> list[RetryOutcome]:
        """Retry ``ids``: live jobs as they are, jobs only the catalogue holds once revived.

        A job whose Redis record expired after archiving is written back first, as archived
        (:func:`falq.shared.catalogue.revive.revive`), and then goes through the very same live
        retry (:meth:`Falq.retry`, whose hand-off is ``FairShare.make_ready``): the same rules
        (only failed jobs; a completed one never, so no second fal submission for a request fal
        finished), the same compare-and-set (two retries at once make one new attempt; each may
        answer ``retried``, as for a live job), and its next end
        is archived again over the same row (the row's version is the record's). An archived
        job is refused, left as it is, when it cannot run as it was: its input not kept whole
        (a data URI, a signed URL), its tenant, endpoint, batch or a parent no longer there."""
        if not ids:
            return []
        try:
            found = self.falq.store.get_many(ids)
        except ValidationError:  # a corrupt record: read one by one (store.get calls it not found)
            found = [self._find(job_id) for job_id in ids]
        live = {job_id: rec for job_id, rec in zip(ids, found, strict=True) if rec is not None}
        # Every id is found (Redis or catalogue) before anything is changed: else JobNotFound.
        archived = self._archived([job_id for job_id in ids if job_id not in live])
        refused: dict[str, RetryOutcome] = {}
        warnings: dict[str, str] = {}
        for job_id, (rec, row) in archived.items():
            reason = self._revive(rec)
            if reason:
                refused[job_id] = RetryOutcome(rec, False, reason)
                continue
            if row.get("callback_host"):
                warnings[job_id] = NO_CALLBACK_WARNING.format(host=row["callback_host"])
            try:  # the revived record, or the one another retry revived first
                live[job_id] = self.falq.store.get(job_id)
            except JobNotFound:  # revived, then gone at once (a tiny revive TTL): say what the row says
                refused[job_id] = RetryOutcome(rec, False, NOT_FAILED_REASON.format(state=rec.state))
        before = {job_id: rec.state for job_id, rec in live.items()}
        runnable = [job_id for job_id in ids if job_id not in refused]
        recs = {r.id: r for r in self.falq.retry(runnable)} if runnable else {}
        out = []
        for job_id in ids:
            if job_id in refused:
                out.append(refused[job_id])
                continue
            r = recs[job_id]
            # A chained job retried goes back to waiting for its parents (falq.shared.batches.chains).
            # A job holding an output fal billed is run on from it (mirroring, or completed at once).
            retried = (before.get(job_id) in ("failed", "cancelled") and r.state != before.get(job_id)
                       and r.state in ("queued", "waiting", "mirroring", "completed"))
            out.append(RetryOutcome(r, retried, "" if retried else _not_retried(r), warnings.get(job_id, "")))
        return out

    def _archived(self, ids: list[str]) -> dict[str, tuple[JobRecord, dict[str, Any]]]:
        """``id -> (record, row)`` from the catalogue for jobs Redis no longer has; raises
        ``JobNotFound`` (the text of an unknown id) for one the catalogue lacks too."""
        if not ids:
            return {}
        from falq.shared.catalogue.rows import record_from_row

        cat = self.falq.catalogue
        out: dict[str, tuple[JobRecord, dict[str, Any]]] = {}
        for job_id in ids:
            row = cat.get_row(job_id) if cat is not None else None
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r} (never enqueued, or its record expired)")
            out[job_id] = (record_from_row(row), row)
        return out

    def _revive(self, rec: JobRecord) -> str:
        """Write the archived ``rec`` (and its archived parents) back into Redis so the live
        retry can run it; returns why it cannot run again (nothing written), else ''."""
        from falq.shared.catalogue.revive import refs_from_parents, revive
        from falq.shared.catalogue.rows import lost_in

        if rec.state == "completed":
            return COMPLETED_REASON
        if rec.state not in RETRIED_STATES:
            return NOT_FAILED_REASON.format(state=rec.state)
        if rec.endpoint not in ENDPOINTS:
            return GONE_ENDPOINT_REASON.format(endpoint=rec.endpoint)
        owner = self.tenant_store.get(rec.tenant)
        if owner is None:
            return GONE_TENANT_REASON.format(tenant=rec.tenant)
        if not owner.allows(rec.endpoint):
            return DENIED_ENDPOINT_REASON.format(tenant=rec.tenant, endpoint=rec.endpoint)
        if rec.batch_id and not self.redis.exists(self.falq.store.keys.batch(rec.batch_id)):
            return GONE_BATCH_REASON.format(batch=rec.batch_id)
        cat = self.falq.catalogue
        parents: dict[str, JobRecord] = {}
        revive_parents: list[JobRecord] = []
        for pid in rec.parents:  # a chained job: its parents must be readable when it is released
            p = self._find(pid)
            if p is None and cat is not None:
                p = cat.get(pid, tenant=rec.tenant)
                if p is not None:
                    revive_parents.append(p)
            if p is None:
                return GONE_PARENT_REASON.format(parent=pid)
            parents[pid] = p
        given = rec.input.get("image_urls")
        checked = rec.input
        if rec.parents and isinstance(given, list):
            # A released child ran with presigned URLs of its parents' outputs (archived without
            # their signatures); its references are rebuilt and resolved again at its release.
            refs = refs_from_parents(given, parents)
            if refs is not None and refs != given:
                rec.input_refs = [str(x) for x in refs]
                checked = {**rec.input, "image_urls": refs}
        lost = lost_in(checked)
        if lost:
            path, what = lost[0]
            return LOST_INPUT_REASON.format(path=path, what=what)
        ttl = max(self.settings.archived_ttl_s, REVIVE_TTL_MIN_S)
        for p in revive_parents:
            revive(self.falq.store, p, ttl_s=ttl)
        revive(self.falq.store, rec, ttl_s=ttl)  # False: another retry revived it first (it then runs once)
        return ""

    def _find(self, job_id: str) -> JobRecord | None:
        try:
            return self.falq.store.get(job_id)
        except JobNotFound:
            return None

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job: at once if no worker has it yet, else its worker cancels it at fal.

        A job that already ended is left as it is (``final``), also one only the catalogue
        still holds (its Redis record expired after archiving; it has ended). Raises ``JobNotFound``.
        """
        try:
            rec = self.falq.store.get(job_id)
        except JobNotFound:
            archived, _row = self._archived([job_id])[job_id]  # JobNotFound when the catalogue lacks it too
            return CancelOutcome(archived, "final")
        if rec.terminal:
            return CancelOutcome(rec, "final")
        after = self.falq.cancel(job_id)
        if after.state == "cancelled":
            return CancelOutcome(after, "cancelled")
        return CancelOutcome(after, "final" if after.terminal else "requested")

    def jobs(self, state: str | None = None, *, since: float | str | None = None,
             limit: int | str = 50, text: str | None = None, endpoint: str | None = None,
             tenant: str | None = None, batch_id: str | None = None,
             metadata: dict[str, str] | None = None) -> list[JobRecord]:
        """Job records (in ``state``, newer than ``since``, matching the filters), newest first,
        each with its error history: live ones from Redis and history from the catalogue."""
        query = JobsQuery.check({"state": state, "since": since, "limit": limit, "text": text})
        return self.falq.jobs(query.state, limit=query.limit, since=query.since, text=text, endpoint=endpoint,
                              tenant=tenant, batch_id=batch_id, metadata=metadata)

    def dead_letters(self, since: float | str | None = None, limit: int | str = 50) -> list[JobRecord]:
        """The failed jobs (newer than ``since``), newest first, with why they failed (``errors``)."""
        return self.jobs("failed", since=since, limit=limit)


def _not_retried(rec: JobRecord) -> str:
    """Why the live retry left ``rec`` as it is."""
    return COMPLETED_REASON if rec.state == "completed" else NOT_FAILED_REASON.format(state=rec.state)


__all__ = [
    "COMPLETED_REASON",
    "NOT_FAILED_REASON",
    "STATE_RULE",
    "CancelOutcome",
    "JobsAdmin",
    "JobsQuery",
    "RetryOutcome",
]
