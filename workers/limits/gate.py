"""Builds the admission gate the worker uses: the shared limits of its fal key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from falq.workers.limits.admission import Admission

if TYPE_CHECKING:
    from falq.workers.context import WorkerContext


def build_admission(ctx: WorkerContext) -> Admission:
    """A :class:`~falq.workers.limits.limiter.LimitsAdmission`: the shared limits of the worker's key,
    including the pause of the key when fal answers that the account is locked."""
    from falq.workers.limits.limiter import LimitsAdmission

    return LimitsAdmission(ctx)
