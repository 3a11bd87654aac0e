"""Job records in Redis: create (idempotently), read, compare-and-set save, list by state.

Layout (``{p}`` is ``FALQ_KEY_PREFIX``, default ``falq``):

* ``{p}:job:{id}`` -- hash ``{state, version, doc, input, published[, result]}``. While the job
  runs, the record is split: ``input`` (the validated input, JSON) is written by the create and
  again only when it changes (a chained job's references resolved); ``doc`` is the rest of the
  record (JSON), rewritten by every save. The save that makes the job terminal writes it whole
  (``doc`` with the input, no ``input`` field), the form that takes the least memory for the days
  a finished record is kept. A whole record (finished, or created by an older release) is read
  the same and saved whole.
  ``result`` is fal's output JSON, kept from COMPLETED until the images are in S3.
* ``{p}:state:{state}`` -- sorted set of job ids by last update, one per state.
* ``{p}:created`` -- sorted set of all job ids by creation time.
* ``{p}:created:t:{tenant}`` -- the same, of one tenant's jobs (written by the create, removed
  with the record): tenant listings walk it instead of skipping other tenants' records. Records
  older than it are entered once by the reaper's backfill (:meth:`JobStore.backfill_tenant_index`);
  until that is done listings walk ``{p}:created`` (:meth:`JobStore.tenant_index_ready`).
* ``{p}:idem:{key}`` -- idempotency key -> job id.
* ``{p}:cancel:{id}`` -- set when a producer asked to cancel.
* ``{p}:ended`` -- the end-of-job stream: the save that makes a job terminal appends one entry
  in the same script, for the catalogue, the callback and waiting children (:mod:`falq.shared.jobs.ended`).

Every write is a compare-and-set on ``version`` done in Lua, so a worker and a producer
(cancel, retry) can never overwrite each other's changes: the loser reloads and reapplies.
A worker step's saves are also fenced by its lease token (``save(rec, fence=...)``): one whose
lease expired (cut off from Redis longer than the lease) cannot write over the new holder.
Non-terminal records never expire (that would lose a job); terminal ones expire after
``FALQ_RECORD_TTL_S``. With the catalogue on (``archive=True``, :mod:`falq.shared.catalogue`)
a terminal save instead marks its end-of-job entry for the archiver and keeps the record until
the archiver has committed it to SQL, which then gives it ``FALQ_ARCHIVED_TTL_S``.

Example::

    store = JobStore(redis.Redis.from_url(url), prefix="falq", ttl_s=86400)
    rec, created = store.create(JobRecord.new(endpoint=..., input={...}), idempotency_key="k1")
    store.update(rec.id, lambda r: r.move("cancelled"))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from falq.shared.errors import JobNotFound
from falq.shared.jobs.records import STATES, TERMINAL, JobRecord
from falq.shared.keys import HOLE, Keys, room_keys
from falq.shared.redisconn import replicas_to_wait_for, wait_for_replicas
from falq.shared.scripts import register

#: Tenants with up to this many jobs in Redis answer a ``state=`` listing from their own
#: creation index (:meth:`JobStore.tenant_rows_in_state`): ids only, ``ZMSCORE`` in pages.
TENANT_STATE_CAP = 20_000
_ZMSCORE_PAGE = 2_000
#: How far before the end of the last walk :meth:`JobStore.catch_up_tenant_index` starts again
#: (producers stamp ``created_at`` before their create reaches Redis, on their own clocks).
CATCH_UP_MARGIN_S = 600.0


class Conflict(Exception):
    """Someone else saved the record since it was read; reload and reapply."""


class CancelAsked(Exception):
    """A save made ``unless_cancelled`` found a cancel asked for the job: nothing was written."""


class LeaseLost(Exception):
    """A fenced save was refused: the caller's lease on the job expired or another worker took
    it over (a host cut off from Redis for longer than the lease). Stop working on the job."""


class JobStore:
    """Reads and writes job records.

    Parameters:
        client: a ``redis.Redis`` (``decode_responses=False``).
        prefix: key prefix shared by every falq process of one deployment.
        ttl_s: how long terminal records are kept.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "falq", ttl_s: int = 7 * 24 * 3600,
                 archive: bool = False) -> None:
        self.r = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.ttl_s = ttl_s
        #: The catalogue is on (``FALQ_CATALOGUE``): terminal saves mark their end-of-job entry for it and
        #: keep the record until the archiver set its short TTL (falq.workers.maintenance.archive).
        self.archive = archive
        self._create = register(client, "job.create")
        self._save = register(client, "job.save")
        self._save_result = register(client, "job.save_result")
        self._crashed = register(client, "job.crashed")
        self._cancel = register(client, "job.cancel")
        self._index_owned = register(client, "job.index_owned")
        self._forget_tenant_if_empty = register(client, "job.forget_tenant")
        self._forget = register(client, "job.forget_unpublished")
        self._restore = register(client, "job.restore")
        self._job_tpl = self.keys.job(HOLE)
        self._state_tpl = self.keys.state(HOLE)
        #: The save's KEYS[11..15]: the fair-dispatch room a terminal save frees (lib.fair_free).
        self._fair_keys = room_keys(self.keys)

    # --- keys ----------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return self.keys.job(job_id)

    def idem_key(self, key: str | None, tenant: str = "default") -> str:
        """The Redis key of an idempotency key, in ``tenant``'s namespace (see :mod:`falq.shared.keys`)."""
        return self.keys.idem(key, tenant) if key else ""

    def cancel_key(self, job_id: str) -> str:
        return self.keys.cancel(job_id)

    # --- create ----------------------------------------------------------------------------
    def create(self, rec: JobRecord, idempotency_key: str | None = None, *,
               fair: bool = False) -> tuple[JobRecord, bool]:
        """Store a new queued record; with a known idempotency key return the existing job.

        With ``fair`` a queued job also enters its tenant's ready set in the same step
        (:mod:`falq.shared.fairshare.scheduler`) instead of waiting for a directly published message.
        Returns ``(record, created)``.
        """
        rec.idempotency_key = idempotency_key
        rec.version = 1
        keys, args = self._create_call(rec, idempotency_key, fair)
        if not replicas_to_wait_for(self.r):
            owner = self._create(keys=keys, args=args)
        else:  # on a replica before the producer hands out the id (redisconn.wait_for_replicas)
            pipe = self.r.pipeline(transaction=False)
            self._create(keys=keys, args=args, client=pipe)
            (owner,) = wait_for_replicas(self.r, pipe=pipe, what=f"the record of job {rec.id}")
        owner_id = owner.decode() if isinstance(owner, bytes) else str(owner)
        if owner_id == rec.id:
            return rec, True
        return self.get(owner_id), False

    def _create_call(self, rec: JobRecord, idempotency_key: str | None, fair: bool) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``job.create`` (shared/lua/job.lua)."""
        k = self.keys
        tenant = rec.tenant or "default"
        # A queued job enters its tenant's ready set with the record (fair dispatch); a waiting
        # one (a chained child) enters it when it is released.
        ready = fair and rec.state == "queued"
        keys = [self.job_key(rec.id), self.idem_key(idempotency_key, rec.tenant), k.state(rec.state), k.created,
                k.created_tenant(tenant), k.created_tenants, k.created_backfill,
                k.batch(rec.batch_id) if rec.batch_id else "",
                k.fair_ready(rec.lane, tenant) if ready else "", k.fair_active(rec.lane) if ready else ""]
        rec._input_json = to_json(rec.input)
        doc, inp = _dumped(rec)
        args = [rec.id, doc, rec.created_at, rec.state, str(round(rec.cost_estimate * 1_000_000)),
                tenant, self._job_tpl, inp]
        return keys, args

    def create_many(self, items: list[tuple[JobRecord, str | None]], *, fair: bool = False) -> list[str]:
        """Pipelined :meth:`create` for bulk enqueue; returns the owning job id per item."""
        pipe = self.r.pipeline(transaction=False)
        for rec, key in items:
            rec.idempotency_key = key
            rec.version = 1
            keys, args = self._create_call(rec, key, fair)
            self._create(keys=keys, args=args, client=pipe)
        owners = wait_for_replicas(self.r, pipe=pipe, what=f"the records of {len(items)} jobs")
        return [o.decode() if isinstance(o, bytes) else str(o) for o in owners]

    def mark_published(self, job_ids: Iterable[str]) -> None:
        """Record that a broker message exists for these jobs (see :meth:`unpublished`)."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hset(self.job_key(job_id), "published", "1")
        pipe.execute()

    def is_published(self, job_id: str) -> bool:
        return self.r.hget(self.job_key(job_id), "published") == b"1"

    def published_flags(self, job_ids: list[str]) -> list[bool]:
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.job_key(job_id), "published")
        return [v == b"1" for v in pipe.execute()]

    # --- read --------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        return self.record_of(job_id, self.r.hmget(self.job_key(job_id), "doc", "version", "input"))

    def get_queued(self, pipe: redis.client.Pipeline, job_id: str) -> None:
        """Queue :meth:`get`'s read on ``pipe``, with the job's streak of crashed steps, its
        cancel request and its published flag; :meth:`record_of`, :func:`crash_streak`,
        :func:`cancel_asked` and :func:`unflagged` read the reply (a worker step reads the record
        with its other first reads in one round trip)."""
        pipe.hmget(self.job_key(job_id), "doc", "version", "input", "crashes", "cancel", "published")

    def record_of(self, job_id: str, row: list[Any]) -> JobRecord:
        """The record from a :meth:`get` or :meth:`get_queued` reply; :class:`JobNotFound` if
        gone or corrupt."""
        doc, version, inp = row[:3]
        if doc is None:
            raise JobNotFound(f"no job with id {job_id!r} (never enqueued, or its record expired)")
        try:
            return record_from(doc, version, inp)
        except ValidationError:
            # A record that no longer parses cannot be run; treat it as gone rather than loop on it.
            raise JobNotFound(f"job {job_id!r} has a corrupt record") from None

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The records of ``job_ids`` (None: gone, or corrupt), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.job_key(job_id), "doc", "version", "input")
        out: list[JobRecord | None] = []
        for doc, version, inp in pipe.execute():
            try:
                out.append(record_from(doc, version, inp) if doc is not None else None)
            except ValidationError:
                out.append(None)
        return out

    def version_of(self, job_id: str) -> int | None:
        """The saved record's version (None: no record); one HGET."""
        raw = self.r.hget(self.job_key(job_id), "version")
        return int(raw) if raw is not None else None

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(self.job_key(job_id)))

    # --- write ---------------------------------------------------------------------------------
    def save(self, rec: JobRecord, *, fence: tuple[str, str] | None = None, drop_result: bool = False,
             result: bytes | None = None, unless_cancelled: bool = False) -> None:
        """Compare-and-set: write ``rec`` if nobody saved since it was read.

        Raises :class:`Conflict` on a concurrent change and :class:`JobNotFound` if the
        record was deleted meanwhile. The save that makes a job terminal also appends its
        end-of-job entry (``{p}:ended``: archive, callback, children), atomically.
        ``fence`` (``(lease key, token)``, what worker steps pass) makes the save conditional,
        in the same script, on still holding that lease: a stale holder back from a network
        partition gets :class:`LeaseLost` and writes nothing. ``result``: fal's output JSON, kept
        beside the record from this save on (:meth:`save_result`, in the same step as the record
        that notes it); ``drop_result``: the kept result goes in this save (its images are in S3).
        ``unless_cancelled``: write nothing if a cancel was asked (:meth:`request_cancel`) and
        raise :class:`CancelAsked`, in the same script (a job's last save asks this way).
        """
        expected = rec.version
        rec.version = expected + 1
        rec.updated_at = time.time()
        archive = self.archive and rec.state in TERMINAL
        ttl = self.ttl_s if rec.state in TERMINAL and not archive else 0
        callback = "1" if rec.state in TERMINAL and (rec.callback_url or rec.fal_webhook) else "0"
        terminal = "1" if rec.state in TERMINAL else "0"
        billed = round((rec.cost_billed or 0.0) * 1_000_000)
        # A finished record is kept whole: it lives for days, and one field more costs more
        # memory than the input it would save (a hash entry and its allocations); "-" tells
        # the script to drop the input field of a record stored split until now.
        merge = rec.state in TERMINAL and rec._input_json is not None
        doc, inp = (rec.model_dump_json(), None) if merge else _dumped(rec)
        input_arg = b"-" if merge else (inp if inp != rec._input_json else b"")
        res = self._save(
            keys=[self.job_key(rec.id), self.idem_key(rec.idempotency_key, rec.tenant), fence[0] if fence else "",
                  self.keys.batch(rec.batch_id) if rec.batch_id else "", self.keys.children(rec.id),
                  self.keys.ended, self.keys.state(rec.state), *self._fair_keys],
            args=[expected, rec.version, rec.state, doc, rec.updated_at, rec.id, ttl,
                  callback, fence[1] if fence else "", str(billed), terminal, self._state_tpl,
                  "1" if archive else "0", input_arg, "1" if drop_result else "0", result or b"",
                  "1" if unless_cancelled else "0"],
        )
        if res == 1:
            rec._input_json = inp
            return
        rec.version = expected
        if res == -2:
            raise LeaseLost(rec.id)
        if res == -3:
            raise CancelAsked(rec.id)
        if res == -1:
            raise JobNotFound(f"job {rec.id} was deleted while it ran")
        raise Conflict(rec.id)

    def update(self, job_id: str, change: Callable[[JobRecord], Any], *, tries: int = 20) -> JobRecord:
        """Load, apply ``change`` and save, retrying on conflicts. Returns the saved record."""
        for _ in range(tries):
            rec = self.get(job_id)
            if change(rec) is False:
                return rec
            try:
                self.save(rec)
                return rec
            except Conflict:
                continue
        raise Conflict(job_id)

    # --- fal's output, kept until mirrored --------------------------------------------------
    def save_result(self, job_id: str, raw: bytes) -> None:
        """Keep fal's output JSON with the record: fal expires results (about an hour, 6 min
        at 10 KB or more; ``sync_mode`` ones are never kept), so it is fetched once and an S3
        outage never needs it from fal again. Raises :class:`JobNotFound` if the record is gone.
        A worker keeps it with the save that notes it (:meth:`save`'s ``result``); this is for
        a result that save could not carry (the record turned terminal meanwhile)."""
        if not self._save_result(keys=[self.job_key(job_id)], args=[raw]):
            raise JobNotFound(f"job {job_id} was deleted while it ran")

    def count_crash(self, job_id: str) -> int | None:
        """One more step of the job crashed in a row: the streak now (None: the record is gone).
        The streak is the record's ``crashes`` field; a step that runs to its end clears it
        (:meth:`falq.workers.lease.LeaseKeeper.release`)."""
        n = int(self._crashed(keys=[self.job_key(job_id)]))
        return None if n < 0 else n

    def end_crash_streak(self, job_id: str) -> None:
        self.r.hdel(self.job_key(job_id), "crashes")

    def load_result(self, job_id: str) -> bytes | None:
        raw = self.r.hget(self.job_key(job_id), "result")
        return bytes(raw) if raw is not None else None

    def request_cancel(self, job_id: str) -> None:
        """Mark the job's record as asked to cancel (the ``cancel`` field; nothing when the
        record is gone). Read by a step's first round trip and the lease keeper's renewals."""
        self._cancel(keys=[self.job_key(job_id)])

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.hexists(self.job_key(job_id), "cancel"))

    def clear_cancel(self, job_id: str) -> None:
        """The job runs again (a retry, a chained job reopened): an earlier cancel no longer
        applies. Also drops the cancel key a producer of an older release wrote."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hdel(self.job_key(job_id), "cancel")
        pipe.delete(self.cancel_key(job_id))
        pipe.execute()

    # --- list ----------------------------------------------------------------------------------
    def ids_in_state(self, state: str, *, limit: int = 100, since: float | None = None) -> list[str]:
        key = self.keys.state(state)
        lo = since if since is not None else "-inf"
        raw = self.r.zrevrangebyscore(key, "+inf", lo, start=0, num=limit)
        return [x.decode() for x in raw]

    def find(self, state: str | None = None, *, limit: int = 100, since: float | None = None,
             tenant: str | None = None) -> list[JobRecord]:
        """Records in ``state`` (or all), newest first. Expired ids are pruned on the way.

        With ``tenant`` only that tenant's records, read from its own creation index
        (``{p}:created:t:{tenant}``, see :meth:`tenant_index_ready`) so other tenants' jobs
        never crowd its newest ``limit`` out; before that index is complete (an upgrade whose
        backfill has not finished), the global index is read and filtered, as before it existed.
        """
        lo = since if since is not None else "-inf"
        own = tenant is not None and self.tenant_index_ready()
        if state is None:
            index = self.keys.created_tenant(tenant) if own and tenant is not None else self.keys.created
            ids = [x.decode() for x in self.r.zrevrangebyscore(index, "+inf", lo, 0, limit)]
        else:
            rows = self.tenant_rows_in_state(tenant, state, since=since) if tenant is not None else None
            ids = [i for i, _ in rows[:limit]] if rows is not None else \
                self.ids_in_state(state, limit=limit, since=since)
        recs = self.get_many(ids)
        gone = [i for i, r in zip(ids, recs, strict=True) if r is None]
        if gone:
            self._prune(gone, state, tenant if own else None)
        return [r for r in recs if r is not None and (tenant is None or r.tenant == tenant)]

    def counts(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for s in STATES:
            pipe.zcard(self.keys.state(s))
        return dict(zip(STATES, pipe.execute(), strict=True))

    def _prune(self, ids: list[str], state: str | None, tenant: str | None = None) -> None:
        """Drop index entries of records that are gone (the tenant's too, when it is known:
        a gone record no longer says whose it was; the reaper prunes the rest)."""
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.zrem(self.keys.created, i)
            if tenant is not None:
                pipe.zrem(self.keys.created_tenant(tenant), i)
            for s in [state] if state else STATES:
                pipe.zrem(self.keys.state(s), i)
        pipe.execute()

    # --- the per-tenant creation index ------------------------------------------------------------
    def tenant_index_ready(self) -> bool:
        """Whether every record is in its tenant's ``{p}:created:t:{tenant}`` index.

        True from the first record of a fresh Redis on (the create marks it), or once the
        one-time backfill of records created before the index existed has finished
        (:meth:`backfill_tenant_index`, run by the reaper). Until then tenant listings walk the
        global ``{p}:created`` and skip other tenants' records: slower, never incomplete."""
        return bool(self.r.hexists(self.keys.created_backfill, "done"))

    def tenant_rows_in_state(self, tenant: str, state: str, *, since: float | None = None,
                             until: float | None = None,
                             cap: int = TENANT_STATE_CAP) -> list[tuple[str, float]] | None:
        """``(id, score)`` of ``tenant``'s jobs in ``state``, newest first, exactly what a walk of
        ``{p}:state:{state}`` keeping the tenant's records would give (the same scores, last
        update; ``since`` inclusive, ``until`` exclusive; ties by id, as Redis orders them).

        Found from the tenant's creation index: its ids (no record is read) looked up in the
        state index with ``ZMSCORE``, so a small tenant's ``state=`` listing costs its own jobs,
        not the busy tenants'. None when that does not pay or cannot answer (walk the state index
        then): the tenant holds more than ``cap`` jobs, or at least as many as the state index
        (which is then no longer than the tenant's index), or the index is not complete yet.

        There is no per-tenant state index: it would be one more sorted-set entry per job
        (about as much memory again as this index) and two more writes in every save, for a
        gain only to tenants with more than ``cap`` jobs, whose own state walk is short anyway.
        """
        if not self.tenant_index_ready():
            return None
        key = self.keys.created_tenant(tenant)
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(key)
        pipe.zcard(self.keys.state(state))
        own, in_state = (int(n) for n in pipe.execute())
        if own > cap or own >= in_state:
            # A state index no longer than the tenant's own walks whole within the same cap, and
            # costs fewer reads (a single tenant's ``state=failed``); a bigger tenant walks it too.
            return None
        ids = [x.decode() for x in self.r.zrange(key, 0, cap - 1)]
        pipe = self.r.pipeline(transaction=False)
        for start in range(0, len(ids), _ZMSCORE_PAGE):
            pipe.zmscore(self.keys.state(state), ids[start:start + _ZMSCORE_PAGE])
        scores = [sc for page in pipe.execute() for sc in page] if ids else []
        rows: list[tuple[str, float]] = []
        for job_id, score in zip(ids, scores, strict=True):
            if score is None:
                continue  # in another state
            if (since is None or score >= since) and (until is None or score < until):
                rows.append((job_id, float(score)))
        rows.sort(key=lambda row: (row[1], row[0]), reverse=True)
        return rows

    def backfill_tenant_index(self, *, budget_s: float = 20.0, page: int = 1000) -> bool:
        """Enter records created before the per-tenant index existed in it, oldest first, ``page``
        at a time for about ``budget_s`` (at least one page; resumable: the cursor is kept in
        ``{p}:created:backfill``). Returns True once every record is indexed (the flag
        :meth:`tenant_index_ready` reads is set then).

        Idempotent and safe beside live traffic: entries are added only for records that still
        exist (in the same script that checks), new records index themselves, and two processes
        running it at once only repeat each other's ``ZADD``s."""
        if self.tenant_index_ready():
            return True
        cursor = (self.r.hget(self.keys.created_backfill, "cursor") or b"-inf").decode()
        if not self._walk_created(cursor, time.monotonic() + budget_s, page):
            return False
        self.r.hset(self.keys.created_backfill, "done", repr(time.time()))
        return True

    def catch_up_tenant_index(self, *, margin_s: float = CATCH_UP_MARGIN_S, budget_s: float = 20.0,
                              page: int = 1000) -> bool:
        """Index records a falq from before the per-tenant index created after the backfill
        finished (its producers, library code in users' programs, can outlive an upgrade by
        days). Seen as ``{p}:created`` holding more ids than all ``created:t`` indexes together
        (a create and an undo write both in one step and pruning takes the global entry first,
        so only such records, or a corrupt one no walk can index, make it so); the creation
        times from ``margin_s`` before where the last walk ended are walked again, each pass
        while it lasts (a few minutes of records). Returns True if it walked."""
        raw = self.r.hmget(self.keys.created_backfill, "done", "cursor")
        if raw[0] is None:
            return False  # the backfill itself is not done: it walks to the newest anyway
        tenants = sorted(self.r.smembers(self.keys.created_tenants))
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.keys.created)
        for t in tenants:
            pipe.zcard(self.keys.created_tenant(t.decode()))
        total, *own = pipe.execute()
        if int(total) <= sum(int(n) for n in own):
            return False
        since = float((raw[1] or raw[0]).decode().lstrip("(")) - margin_s
        self._walk_created(repr(since), time.monotonic() + budget_s, page)
        return True

    def _walk_created(self, cursor: str, deadline: float, page: int) -> bool:
        """Index the records of ``{p}:created`` from ``cursor`` (a Redis score bound) on, saving
        the cursor after each page; True when it reached the newest, False at ``deadline``."""
        while True:  # at least one page a call, however small the budget
            rows = self.r.zrangebyscore(self.keys.created, cursor, "+inf", start=0, num=page, withscores=True)
            if not rows:
                return True
            last = float(rows[-1][1])
            if len(rows) == page and float(rows[0][1]) == last:
                # A whole page of one creation time: take every id of that time, then move past it.
                rows = self.r.zrangebyscore(self.keys.created, last, last, withscores=True)
                cursor = f"({last!r}"
            else:
                # Inclusive: ids sharing the last time that did not fit in this page come next.
                cursor = repr(last)
            self._index_rows([(m.decode(), float(sc)) for m, sc in rows])
            self.r.hset(self.keys.created_backfill, "cursor", cursor)
            if len(rows) < page:  # the newest: every later record was created with its entry
                return True
            if time.monotonic() >= deadline:
                return False

    def _index_rows(self, rows: list[tuple[str, float]]) -> None:
        """Add ``(id, created score)`` to the owners' ``created:t`` indexes (reading each owner)."""
        if not rows:
            return
        pipe = self.r.pipeline(transaction=False)
        for job_id, _ in rows:
            pipe.hget(self.job_key(job_id), "doc")
        args: list[str] = []
        gone: list[str] = []
        for (job_id, score), doc in zip(rows, pipe.execute(), strict=True):
            if doc is None:
                # Expired (or undone) but still listed: drop its entries now, as a listing would,
                # or the catch-up would take the global index for longer than the tenants' ones.
                gone.append(job_id)
                continue
            try:
                tenant = str(from_json(doc).get("tenant") or "default")
            except (ValueError, AttributeError):
                continue  # a corrupt record is never listed (JobStore.get treats it as gone)
            args += [job_id, repr(score), tenant]
        if args:
            self._index_owned(keys=[self.keys.created_tenants],
                              args=[self._job_tpl, self.keys.created_tenant(HOLE), *args])
        if gone:
            self._prune(gone, None)

    def prune_tenant_indexes(self, older_than: float, *, batch: int = 1000) -> int:
        """Drop ``created:t`` entries older than ``older_than`` whose record expired (the
        reaper's :func:`~falq.workers.maintenance.reaper.prune_expired` does the same for the global
        indexes: an expired record no longer says whose it was, so each tenant's index is
        walked). A tenant's emptied index leaves ``{p}:created:tenants`` too. Returns how many
        entries were dropped."""
        pruned = 0
        for raw in sorted(self.r.smembers(self.keys.created_tenants)):
            tenant = raw.decode()
            key = self.keys.created_tenant(tenant)
            ids = [x.decode() for x in self.r.zrangebyscore(key, "-inf", older_than, start=0, num=batch)]
            if ids:
                pipe = self.r.pipeline(transaction=False)
                for job_id in ids:
                    pipe.exists(self.job_key(job_id))
                gone = [j for j, there in zip(ids, pipe.execute(), strict=True) if not there]
                if gone:
                    self.r.zrem(key, *gone)
                    pruned += len(gone)
            self._forget_tenant_if_empty(keys=[key, self.keys.created_tenants], args=[tenant])
        return pruned

    def tenant_index_upkeep(self, older_than: float, *, batch: int = 1000, budget_s: float = 20.0) -> int:
        """The reaper's pass over the per-tenant indexes: a step of the one-time backfill (until
        done, at most ``budget_s``) or else :meth:`catch_up_tenant_index`, then
        :meth:`prune_tenant_indexes`. Returns entries pruned."""
        if self.backfill_tenant_index(budget_s=budget_s):
            self.catch_up_tenant_index(budget_s=budget_s)
        return self.prune_tenant_indexes(older_than, batch=batch)

    # --- an archived record back (falq.shared.catalogue.revive) -----------------------------------
    def restore(self, rec: JobRecord, *, ttl_s: int) -> int:
        """Write the archived ``rec`` back, unchanged (its version, state and ``published`` = 1),
        with its index entries (the tenant's creation index included) and its idempotency key,
        only if Redis holds no record of the job. The record expires after ``ttl_s`` unless a
        later (non-terminal) save persists it. Returns 1 written, 0 already there, 2 when the
        idempotency key names another live job (nothing written: restore without the key)."""
        if rec.state not in TERMINAL:
            # Only terminal records carry a TTL (the save persists a record only when it leaves a
            # terminal state); the catalogue only holds finished jobs anyway.
            raise ValueError(f"restore takes a finished job; job {rec.id} is {rec.state}")
        ttl = max(1, int(ttl_s))
        tenant = rec.tenant or "default"
        idem = self.idem_key(rec.idempotency_key, tenant)
        return int(self._restore(
            keys=[self.job_key(rec.id), idem, self.keys.state(rec.state), self.keys.created,
                  self.keys.created_tenant(tenant), self.keys.created_tenants],
            args=[rec.id, rec.version, rec.state, rec.model_dump_json(), rec.updated_at, rec.created_at,
                  ttl, tenant, self._job_tpl]))

    # --- undo an enqueue whose broker message was never sent ------------------------------------
    def forget_unpublished(self, job_id: str, idempotency_key: str | None = None, tenant: str = "default") -> bool:
        """Delete a record created by a producer whose broker message could not be sent
        (Redis out of memory): the record, its entries in ``{p}:created``,
        ``{p}:created:t:{tenant}`` and ``{p}:state:*``, its idempotency key (if it still names
        this job), and its place in its batch: ``total``, its state's count and its estimate go
        down in the same step, so the batch's counts stay equal to a recount. Only while
        ``published`` is still 0, so a job that has a message is never touched. It deletes
        before it decrements, which Redis allows a script when it refuses writes at
        ``maxmemory``. Returns True if something was removed."""
        # The record's tenant and batch never change: read here, they name the keys to clean.
        doc = self.r.hget(self.job_key(job_id), "doc")
        owner, batch = tenant or "default", ""
        if doc is not None:
            try:
                d = from_json(doc)
                owner = str(d.get("tenant") or "default")
                batch = str(d.get("batch_id") or "")
            except (ValueError, AttributeError):
                pass  # a corrupt record: the script deletes it with what the caller named
        k = self.keys
        return bool(self._forget(
            keys=[self.job_key(job_id), self.idem_key(idempotency_key, tenant), k.cancel(job_id), k.created,
                  k.created_tenant(owner), k.batch(batch) if batch else "",
                  k.batch_jobs(batch) if batch else ""],
            args=[job_id, self._state_tpl]))


def cancel_asked(row: list[Any]) -> bool:
    """Whether a :meth:`JobStore.get_queued` reply shows a cancel request on the record."""
    return len(row) > 4 and row[4] is not None


def unflagged(row: list[Any]) -> bool:
    """Whether a :meth:`JobStore.get_queued` reply shows a record not marked published: its
    dispatcher died between the publish and the flag (a delivered job has a message)."""
    return len(row) > 5 and row[0] is not None and row[5] != b"1"


def crash_streak(row: list[Any]) -> int:
    """The job's streak of crashed steps from a :meth:`JobStore.get_queued` reply (0: none)."""
    raw = row[3] if len(row) > 3 else None
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def record_from(doc: bytes, version: bytes | str | int | None, inp: bytes | None) -> JobRecord:
    """A record as read from its hash: ``doc`` with ``input`` (a record stored split), or
    ``doc`` alone (stored whole by an older release). Raises pydantic's ``ValidationError``
    for a record that does not parse."""
    if inp is None:
        rec = JobRecord.model_validate_json(doc)
    else:
        # ``doc`` is a JSON object without "input": splicing the stored input in keeps the one
        # fast path (pydantic parses JSON itself) instead of a dict merge.
        rec = JobRecord.model_validate_json(b"%s,\"input\":%s}" % (bytes(doc).rstrip()[:-1], bytes(inp)))
        rec._input_json = bytes(inp)
    rec.version = int(version or 0)
    return rec


def _dumped(rec: JobRecord) -> tuple[str, bytes | None]:
    """``doc`` and ``input`` as a save writes them: split for a record stored split (``input``
    serialized to see whether it changed), whole (``input`` None) for one an older release created."""
    if rec._input_json is None:
        return rec.model_dump_json(), None
    return rec.model_dump_json(exclude={"input"}), to_json(rec.input)
