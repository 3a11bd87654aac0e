"""Small hooks around the job state machine, in the manner of Dramatiq's middleware.

The runner calls every registered middleware after each saved change of a job, so that
metrics, audit logs or notifications can be added without touching the state machine.

Example::

    class CountCompleted(Middleware):
        def __init__(self): self.n = 0
        def after_transition(self, rec, old, new):
            if new == "completed": self.n += 1

    ctx.middleware.append(CountCompleted())
"""

from __future__ import annotations

from falq.shared.jobs.records import ErrorInfo, JobRecord


class Middleware:
    """Base class: override the hooks you need. Hooks must be fast and must not raise."""

    def after_transition(self, rec: JobRecord, old: str, new: str) -> None:
        """``rec`` was saved after moving from state ``old`` to ``new``."""

    def after_error(self, rec: JobRecord, error: ErrorInfo) -> None:
        """``error`` was added to ``rec``'s history and saved."""

    def after_wait(self, rec: JobRecord, reason: str, seconds: float) -> None:
        """The job waits ``seconds`` before going on (``reason``: retry, limit, budget ...)."""

    def flush(self) -> None:
        """Write out what the hooks buffered; the maintenance pass calls it every pass."""
