"""Job records in Redis: create (idempotently), read, compare-and-set save, list by state.

Layout (``{p}`` is ``FALQ_KEY_PREFIX``, default ``falq``):

* ``{p}:job:{id}`` -- hash ``{state, version, doc, published[, result]}``; ``doc`` is the
  record JSON, ``result`` fal's output JSON kept from COMPLETED until the images are in S3.
* ``{p}:state:{state}`` -- sorted set of job ids by last update, one per state.
* ``{p}:created`` -- sorted set of all job ids by creation time.
* ``{p}:idem:{key}`` -- idempotency key -> job id.
* ``{p}:cancel:{id}`` -- set when a producer asked to cancel.
* ``{p}:outbox`` -- sorted set of jobs whose callback is still to be delivered; the save that
  makes a job with a ``callback_url`` terminal adds it, in the same script
  (:mod:`falq.shared.outbox`).

Every write is a compare-and-set on ``version`` done in Lua, so a worker and a producer
(cancel, retry) can never overwrite each other's changes: the loser reloads and reapplies.
A worker step's saves are also fenced by its lease token (``save(rec, fence=...)``): one whose
lease expired (cut off from Redis longer than the lease) cannot write over the new holder.
Non-terminal records never expire (that would lose a job); terminal ones expire after
``FALQ_RECORD_TTL_S``. With the catalogue on (``archive=True``, :mod:`falq.shared.catalogue`)
a terminal save instead enqueues the job on ``{p}:archive`` in the same script and keeps the
record until the archiver has committed it to SQL, which then gives it ``FALQ_ARCHIVED_TTL_S``.

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

from falq.shared.errors import JobNotFound
from falq.shared.fairshare_lua import CREATE_READY_LUA, ON_TERMINAL_LUA
from falq.shared.keys import Keys
from falq.shared.records import STATES, TERMINAL, JobRecord
from falq.shared.redisconn import replicas_to_wait_for, wait_for_replicas

# Creates a record unless its idempotency key already names a live job. Returns the id of
# the job that now owns the key (ours or the existing one).
_CREATE = """
local job_key, idem_key = KEYS[1], KEYS[2]
local id, doc, created_at, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if idem_key ~= '' then
  local existing = redis.call('GET', idem_key)
  if existing and redis.call('EXISTS', prefix .. ':job:' .. existing) == 1 then
    return existing
  end
  redis.call('SET', idem_key, id)
end
if redis.call('EXISTS', job_key) == 1 then return id end
-- Chains and batches (falq.shared.chains, falq.shared.batches): ARGV[5] the first state
-- ('waiting' for a job whose parents have not completed), ARGV[6] the batch hash ('' none)
-- whose counts gain the job, ARGV[7] its estimate in micro-dollars.
local first = ARGV[5] or 'queued'
if first == '' then first = 'queued' end
redis.call('HSET', job_key, 'version', '1', 'state', first, 'doc', doc, 'published', '0')
redis.call('ZADD', prefix .. ':state:' .. first, created_at, id)
redis.call('ZADD', prefix .. ':created', created_at, id)
if ARGV[6] and ARGV[6] ~= '' then
  redis.call('HINCRBY', ARGV[6], 'n:' .. first, 1)
  redis.call('HINCRBY', ARGV[6], 'total', 1)
  redis.call('HINCRBY', ARGV[6], 'est_micro', tonumber(ARGV[7]) or 0)
end
-- Fair dispatch (falq.shared.fairshare): ARGV[8] the tenant ('' = publish directly), ARGV[9]
-- the lane: a queued job enters its tenant's ready set with the record, never without it.
local ready_tenant, ready_lane = ARGV[8] or '', ARGV[9] or 'bulk'
if first ~= 'queued' then ready_tenant = '' end
""" + CREATE_READY_LUA + """
return id
"""

# Compare-and-set save. Returns 1 on success, 0 on a version conflict, -1 if the record is gone,
# -2 if the save is fenced by a lease (KEYS[5], token ARGV[10]) the caller no longer holds.
# With ARGV[9] == '1' (the new state is terminal and the job has a callback_url) a save that
# changes the state also puts the job in the callback outbox, due now, in the same step: a
# terminal state is never saved without its callback pending (falq.shared.outbox).
_SAVE = """
local job_key, idem_key, outbox_key, failed_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local expected, new_version, state, doc, ts, id, prefix, ttl, callback =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
local cur = redis.call('HMGET', job_key, 'version', 'state')
if not cur[1] then return -1 end
if cur[1] ~= expected then return 0 end
-- Fencing (KEYS[5], ARGV[10]): a worker step saves only while it still holds the job's lease.
if KEYS[5] and KEYS[5] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[10] then return -2 end
redis.call('HSET', job_key, 'version', new_version, 'state', state, 'doc', doc)
if callback == '1' and cur[2] ~= state then
  redis.call('HSET', job_key, 'cb_version', new_version, 'cb_tries', '0', 'cb_since', ts)
  redis.call('ZADD', outbox_key, ts, id)
  redis.call('ZREM', failed_key, id)
end
if cur[2] ~= state then redis.call('ZREM', prefix .. ':state:' .. cur[2], id) end
redis.call('ZADD', prefix .. ':state:' .. state, ts, id)
-- Catalogue (KEYS[6], falq.workers.archive): a terminal save enqueues the job for archiving in
-- this same step; the caller passes ttl 0, so the record stays (PERSIST) until it is archived.
if KEYS[6] and KEYS[6] ~= '' then redis.call('XADD', KEYS[6], '*', 'id', id, 'v', new_version) end
-- Batches and chains (falq.shared.batches, falq.shared.chains): KEYS[7] the job's batch hash
-- ('' none), whose counts move from the old state to the new one; on a terminal save (ARGV[12]
-- '1') it gains the billed micro-dollars (ARGV[11]), and when the job has children (KEYS[8])
-- the job is pushed on the chain:done stream (KEYS[9]): children are never left waiting.
if cur[2] ~= state and KEYS[7] then
  if KEYS[7] ~= '' then
    redis.call('HINCRBY', KEYS[7], 'n:' .. cur[2], -1)
    redis.call('HINCRBY', KEYS[7], 'n:' .. state, 1)
    if ARGV[12] == '1' then
      redis.call('HINCRBY', KEYS[7], 'billed_micro', tonumber(ARGV[11]) or 0)
      redis.call('HSET', KEYS[7], 'last_end', ts)
    end
  end
  if ARGV[12] == '1' and redis.call('EXISTS', KEYS[8]) == 1 then
    redis.call('XADD', KEYS[9], '*', 'parent', id, 'state', state)
  end
end
-- Fair dispatch (falq.shared.fairshare): a terminal save frees the job's dispatch room.
""" + ON_TERMINAL_LUA + """
if ttl > 0 then
  redis.call('EXPIRE', job_key, ttl)
  if idem_key ~= '' then redis.call('EXPIRE', idem_key, ttl) end
else
  redis.call('PERSIST', job_key)
  if idem_key ~= '' then redis.call('PERSIST', idem_key) end
end
return 1
"""


# Stores fal's output beside the record, only while the record exists (no orphan key).
_SAVE_RESULT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'result', ARGV[1])
return 1
"""


class Conflict(Exception):
    """Someone else saved the record since it was read; reload and reapply."""


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
        #: The catalogue is on (``FALQ_CATALOGUE``): terminal saves go to ``{p}:archive`` and
        #: keep the record until the archiver set its short TTL (falq.workers.archive).
        self.archive = archive
        self._create = client.register_script(_CREATE)
        self._save = client.register_script(_SAVE)
        self._save_result = client.register_script(_SAVE_RESULT)

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
        (:mod:`falq.shared.fairshare`) instead of waiting for a directly published message.
        Returns ``(record, created)``.
        """
        rec.idempotency_key = idempotency_key
        rec.version = 1
        keys = [self.job_key(rec.id), self.idem_key(idempotency_key, rec.tenant)]
        args = [rec.id, rec.model_dump_json(), rec.created_at, self.prefix, *self._create_args(rec),
                *_ready_args(rec, fair)]
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

    def _create_args(self, rec: JobRecord) -> list[str]:
        """ARGV[5..7] of the create: the first state, the batch hash, the estimate (micro-dollars)."""
        return [rec.state, self.keys.batch(rec.batch_id) if rec.batch_id else "",
                str(round(rec.cost_estimate * 1_000_000))]

    def create_many(self, items: list[tuple[JobRecord, str | None]], *, fair: bool = False) -> list[str]:
        """Pipelined :meth:`create` for bulk enqueue; returns the owning job id per item."""
        pipe = self.r.pipeline(transaction=False)
        for rec, key in items:
            rec.idempotency_key = key
            rec.version = 1
            self._create(
                keys=[self.job_key(rec.id), self.idem_key(key, rec.tenant)],
                args=[rec.id, rec.model_dump_json(), rec.created_at, self.prefix, *self._create_args(rec),
                      *_ready_args(rec, fair)],
                client=pipe,
            )
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
        raw = self.r.hmget(self.job_key(job_id), "doc", "version")
        if raw[0] is None:
            raise JobNotFound(f"no job with id {job_id!r} (never enqueued, or its record expired)")
        try:
            rec = JobRecord.model_validate_json(raw[0])
        except ValidationError:
            # A record that no longer parses cannot be run; treat it as gone rather than loop on it.
            raise JobNotFound(f"job {job_id!r} has a corrupt record") from None
        rec.version = int(raw[1] or 0)
        return rec

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.job_key(job_id), "doc", "version")
        out: list[JobRecord | None] = []
        for doc, version in pipe.execute():
            if doc is None:
                out.append(None)
                continue
            rec = JobRecord.model_validate_json(doc)
            rec.version = int(version or 0)
            out.append(rec)
        return out

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(self.job_key(job_id)))

    # --- write ---------------------------------------------------------------------------------
    def save(self, rec: JobRecord, *, fence: tuple[str, str] | None = None) -> None:
        """Compare-and-set: write ``rec`` if nobody saved since it was read.

        Raises :class:`Conflict` on a concurrent change and :class:`JobNotFound` if the
        record was deleted meanwhile. The save that makes a job with a ``callback_url``
        terminal also enters it in the callback outbox (``{p}:outbox``), atomically.
        ``fence`` (``(lease key, token)``, what worker steps pass) makes the save conditional,
        in the same script, on still holding that lease: a stale holder back from a network
        partition gets :class:`LeaseLost` and writes nothing.
        """
        expected = rec.version
        rec.version = expected + 1
        rec.updated_at = time.time()
        archive = self.archive and rec.state in TERMINAL
        ttl = self.ttl_s if rec.state in TERMINAL and not archive else 0
        callback = "1" if rec.state in TERMINAL and (rec.callback_url or rec.fal_webhook) else "0"
        res = self._save(
            keys=[self.job_key(rec.id), self.idem_key(rec.idempotency_key, rec.tenant), self.keys.outbox,
                  self.keys.outbox_failed, fence[0] if fence else "", self.keys.archive if archive else "",
                  *self._chain_keys(rec)],
            args=[expected, rec.version, rec.state, rec.model_dump_json(), rec.updated_at, rec.id, self.prefix, ttl,
                  callback, fence[1] if fence else "", *self._chain_args(rec)],
        )
        if res == 1:
            return
        rec.version = expected
        if res == -2:
            raise LeaseLost(rec.id)
        if res == -1:
            raise JobNotFound(f"job {rec.id} was deleted while it ran")
        raise Conflict(rec.id)

    def _chain_keys(self, rec: JobRecord) -> list[str]:
        """KEYS[7..9] of the save: the batch hash, the children set, the chain:done stream."""
        return [self.keys.batch(rec.batch_id) if rec.batch_id else "", self.keys.children(rec.id),
                self.keys.chain_done]

    @staticmethod
    def _chain_args(rec: JobRecord) -> list[str]:
        """ARGV[11..12] of the save: billed micro-dollars, and whether the new state is terminal."""
        billed = round((rec.cost_billed or 0.0) * 1_000_000)
        return [str(billed), "1" if rec.state in TERMINAL else "0"]

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
        outage never needs it from fal again. Raises :class:`JobNotFound` if the record is gone."""
        if not self._save_result(keys=[self.job_key(job_id)], args=[raw]):
            raise JobNotFound(f"job {job_id} was deleted while it ran")

    def load_result(self, job_id: str) -> bytes | None:
        raw = self.r.hget(self.job_key(job_id), "result")
        return bytes(raw) if raw is not None else None

    def drop_result(self, job_id: str) -> None:
        """Forget the kept output once every image is in S3 (``sync_mode`` ones weigh MBs)."""
        self.r.hdel(self.job_key(job_id), "result")

    def request_cancel(self, job_id: str) -> None:
        self.r.set(self.cancel_key(job_id), b"1", ex=max(self.ttl_s, 3600))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self.cancel_key(job_id)))

    # --- list ----------------------------------------------------------------------------------
    def ids_in_state(self, state: str, *, limit: int = 100, since: float | None = None) -> list[str]:
        key = self.keys.state(state)
        lo = since if since is not None else "-inf"
        raw = self.r.zrevrangebyscore(key, "+inf", lo, start=0, num=limit)
        return [x.decode() for x in raw]

    def find(self, state: str | None = None, *, limit: int = 100, since: float | None = None) -> list[JobRecord]:
        """Records in ``state`` (or all), newest first. Expired ids are pruned on the way."""
        if state is None:
            lo = since if since is not None else "-inf"
            ids = [x.decode() for x in self.r.zrevrangebyscore(self.keys.created, "+inf", lo, 0, limit)]
        else:
            ids = self.ids_in_state(state, limit=limit, since=since)
        recs = self.get_many(ids)
        gone = [i for i, r in zip(ids, recs, strict=True) if r is None]
        if gone:
            self._prune(gone, state)
        return [r for r in recs if r is not None]

    def counts(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for s in STATES:
            pipe.zcard(self.keys.state(s))
        return dict(zip(STATES, pipe.execute(), strict=True))

    def _prune(self, ids: list[str], state: str | None) -> None:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.zrem(self.keys.created, i)
            for s in [state] if state else STATES:
                pipe.zrem(self.keys.state(s), i)
        pipe.execute()

    # --- undo an enqueue whose broker message was never sent ------------------------------------
    def forget_unpublished(self, job_id: str, idempotency_key: str | None = None, tenant: str = "default") -> bool:
        """Delete a record created by a producer whose broker message could not be sent
        (Redis out of memory): the record, its entries in ``{p}:created`` / ``{p}:state:*``
        and its idempotency key (if it still names this job). Only while ``published`` is
        still 0, so a job that has a message is never touched. Only deletes, so it works
        when Redis refuses writes at ``maxmemory``. Returns True if something was removed."""
        script = self.r.register_script(_FORGET_UNPUBLISHED)
        return bool(script(keys=[self.job_key(job_id), self.idem_key(idempotency_key, tenant)],
                           args=[job_id, self.prefix]))


def _ready_args(rec: JobRecord, fair: bool) -> list[str]:
    """ARGV[8..9] of the create: the tenant whose ready set the job enters ('' = none), the lane."""
    return [rec.tenant if fair else "", rec.lane]


# Deletes a never-published record and what points at it. Returns 1 if it did, 0 if the
# record is gone or has a broker message (published != 0).
_FORGET_UNPUBLISHED = """
local job_key, idem_key, id, prefix = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local cur = redis.call('HMGET', job_key, 'published', 'state')
if cur[1] and cur[1] ~= '0' then return 0 end
if idem_key ~= '' and redis.call('GET', idem_key) == id then redis.call('DEL', idem_key) end
if not cur[1] then return 0 end
redis.call('DEL', job_key, prefix .. ':cancel:' .. id)
redis.call('ZREM', prefix .. ':state:' .. (cur[2] or 'queued'), id)
redis.call('ZREM', prefix .. ':created', id)
return 1
"""
