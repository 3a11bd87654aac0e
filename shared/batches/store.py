"""Batches: a set of jobs enqueued together (every ``falq bulk`` run, every ``POST /v1/batches``).

A batch has an id and a name, its tenant, its source (file name and sha256 of the last run),
when it was created and when its last job ended, counts by state, the estimated and billed
spend, and from those a throughput and an ETA.

**Exact counts, never recounted.** The counts live in the batch's hash (``{p}:batch:{id}``:
``n:{state}``, ``total``, ``est_micro``, ``billed_micro``, ``last_end``) and move only inside the
job store's Lua scripts (:mod:`falq.shared.jobs.store`): the create that stores a job with a
``batch_id`` adds it to ``total`` and to its first state, and every save that changes a job's
state moves one from the old state's count to the new one's in the same atomic step (a terminal
save also adds the billed micro-dollars), and the undo of an enqueue whose broker message could
not be sent (Redis out of memory, ``JobStore.forget_unpublished``) takes the job out of ``total``,
its state's count and ``est_micro`` in the same step that deletes the record. Concurrent
workers, a SIGKILL between two writes or a retry therefore cannot make them drift;
:meth:`BatchStore.recount` recounts from the records to prove it (the chaos suite does).

**Ids.** A batch's id is derived from its tenant and its run key (``b`` + 24 hex digits of
sha256), the same run key that makes bulk lines idempotent (:func:`falq.producers.bulk.enqueue.file_key`:
``--run-id`` or the file's path). Rerunning the same file therefore joins the same batch and
the same jobs, even after lines were fixed (the source's sha256 is updated to the last run).

Example::

    store = BatchStore(redis_client, prefix="falq")
    b, created = store.open(batch_id_for("default", "nightly"), name="nightly", tenant="default",
                            source_name="prompts.jsonl", source_sha256="9f2c...", run_key="nightly")
    store.get(b.id).counts      # {'queued': 120, 'completed': 880, ...}
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from falq.shared.errors import BatchNotFound
from falq.shared.jobs.records import STATES, TERMINAL, JobRecord
from falq.shared.keys import Keys
from falq.shared.spend.batch_cap import PAUSED_REASON, BatchCaps, CapState

#: Jobs read per round trip when listing a batch's jobs.
PAGE = 1000


def batch_id_for(tenant: str, run_key: str) -> str:
    """The batch id of a run: the same tenant and run key always give the same id.

    Example::

        batch_id_for("default", "bulk:3f1c0e9a7b2d4c11")   # 'b5e0c...' (25 characters)
    """
    return "b" + hashlib.sha256(f"{tenant}\0{run_key}".encode()).hexdigest()[:24]


def valid_batch_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 25 and value[0] == "b" and all(
        c in "0123456789abcdef" for c in value[1:])


@dataclass
class Batch:
    """A batch as stored, with its live counts."""

    id: str
    name: str
    tenant: str
    source_name: str
    source_sha256: str
    created_at: float
    run_key: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    est_usd: float = 0.0
    billed_usd: float = 0.0
    last_end: float | None = None
    #: The batch's spend cap and its spend against it (:mod:`falq.shared.spend.batch_cap`).
    cap: CapState | None = None

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in TERMINAL)

    @property
    def active(self) -> int:
        return self.total - self.done

    @property
    def finished_at(self) -> float | None:
        """When the last job ended, once none is left to run (None while some still run)."""
        return self.last_end if self.total and not self.active else None

    def throughput_per_min(self, now: float | None = None) -> float:
        """Jobs ended per minute since the batch was created (to its end once finished)."""
        end = self.finished_at or (now if now is not None else time.time())
        elapsed = max(end - self.created_at, 1e-9)
        return self.done / elapsed * 60

    def eta_s(self, now: float | None = None) -> float | None:
        rate = self.throughput_per_min(now)
        if not self.active:
            return 0.0
        return self.active / rate * 60 if rate > 0 else None

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        """The batch as JSON (``falq batch show --json``, ``GET /v1/batches/{id}``)."""
        cap = self.cap.as_json() if self.cap is not None else None
        paused = bool(cap and cap["waiting"] and not self.finished_at)
        return {
            "id": self.id, "object": "batch", "name": self.name, "tenant": self.tenant,
            "source": {"file_name": self.source_name, "sha256": self.source_sha256, "run_key": self.run_key},
            "created_at": self.created_at, "finished_at": self.finished_at,
            "status": "completed" if self.finished_at else ("paused" if paused else "in_progress"),
            "paused_reason": (f"{PAUSED_REASON}: {cap['waiting'] if cap else 0} job(s) wait because the batch's "
                              f"billed plus reserved spend would pass its max_spend of "
                              f"${(cap or {}).get('max_spend_usd') or 0:.2f} (raise it: falq batches set-cap ID USD)"
                              if paused else None),
            "spend_cap": cap,
            "counts": {s: self.counts.get(s, 0) for s in STATES}, "total": self.total, "done": self.done,
            "spend": {"estimated_usd": round(self.est_usd, 6), "billed_usd": round(self.billed_usd, 6)},
            "throughput_per_min": round(self.throughput_per_min(now), 3), "eta_s": _round(self.eta_s(now)),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


class BatchStore:
    """Reads and writes batches in Redis (the counts are written by the job store's scripts)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "falq") -> None:
        self.r = client
        self.keys = Keys(prefix)

    def open(self, batch_id: str, *, name: str, tenant: str, source_name: str, source_sha256: str,
             run_key: str = "") -> tuple[Batch, bool]:
        """Create the batch, or join it when it exists (its source is updated to this run)."""
        key = self.keys.batch(batch_id)
        now = time.time()
        doc = {"id": batch_id, "name": name, "tenant": tenant, "source_name": source_name,
               "source_sha256": source_sha256, "created_at": now, "run_key": run_key}
        created = bool(self.r.hsetnx(key, "doc", json.dumps(doc)))
        if created:
            self.r.zadd(self.keys.batches, {batch_id: now}, nx=True)
        else:
            old = self.get(batch_id)
            doc = {**doc, "created_at": old.created_at, "name": old.name}
            self.r.hset(key, "doc", json.dumps(doc))
        return self.get(batch_id), created

    def add_jobs(self, batch_id: str, jobs: list[tuple[str, int]]) -> None:
        """Enter ``(job id, line)`` pairs in the batch's job index (idempotent)."""
        for start in range(0, len(jobs), PAGE):
            chunk = jobs[start:start + PAGE]
            self.r.zadd(self.keys.batch_jobs(batch_id), {job_id: line for job_id, line in chunk})

    def get(self, batch_id: str, *, tenant: str | None = None) -> Batch:
        """The batch; :class:`BatchNotFound` when unknown (or, with ``tenant``, another tenant's)."""
        raw = self.r.hgetall(self.keys.batch(batch_id)) if isinstance(batch_id, str) else {}
        if not raw or b"doc" not in raw:
            raise BatchNotFound(f"no batch with id {batch_id!r}")
        doc = json.loads(raw[b"doc"])
        if tenant is not None and doc.get("tenant") != tenant:
            raise BatchNotFound(f"no batch with id {batch_id!r}")
        fields = {k.decode(): v.decode() for k, v in raw.items() if k != b"doc"}
        counts: dict[str, int] = {s: int(fields.get(f"n:{s}", 0)) for s in STATES}
        last = fields.get("last_end")
        cap = BatchCaps(self.r, prefix=self.keys.prefix).state(doc["id"])
        return Batch(id=doc["id"], name=doc.get("name", ""), tenant=doc.get("tenant", "default"),
                     source_name=doc.get("source_name", ""), source_sha256=doc.get("source_sha256", ""),
                     created_at=float(doc.get("created_at", 0.0)), run_key=doc.get("run_key", ""), counts=counts,
                     total=int(fields.get("total", 0)), est_usd=int(fields.get("est_micro", 0)) / 1e6,
                     billed_usd=int(fields.get("billed_micro", 0)) / 1e6,
                     last_end=float(last) if last else None, cap=cap)

    def recent(self, *, tenant: str | None = None, limit: int = 50) -> list[Batch]:
        """Batches, newest first (only ``tenant``'s when given)."""
        out: list[Batch] = []
        start = 0
        while len(out) < limit:
            ids = [x.decode() for x in self.r.zrevrange(self.keys.batches, start, start + 199)]
            if not ids:
                break
            start += len(ids)
            for batch_id in ids:
                try:
                    b = self.get(batch_id, tenant=tenant)
                except BatchNotFound:
                    continue
                out.append(b)
                if len(out) >= limit:
                    break
        return out

    def job_ids(self, batch_id: str) -> list[tuple[str, int]]:
        """``(job id, line)`` of every job of the batch, by line."""
        out: list[tuple[str, int]] = []
        start = 0
        while True:
            page = self.r.zrange(self.keys.batch_jobs(batch_id), start, start + PAGE * 10 - 1, withscores=True)
            if not page:
                return out
            out.extend((m.decode(), int(score)) for m, score in page)
            start += len(page)

    def records(self, batch_id: str, get_many: Any) -> list[tuple[int, str, JobRecord | None]]:
        """``(line, job id, record or None)`` of every job, read ``PAGE`` at a time."""
        jobs = self.job_ids(batch_id)
        out: list[tuple[int, str, JobRecord | None]] = []
        for start in range(0, len(jobs), PAGE):
            chunk = jobs[start:start + PAGE]
            for (job_id, line), rec in zip(chunk, get_many([j for j, _ in chunk]), strict=True):
                out.append((line, job_id, rec))
        return out

    def recount(self, batch_id: str, get_many: Any) -> dict[str, int]:
        """Counts by state recounted from the job records (to check the kept counts)."""
        counts: dict[str, int] = {s: 0 for s in STATES}
        for _, _, rec in self.records(batch_id, get_many):
            if rec is not None:
                counts[rec.state] += 1
        return counts


__all__ = ["Batch", "BatchStore", "batch_id_for", "valid_batch_id"]
