"""Builds the admission gate the worker uses (limits arrive with the limits issue)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.admission import Admission, Unlimited

if TYPE_CHECKING:
    from workers.context import WorkerContext


def build_admission(ctx: WorkerContext) -> Admission:
    return Unlimited()
