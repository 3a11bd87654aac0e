"""Builds the admission gate the worker uses: the shared limits of its fal key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.admission import Admission

if TYPE_CHECKING:
    from workers.context import WorkerContext


def build_admission(ctx: WorkerContext) -> Admission:
    """A :class:`~workers.limiter.LimitsAdmission`, plus the middleware that pauses the key
    when fal answers 402 / locked (see ``workers/limiter.py``)."""
    from workers.limiter import AccountLockedPause, LimitsAdmission

    admission = LimitsAdmission(ctx)
    ctx.middleware.append(AccountLockedPause(admission.limiter, ctx.settings.locked_pause_s,
                                             ctx.settings.key_suffix()))
    return admission
