"""Following a bulk run: poll job records in batches, report progress, write the results.

Records are read with :meth:`falq.shared.jobs.store.JobStore.get_many` (one pipelined round trip
per 1,000 jobs), only for jobs not yet terminal, about once a second -- never one call per
job. Ctrl-C stops the waiting (nothing is cancelled); the results file is still written.

Example::

    report = wait_and_report(falq, lines, job_ids, results_path="run.results.jsonl", timeout=3600)
    print(report.summary())   # 1000 lines: 998 completed, 2 failed, 0 cancelled in 83.2s (12.0 jobs/s)
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falq.shared.jobs.records import STATES, TERMINAL, JobRecord

if TYPE_CHECKING:
    from falq.producers.bulk.parse import BulkLine, Reject
    from falq.producers.client import Falq

POLL_BATCH = 1000


@dataclass
class Snapshot:
    """Where a bulk run stands, for progress displays."""

    total: int
    counts: dict[str, int]
    elapsed_s: float
    #: Jobs that became terminal per minute since waiting began.
    rate_per_min: float
    eta_s: float | None
    #: The last few failures as ``(line, "type: message")``.
    failures: list[tuple[int, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in TERMINAL)


@dataclass
class BulkReport:
    """The outcome of :func:`wait_and_report`."""

    lines: int
    counts: dict[str, int]
    elapsed_s: float
    timed_out: bool = False
    interrupted: bool = False
    results_path: Path | None = None
    #: Problems that did not stop the run (e.g. presigning failed).
    warnings: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return sum(n for s, n in self.counts.items()
                   if s not in TERMINAL and s not in ("rejected", "missing", "moderated"))

    def summary(self) -> str:
        """``1000 lines: 998 completed, 2 failed, 0 cancelled in 83.2s (12.0 jobs/s)``."""
        c = self.counts
        failed = f"{c.get('failed', 0)} failed"
        if c.get("moderated"):
            failed += f" ({c['moderated']} refused by fal's content checker)"
        parts = [f"{c.get('completed', 0)} completed", failed, f"{c.get('cancelled', 0)} cancelled"]
        if self.pending:
            parts.append(f"{self.pending} not finished")
        if c.get("rejected"):
            parts.append(f"{c['rejected']} rejected")
        if c.get("missing"):
            parts.append(f"{c['missing']} missing")
        done = sum(c.get(s, 0) for s in TERMINAL)
        rate = done / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return f"{self.lines} lines: {', '.join(parts)} in {self.elapsed_s:.1f}s ({rate:.1f} jobs/s)"

    @property
    def exit_code(self) -> int:
        """0 all completed, 1 some failed/cancelled/missing, 4 timed out, 130 interrupted."""
        if self.interrupted:
            return 130
        if self.timed_out:
            return 4
        bad = sum(self.counts.get(s, 0) for s in ("failed", "cancelled", "missing"))
        return 1 if bad else 0


def wait_and_report(falq: Falq, lines: Sequence[BulkLine], job_ids: Sequence[str], *,
                    rejects: Sequence[Reject] = (), results_path: str | Path | None = None,
                    timeout: float | None = None, poll_s: float = 1.0, wait: bool = True,
                    on_progress: Callable[[Snapshot], None] | None = None,
                    started: float | None = None) -> BulkReport:
    """Wait until every job is terminal (or ``timeout``/Ctrl-C), then write the results JSONL.

    Parameters:
        falq: the client (its job store is polled).
        lines, job_ids: the enqueued lines and their job ids, in the same order.
        rejects: invalid lines, reported as ``state: "rejected"`` in the results.
        results_path: where to write one JSON line per input line (None: do not write).
        timeout: seconds to wait at most; the report then has ``timed_out``.
        wait: False to only read the current states once.
        on_progress: called with a :class:`Snapshot` after each poll.
        started: ``time.monotonic()`` at which the run began (for rates); default now.

    Example::

        report = wait_and_report(falq, lines, ids, results_path="out.jsonl", on_progress=print)
        sys.exit(report.exit_code)
    """
    t0 = time.monotonic() if started is None else started
    wait_start = time.monotonic()
    end = None if timeout is None else wait_start + timeout
    latest: dict[str, JobRecord | None] = {}
    interrupted = timed_out = False
    initial_done: int | None = None
    try:
        while True:
            _poll(falq, job_ids, latest)
            snap = _snapshot(lines, job_ids, latest, t0, wait_start, initial_done)
            if initial_done is None:
                initial_done = snap.done
            if on_progress is not None:
                on_progress(snap)
            if not wait or all(_finished(latest.get(j)) for j in job_ids):
                break
            if end is not None and time.monotonic() >= end:
                timed_out = True
                break
            time.sleep(poll_s if end is None else max(0.0, min(poll_s, end - time.monotonic())))
    except KeyboardInterrupt:
        interrupted = True
    counts = Counter(_state(latest.get(j)) for j in job_ids)
    moderated = sum(1 for j in job_ids if _moderated(latest.get(j)))
    if moderated:
        counts["moderated"] = moderated  # a share of "failed", counted on its own
    if rejects:
        counts["rejected"] = len(rejects)
    report = BulkReport(lines=len(lines) + len(rejects), counts=dict(counts), elapsed_s=time.monotonic() - t0,
                        timed_out=timed_out, interrupted=interrupted)
    if results_path is not None:
        report.results_path = write_results(falq, results_path, lines, job_ids, latest, rejects, report.warnings)
    return report


def write_results(falq: Falq, path: str | Path, lines: Sequence[BulkLine], job_ids: Sequence[str],
                  records: dict[str, JobRecord | None], rejects: Sequence[Reject], warnings: list[str]) -> Path:
    """Write the results JSONL atomically (a temp file renamed into place), in line order."""
    out = Path(path)
    rows: list[tuple[int, dict[str, Any]]] = []
    presign = Presigner(falq, warnings)
    for item, job_id in zip(lines, job_ids, strict=True):
        rec = records.get(job_id)
        rows.append((item.line, result_row(item.line, item.id, job_id, rec, item.request.metadata, presign)))
    for r in rejects:
        msg = "; ".join(str(e) for e in r.errors)
        rows.append((r.line, {"line": r.line, "id": None, "job_id": None, "state": "rejected", "outputs": [],
                              "error": {"type": "invalid_input", "message": msg}, "metadata": {}}))
    rows.sort(key=lambda x: x[0])
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for _, row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out


def _moderated(rec: JobRecord | None) -> bool:
    return rec is not None and rec.state == "failed" and rec.error is not None and rec.error.type == "content_policy"


#: The error message of a cancelled job's row whose images fal made anyway (they are in ``outputs``).
_CANCELLED_KEPT = "cancelled, but fal finished it anyway: billed, its images are kept"


def result_row(line: int, line_id: str | None, job_id: str, rec: JobRecord | None,
                metadata: dict[str, Any] | None, presign: Presigner) -> dict[str, Any]:
    if rec is None:
        return {"line": line, "id": line_id, "job_id": job_id, "state": "missing", "outputs": [],
                "error": {"type": "job_not_found", "message": "the job record is gone (expired or deleted)"},
                "metadata": dict(metadata or {})}
    outputs = [{"bucket": o.bucket, "key": o.key, "sha256": o.sha256, "size": o.size,
                "content_type": o.content_type, "width": o.width, "height": o.height,
                "presigned_url": presign(o.key)} for o in rec.outputs] if rec.has_result else []
    err = rec.error if rec.state in ("failed", "cancelled") else None
    error: dict[str, Any] | None = {"type": err.type, "message": err.message} if err else (
        {"type": "cancelled", "message": _CANCELLED_KEPT if rec.kept_after_cancel else "cancelled"}
        if rec.state == "cancelled" else None)
    if error is not None and rec.moderation is not None:
        error["categories"] = rec.moderation
    return {"line": line, "id": line_id, "job_id": job_id, "state": rec.state, "outputs": outputs,
            "error": error, "moderated": _moderated(rec), "fal_outcome": rec.fal_outcome, "cost": rec.cost,
            "cost_source": rec.cost_source,
            "tenant": rec.tenant, "metadata": rec.metadata}


class Presigner:
    """Presigns lazily (no S3 client unless something completed); a failure is noted once."""

    def __init__(self, falq: Falq, warnings: list[str]) -> None:
        self.falq = falq
        self.warnings = warnings
        self.storage: Any = None
        self.broken = False

    def __call__(self, key: str) -> str | None:
        if self.broken:
            return None
        try:
            if self.storage is None:
                from falq.shared.storage.s3 import Storage

                self.storage = Storage(self.falq.settings)
            return str(self.storage.presign(key))
        except Exception as exc:  # a results file without URLs beats no results file
            self.broken = True
            self.warnings.append(f"presigned URLs left out: {type(exc).__name__}: {exc}")
            return None


def _poll(falq: Falq, job_ids: Sequence[str], latest: dict[str, JobRecord | None]) -> None:
    todo = [j for j in job_ids if not _finished(latest.get(j)) or j not in latest]
    for start in range(0, len(todo), POLL_BATCH):
        batch = todo[start:start + POLL_BATCH]
        for job_id, rec in zip(batch, falq.store.get_many(batch), strict=True):
            latest[job_id] = rec


def _finished(rec: JobRecord | None) -> bool:
    # A missing record cannot change any more: count it as finished (reported "missing").
    return rec is None or rec.state in TERMINAL


def _state(rec: JobRecord | None) -> str:
    return "missing" if rec is None else rec.state


def _snapshot(lines: Sequence[BulkLine], job_ids: Sequence[str], latest: dict[str, JobRecord | None],
              t0: float, wait_start: float, initial_done: int | None) -> Snapshot:
    counts: dict[str, int] = {s: 0 for s in STATES}
    failures: list[tuple[int, str]] = []
    for item, job_id in zip(lines, job_ids, strict=True):
        rec = latest.get(job_id)
        state = _state(rec)
        counts[state] = counts.get(state, 0) + 1
        if rec is not None and rec.state == "failed" and rec.error is not None:
            failures.append((item.line, f"{rec.error.type}: {rec.error.message}"))
    now = time.monotonic()
    done = sum(counts.get(s, 0) for s in TERMINAL)
    waited = now - wait_start
    fresh = done - (initial_done if initial_done is not None else done)
    rate = fresh / waited * 60 if waited > 0 else 0.0
    remaining = len(job_ids) - done - counts.get("missing", 0)
    eta = remaining / rate * 60 if rate > 0 else None
    return Snapshot(total=len(job_ids), counts=counts, elapsed_s=now - t0, rate_per_min=rate, eta_s=eta,
                    failures=failures[-5:])
