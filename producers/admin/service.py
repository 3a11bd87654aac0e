"""The administration service of one falq deployment: :class:`Admin`, one class over its parts."""

from __future__ import annotations

from falq.producers.admin.callbacks import CallbacksAdmin
from falq.producers.admin.jobs import JobsAdmin
from falq.producers.admin.limits import LimitsAdmin
from falq.producers.admin.tenants import TenantAdmin


class Admin(LimitsAdmin, TenantAdmin, JobsAdmin, CallbacksAdmin):
    """The administration of one falq deployment (its Redis, its settings).

    Parameters:
        falq: the producer client (its Redis connection, job store and Celery app).
        settings: settings to read the key prefix, the fal key and the defaults from
            (default: the client's).

    Every method validates its arguments first (see :mod:`falq.producers.admin`) and raises
    :class:`~falq.shared.errors.InvalidInput` before touching Redis; unknown job ids raise
    ``JobNotFound``. The methods live with their concern: limits and budget
    (:class:`~falq.producers.admin.limits.LimitsAdmin`), tenants and API keys
    (:class:`~falq.producers.admin.tenants.TenantAdmin`), retries, cancels and listings
    (:class:`~falq.producers.admin.jobs.JobsAdmin`), callbacks
    (:class:`~falq.producers.admin.callbacks.CallbacksAdmin`).
    """


__all__ = ["Admin"]
