"""The seam where a job asks permission before it is submitted to fal.

Global limits (submissions per second, requests outstanding at fal, the daily budget)
plug in here; the worker pipeline calls :meth:`Admission.admit` right before a submit
and :meth:`Admission.release` when the request is no longer outstanding at fal.

Example::

    class Unlimited(Admission):
        def admit(self, rec): return None
"""

from __future__ import annotations

from falq.shared.errors import FalAccountLocked
from falq.shared.jobs.records import JobRecord


class Admission:
    """Decides whether a job may submit now.

    ``admit`` returns None when the job may go ahead, or the number of seconds to wait
    before asking again (the job then waits without spending an attempt). It may also
    set ``rec.paused`` to say why (``"budget"``, ``"account_locked"``).
    """

    def admit(self, rec: JobRecord) -> float | None:
        return None

    def sending(self, rec: JobRecord) -> None:
        """Called right before the submit POST (after the attempt was counted); may wait briefly."""

    def submitted(self, rec: JobRecord) -> None:
        """Called once fal accepted the job's request."""

    def following(self, rec: JobRecord) -> None:
        """Called when a step starts following the job's request at fal (again after a redelivery)."""

    def release(self, rec: JobRecord) -> None:
        """Called when the job's request is no longer outstanding at fal."""

    def billed(self, rec: JobRecord) -> None:
        """Called once fal's result said what the job was billed (``rec.cost_billed``)."""

    def account_locked(self, rec: JobRecord, exc: FalAccountLocked) -> None:
        """fal refused ``rec``'s submit because the account is locked (exhausted balance).

        Called by the submit phase itself, not by a hook that may swallow errors: if the
        pause cannot be recorded the error reaches the step and the job waits again.
        """

    def housekeeping(self) -> None:
        """Drop expired bookkeeping (the maintenance pass calls it every half minute)."""


class Unlimited(Admission):
    """No limits: every job goes ahead at once (the default until limits are configured)."""
