"""The callback outbox: per-job callbacks that survive any worker's death, kept in Redis.

The save that makes a job terminal appends its end-of-job entry (:mod:`falq.shared.jobs.ended`)
in the same Lua script, marked ``cb`` when the job has a ``callback_url`` or a ``fal_webhook``
(the gateway's fal-shaped webhook: the same outbox, the same sender). The senders read that
stream through the consumer group ``callbacks`` and enter each such job in ``{p}:outbox``
(sorted set, score: when to try next; :meth:`Outbox.schedule`) before acknowledging the entry.
So no terminal state exists without its callback pending, in the stream or in the outbox,
whatever happens to the worker afterwards. Beside it, in the job's hash,
``cb_version`` (the record version that saved the terminal state: the delivery id),
``cb_tries``, ``cb_since`` (when this round of tries began) and ``cb_settled`` (the targets
of a job with both that need no more tries).

Every worker runs a delivery loop (:mod:`falq.workers.callbacks.sender`) over this class:

* :meth:`Outbox.claim` takes due entries atomically by moving their score forward by a
  claim lease; the new score is the claim's token. No other worker sees them as due until
  the lease ends, so two workers never deliver the same try. A worker that dies holding a
  claim leaves the entry due again when the lease ends;
* :meth:`Outbox.finish` appends the try to ``{p}:delivery:{id}`` (a list of JSON entries,
  capped at :data:`LOG_CAP`, expiring with the record), then -- only while the entry still
  carries the claim's token -- removes it (delivered, or given up: then it moves to
  ``{p}:outbox:failed``) or sets its next due time (retry);
* :meth:`Outbox.redeliver` puts a job back in the outbox, due now, with a fresh round of tries.

The delivery id (``X-Falq-Delivery-Id``) is ``{job_id}:{cb_version}``: the same for every try
and every redelivery of one terminal outcome, new when a retried job ends again.

Example::

    outbox = Outbox(store)
    for claim in outbox.claim(limit=10, lease_s=30):
        entry = outbox.entry(claim.job_id)          # the record, its delivery id and tries
        ...                                          # POST it
        outbox.finish(claim, "done", attempt={"at": time.time(), "status_code": 204, ...})
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from falq.shared.egress import url_host
from falq.shared.errors import JobNotFound
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.redisconn import text as as_text
from falq.shared.scripts import register

#: Tries kept per job in ``{p}:delivery:{id}`` (the newest).
LOG_CAP = 100

Action = Literal["done", "retry", "failed", "drop"]

@dataclass(frozen=True)
class Claim:
    """A due entry this process took; ``token`` is the score the claim gave it."""

    job_id: str
    token: str


@dataclass(frozen=True)
class Entry:
    """What a delivery needs: the record, the delivery id and the round's tries so far."""

    record: JobRecord
    delivery_id: str
    tries: int
    since: float


@dataclass(frozen=True)
class CallbackView:
    """One job's callback as ``falq callbacks pending`` shows it.

    ``status``: ``pending`` (in the outbox; ``next_at`` is when it is tried next, or when the
    try in flight gives up its claim) or ``failed`` (``next_at`` is None; ``failed_at`` set).
    ``last``: the newest try in the delivery log.
    """

    job_id: str
    status: Literal["pending", "failed"]
    delivery_id: str | None
    tries: int
    since: float | None
    next_at: float | None
    failed_at: float | None
    url_host: str | None
    job_state: str
    last: dict[str, Any] | None = field(default=None)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def delivery_id(job_id: str, version: int | str) -> str:
    """``X-Falq-Delivery-Id``: stable for one terminal outcome of a job."""
    return f"{job_id}:{version}"




class Outbox:
    """The outbox of one deployment (the job store's Redis and key prefix)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.r = store.r
        self.keys = store.keys
        self._claim = register(self.r, "outbox.claim")
        self._finish = register(self.r, "outbox.finish")
        self._redeliver = register(self.r, "outbox.redeliver")
        self._settle = register(self.r, "outbox.settle")
        self._append = register(self.r, "outbox.append")
        self._schedule = register(self.r, "outbox.schedule")

    # --- the delivery loop's side ----------------------------------------------------------------
    def schedule(self, job_id: str, version: str, since: float) -> int:
        """Enter the callback of the job's end saved as ``version`` (at ``since``), due now: what
        the sender does with each end-of-job entry that has a callback. 1 entered, 0 already
        entered for this version or a newer one, -1 the record is gone."""
        keys = [self.keys.outbox, self.keys.outbox_failed, self.store.job_key(job_id)]
        return int(self._schedule(keys=keys, args=[job_id, version, repr(since)]))

    def claim(self, *, limit: int, lease_s: float, now: float | None = None) -> list[Claim]:
        """Take up to ``limit`` due entries for ``lease_s`` seconds (atomic: one taker per try)."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        # A little jitter keeps two claims of one entry (the second after the first's lease)
        # from ever carrying the same token.
        token = repr(now + lease_s + random.random() * 1e-3)
        ids = self._claim(keys=[self.keys.outbox], args=[repr(now), token, int(limit)])
        return [Claim(as_text(i), token) for i in ids]

    def entry(self, job_id: str) -> Entry | None:
        """The record and delivery state of ``job_id``; None when the record is gone."""
        rec = self._get(job_id)
        if rec is None:  # gone, or a corrupt record: nothing to deliver
            return None
        cb_version, tries, since = self.r.hmget(self.store.job_key(job_id), "cb_version", "cb_tries", "cb_since")
        version = as_text(cb_version) if cb_version is not None else str(rec.version)
        return Entry(rec, delivery_id(job_id, version), int(tries or 0),
                     float(since) if since is not None else rec.updated_at)

    def finish(self, claim: Claim, action: Action, *, attempt: dict[str, Any] | None = None,
               next_at: float | None = None) -> bool:
        """Log ``attempt`` and apply ``action`` (``done``, ``retry`` at ``next_at``, ``failed``, ``drop``).

        Returns False (and changes nothing but the log) when the entry no longer carries the
        claim's token: the claim lapsed and another worker took it, or a redelivery or a new
        terminal outcome replaced it.
        """
        entry = json.dumps(attempt, separators=(",", ":")) if attempt is not None else ""
        now = time.time()
        due = repr(next_at if next_at is not None else now)
        res = self._finish(
            keys=[self.keys.outbox, self.keys.outbox_failed, self.store.job_key(claim.job_id),
                  self.keys.delivery(claim.job_id)],
            args=[claim.job_id, claim.token, entry, action, due, LOG_CAP, repr(now), self.store.ttl_s],
        )
        return bool(res == 1)

    def settled(self, job_id: str, delivery_id: str) -> dict[str, bool]:
        """The job's targets that need no more tries for ``delivery_id``: kind -> delivered.

        A job with both a ``callback_url`` and a ``fal_webhook`` has one entry and two targets;
        one that got through is not posted again while the other is retried. Kept in the job's
        hash as ``cb_settled`` (``{delivery id}|kind=1,kind=0,``): a new outcome starts afresh."""
        raw = self.r.hget(self.store.job_key(job_id), "cb_settled")
        text = as_text(raw) if raw is not None else ""
        prefix = f"{delivery_id}|"
        if not text.startswith(prefix):
            return {}
        out: dict[str, bool] = {}
        for part in text[len(prefix):].split(","):
            kind, _, ok = part.partition("=")
            if kind:
                out[kind] = ok == "1"
        return out

    def settle(self, job_id: str, delivery_id: str, kind: str, delivered: bool) -> None:
        """Note that ``kind`` needs no more tries for ``delivery_id`` (see :meth:`settled`)."""
        self._settle(keys=[self.store.job_key(job_id)], args=[delivery_id, f"{kind}={1 if delivered else 0}"])

    def append_log(self, job_id: str, attempt: dict[str, Any]) -> None:
        """Log one try without touching the entry (the other targets' tries of one round)."""
        self._append(keys=[self.store.job_key(job_id), self.keys.delivery(job_id)],
                     args=[json.dumps(attempt, separators=(",", ":")), LOG_CAP, self.store.ttl_s])

    # --- reading and redelivering (``falq callbacks``) -------------------------------------------------
    def log(self, job_id: str) -> list[dict[str, Any]]:
        """Every try logged for ``job_id``, oldest first."""
        out = []
        for raw in self.r.lrange(self.keys.delivery(job_id), 0, -1):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out

    def pending(self, *, limit: int = 100) -> list[CallbackView]:
        """Entries still to be delivered, soonest first (entries whose record is gone are pruned)."""
        rows = self.r.zrange(self.keys.outbox, 0, limit - 1, withscores=True)
        return self._views([(as_text(i), float(s)) for i, s in rows], "pending")

    def failed(self, *, limit: int = 100, since: float | None = None) -> list[CallbackView]:
        """Callbacks that gave up, newest first (after ``since``)."""
        lo = since if since is not None else "-inf"
        rows = self.r.zrevrangebyscore(self.keys.outbox_failed, "+inf", lo, start=0, num=limit, withscores=True)
        return self._views([(as_text(i), float(s)) for i, s in rows], "failed")

    def is_pending(self, job_id: str) -> bool:
        return self.r.zscore(self.keys.outbox, job_id) is not None

    def pending_of(self, job_ids: list[str]) -> list[CallbackView]:
        """The pending entries of these jobs (those not in the outbox are left out)."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.zscore(self.keys.outbox, job_id)
        scores = pipe.execute()
        return self._views([(i, float(s)) for i, s in zip(job_ids, scores, strict=True) if s is not None], "pending")

    def redeliver(self, job_id: str, *, now: float | None = None) -> bool:
        """Queue the job's callback again, due now, with a fresh round of tries (same delivery id)."""
        now = time.time() if now is None else now
        res = self._redeliver(keys=[self.keys.outbox, self.keys.outbox_failed, self.store.job_key(job_id)],
                              args=[job_id, repr(now)])
        return bool(res == 1)

    def _get(self, job_id: str) -> JobRecord | None:
        try:
            return self.store.get(job_id)
        except JobNotFound:
            return None

    def _views(self, rows: list[tuple[str, float]], status: Literal["pending", "failed"]) -> list[CallbackView]:
        if not rows:
            return []
        ids = [i for i, _ in rows]
        try:
            recs = self.store.get_many(ids)
        except ValidationError:  # a corrupt record: read one by one (store.get calls it gone)
            recs = [self._get(i) for i in ids]
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(self.store.job_key(i), "cb_version", "cb_tries", "cb_since")
            pipe.lindex(self.keys.delivery(i), -1)
        raw = pipe.execute()
        out: list[CallbackView] = []
        gone: list[str] = []
        for n, ((job_id, score), rec) in enumerate(zip(rows, recs, strict=True)):
            if rec is None:
                gone.append(job_id)
                continue
            (cb_version, tries, since), last = raw[2 * n], raw[2 * n + 1]
            try:
                last_doc = json.loads(last) if last is not None else None
            except ValueError:
                last_doc = None
            out.append(CallbackView(
                job_id=job_id, status=status,
                delivery_id=delivery_id(job_id, as_text(cb_version)) if cb_version is not None else None,
                tries=int(tries or 0), since=float(since) if since is not None else None,
                next_at=score if status == "pending" else None, failed_at=score if status == "failed" else None,
                url_host=url_host(rec.callback_url or rec.fal_webhook), job_state=rec.state, last=last_doc,
            ))
        if gone:
            pipe = self.r.pipeline(transaction=False)
            for job_id in gone:
                pipe.zrem(self.keys.outbox, job_id)
                pipe.zrem(self.keys.outbox_failed, job_id)
            pipe.execute()
        return out




__all__ = ["LOG_CAP", "CallbackView", "Claim", "Entry", "Outbox", "delivery_id"]
