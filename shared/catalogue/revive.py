"""Bring a job only the catalogue holds back into Redis, as it was archived, so the live
retry can run it again (``falq retry``, ``POST /v1/jobs/{id}/retry``, ``falq batch retry``).

The live retry (:meth:`falq.producers.client.Falq.retry`) is the one path that makes a failed
job runnable again: a compare-and-set from ``failed`` to ``queued`` (or ``waiting`` for a
chained job), then :meth:`falq.shared.fairshare.scheduler.FairShare.make_ready`. A job whose Redis
record expired after archiving has no record to compare and set, so
:func:`revive` first writes the archived record back, unchanged and still terminal, and the
live retry then runs on it exactly as on a job Redis never forgot. Every rule of the live
retry therefore holds for archived jobs too, and two retries at once still make one (the
revive is an "only if absent" write, the retry a compare-and-set).

What the revive writes (:meth:`falq.shared.jobs.store.JobStore.restore`, one Lua step, only if
``{p}:job:{id}`` does not exist):

* the record hash with the row's ``version`` (so every later save, archived again by id,
  is newer than the row and replaces it), its state, ``published`` = 1 (it had its message;
  an idempotent resubmit must not publish a finished job again);
* its entries in ``{p}:state:{state}``, ``{p}:created`` and its tenant's ``{p}:created:t:{tenant}``;
* its idempotency key, when no other live job owns it meanwhile (else the record is revived
  without one: :data:`IDEM_TAKEN`);
* an expiry of ``ttl_s``: a revived record that no retry moves on (a parent revived for a
  child, a process killed in between) goes away again by itself. The retry's save takes the
  record out of its terminal state and so removes the expiry (``PERSIST``), as every such save does.

Batch counts are not touched: the batch hash still counts the job in its archived state, and
the retry's save moves that count as for a live job.

Example::

    rec = catalogue.get(job_id)
    if revive(falq.store, rec, ttl_s=3600):
        falq.retry([job_id])
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore

#: :meth:`JobStore.restore` answers: written, already in Redis, or the idempotency key names another job.
REVIVED, PRESENT, IDEM_TAKEN = 1, 0, 2


def revive(store: JobStore, rec: JobRecord, *, ttl_s: int) -> bool:
    """Write the archived ``rec`` back into Redis unless the job is there already (see the
    module docs); returns True if this call wrote it. A live job owning the record's
    idempotency key meanwhile keeps it: the record is then revived without the key."""
    for _ in range(2):
        res = store.restore(rec, ttl_s=ttl_s)
        if res != IDEM_TAKEN:
            return res == REVIVED
        rec = rec.model_copy(update={"idempotency_key": None})
    return False


def refs_from_parents(image_urls: list[object], parents: dict[str, JobRecord]) -> list[object] | None:
    """The ``falq:JOB_ID#N`` references a released chained job was given, rebuilt from its
    archived input: each URL of a parent's output (its presigned URL, archived without the
    signature) becomes the reference to that output again; other entries stay as they are.

    The catalogue does not keep ``input_refs``; the parents' outputs say which S3 object each
    URL was. None when a cut URL matches no parent's output (the input cannot be rebuilt).

    Example::

        refs_from_parents(["https://s3/b/falq/ep/2026/../0.png?\\u2026"], {"8f3e...": parent})
        # ['falq:8f3e...#0']
    """
    outputs = [(pid, o.index, o.key) for pid, p in parents.items() for o in p.outputs]
    out: list[object] = []
    changed = False
    for url in image_urls:
        if not (isinstance(url, str) and url.endswith("?\u2026")):
            out.append(url)
            continue
        path = unquote(urlsplit(url[:-2]).path)
        hit = next((f"falq:{pid}#{index}" for pid, index, key in outputs if path.endswith("/" + key)), None)
        if hit is None:
            return None
        out.append(hit)
        changed = True
    return out if changed else list(image_urls)


__all__ = ["IDEM_TAKEN", "PRESENT", "REVIVED", "refs_from_parents", "revive"]
