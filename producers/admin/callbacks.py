"""Per-job callbacks (``falq callbacks``): the outbox's pending and failed deliveries, their
log, and delivering them again (:mod:`falq.shared.callbacks.outbox`).

The rules (:class:`CallbacksQuery` for a listing)::

    limit                     an integer from 1 to 100000
    since                     a duration (30s, 10m, 2h, 1d), an ISO date/time or epoch seconds;
                              only with the failed callbacks
    (a redelivery)            at least one job; each must exist, have a callback_url and have ended

Example::

    admin.callbacks_pending()        # [CallbackView(job_id=..., tries=2, next_at=..., ...)]
    admin.redeliver_failed()         # every failed callback queued again (same delivery ids)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from falq.producers.admin.base import LIMIT_RULE, MAX_LIMIT, AdminBase, at_least_one_id
from falq.shared.callbacks.outbox import CallbackView, Outbox
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.since import SINCE_RULE, validate_since
from falq.shared.validation import Checked, Integer, rule

NO_CALLBACK_RULE = "has no callback_url"
NOT_ENDED_RULE = "has not ended yet (its callback is sent when it does)"
ONLY_FAILED_RULE = "only with the failed callbacks"


class CallbacksQuery(Checked):
    """What a listing of callbacks asks for: pending ones (soonest first) or, with ``failed``,
    those that gave up (after ``since``, newest first)."""

    RULES: ClassVar[Mapping[str, str]] = {"limit": LIMIT_RULE, "since": SINCE_RULE}

    #: Any value, by its truth (the CLI's flag, a keyword argument).
    failed: Annotated[bool, BeforeValidator(bool)] = False
    limit: Integer = Field(100, ge=1, le=MAX_LIMIT)
    since: Any = None

    @field_validator("since")
    @classmethod
    def _since(cls, value: Any, info: ValidationInfo) -> float | None:
        if value is not None and not info.data.get("failed"):
            raise rule(ONLY_FAILED_RULE)
        try:
            return validate_since(value)
        except InvalidInput:
            raise ValueError(SINCE_RULE) from None


class CallbacksAdmin(AdminBase):
    """The :class:`~falq.producers.admin.Admin` methods ``callbacks_pending``, ``callback_log``,
    ``redeliver`` and ``redeliver_failed``."""

    @property
    def outbox(self) -> Outbox:
        return Outbox(self.falq.store)

    def callbacks_pending(self, *, failed: bool = False, since: float | str | None = None,
                          limit: int | str = 100) -> list[CallbackView]:
        """Callbacks still to be delivered, soonest next try first, with their tries and last try;
        with ``failed``, those that gave up (after ``since``), newest first."""
        query = CallbacksQuery.check({"failed": failed, "since": since, "limit": limit})
        if query.failed:
            return self.outbox.failed(limit=query.limit, since=query.since)
        return self.outbox.pending(limit=query.limit)

    def callback_log(self, job_id: str) -> list[dict[str, Any]]:
        """Every try of the job's callback, oldest first (time, status code or error, final).

        Raises ``JobNotFound``.
        """
        self.falq.store.get(job_id)
        return self.outbox.log(job_id)

    def redeliver(self, job_ids: Iterable[str]) -> list[CallbackView]:
        """Queue these jobs' callbacks again, due now, with a fresh retry window.

        The delivery id stays the same (receivers deduplicate on it), even for a callback that
        was delivered. Raises ``JobNotFound`` for an unknown id and :class:`InvalidInput` for a
        job without a ``callback_url`` or not ended, before anything is changed.
        """
        ids = at_least_one_id(job_ids)
        recs = [self.falq.store.get(job_id) for job_id in ids]
        errors = [FieldError("job_ids", f"{r.id}: {NO_CALLBACK_RULE}") for r in recs if not r.callback_url]
        errors += [FieldError("job_ids", f"{r.id}: {NOT_ENDED_RULE}") for r in recs
                   if r.callback_url and not r.terminal]
        if errors:
            raise InvalidInput(errors)
        return self._redeliver(ids)

    def redeliver_failed(self, since: float | str | None = None) -> list[CallbackView]:
        """:meth:`redeliver` every callback that gave up (after ``since``)."""
        ts = validate_since(since)
        return self._redeliver([v.job_id for v in self.outbox.failed(limit=MAX_LIMIT, since=ts)])

    def _redeliver(self, ids: list[str]) -> list[CallbackView]:
        outbox = self.outbox
        done = [job_id for job_id in ids if outbox.redeliver(job_id)]
        return outbox.pending_of(done)


__all__ = ["NOT_ENDED_RULE", "NO_CALLBACK_RULE", "ONLY_FAILED_RULE", "CallbacksAdmin", "CallbacksQuery"]
