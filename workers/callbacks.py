"""Per-job callbacks: when a job ends, POST its final record to the URL the producer gave."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.records import JobRecord

if TYPE_CHECKING:
    from workers.context import WorkerContext


def schedule_callback(ctx: WorkerContext, rec: JobRecord) -> None:
    """Deliver ``rec`` to its callback URL (no-op when the job has none)."""
    if not rec.callback_url:
        return
