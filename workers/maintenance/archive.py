"""The archiver: copies every finished job from Redis into the SQL catalogue, at least once.

**Never lost.** The save that makes a job terminal also appends its end-of-job entry, marked
``ar``, in the same Lua script, and keeps the record from expiring
(:mod:`falq.shared.jobs.store`, :mod:`falq.shared.jobs.ended`). Every worker process runs one
archiver (:func:`start_archiver`, a part of the worker's consumer loop,
:mod:`falq.workers.consumers`) reading the stream through the consumer group ``archivers``:

1. ``XREADGROUP`` a batch (first this consumer's own pending entries, then new ones);
2. read the records, upsert their rows in one transaction (by id; a row never replaces a
   newer version of the same job, so duplicates and reordering are harmless);
3. write each job's ``job.json`` beside its images (the row as committed, read back);
4. give each archived record ``FALQ_ARCHIVED_TTL_S`` (only if it was not saved again since);
5. ``XACK`` the entries.

A crash anywhere before 5 leaves the entries pending: this process retries them, or, if it
died, another takes them over with ``XAUTOCLAIM`` once they are idle for
``FALQ_ARCHIVE_CLAIM_IDLE_S``. Everything before the ack is idempotent, so the worst case is a
job upserted twice, never a job missing. While the database (or S3) is down, jobs keep
completing, their records stay in Redis, and the archiver backs off (full jitter up to
:data:`MAX_BACKOFF_S`, every wait bounded by ``FALQ_DATABASE_TIMEOUT_S``) and catches up by
itself. Entries all groups acked are trimmed by the maintenance pass (``XTRIM MINID``);
consumers of dead processes with nothing pending are removed.

Example::

    archiver = start_archiver(ctx.store, ctx.settings, ctx.storage, stop=ctx.shutting_down)
    archiver.tick()     # one pass (tests)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
import sqlalchemy as sa

from falq.shared.catalogue.engine import auto_upgrades, check_schema, database_url
from falq.shared.catalogue.registry import CatalogueRegistry, explain_outside, host_name, identity_of
from falq.shared.catalogue.rows import job_doc, row_from_record
from falq.shared.catalogue.store import Catalogue, get_catalogue
from falq.shared.errors import CatalogueSchemaOutdated, CatalogueUnavailable, StorageError, StorageTransientError
from falq.shared.jobs.ended import DEAD_CONSUMER_MS, Ended, GroupReader, backlog
from falq.shared.jobs.records import TERMINAL, JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.scripts import register
from falq.shared.settings import Settings
from falq.shared.storage.s3 import Storage
from falq.shared.tenants.store import DEFAULT_TENANT, TenantStore, s3_prefix_of
from falq.workers.backoff import backoff_delay
from falq.workers.consumers import Consumers, Part
from falq.workers.loops import forever

__all__ = ["GROUP", "Archiver", "check_catalogue", "start_archiver"]

log = logging.getLogger("falq.archive")
T = TypeVar("T")

GROUP = "archivers"
#: Longest pause after repeated failures (database or S3 down).
MAX_BACKOFF_S = 30.0
#: How long one read waits for new entries.
BLOCK_MS = 1000
#: How often the stream is trimmed and dead consumers removed.
TRIM_EVERY_S = 10.0
#: job.json uploads in flight per batch.
UPLOADS = 16
#: How often an archiver re-registers its catalogue and re-checks that it is the shared history.
CLAIM_EVERY_S = 30.0

def _offload(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in a real OS thread under gevent when it would block the hub (SQLite's C
    calls and busy waits do; psycopg cooperates with gevent by itself)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args)  # type: ignore[no-any-return]
    return fn(*args)


class Archiver:
    """One consumer of the end-of-job stream, group ``archivers``.

    Parameters:
        store: the job store (its Redis holds the stream and the records).
        settings: ``archived_ttl_s``, ``archive_batch``, ``archive_claim_idle_s``, ``job_json``...
        storage: where ``job.json`` goes (None: not written).
        catalogue: the database (default: :func:`get_catalogue` of ``settings``).
        consumer: this consumer's name in the group (default ``host:pid``).
    """

    def __init__(self, store: JobStore, settings: Settings, storage: Storage | None, *,
                 catalogue: Catalogue | None = None, consumer: str | None = None) -> None:
        self.store = store
        self.r: redis.Redis = store.r
        self.settings = settings
        self.storage = storage if settings.job_json else None
        self._catalogue = catalogue
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.key = store.keys.archive
        self.batch = settings.archive_batch
        self.claim_idle_ms = int(settings.archive_claim_idle_s * 1000)
        self.ended = GroupReader(self.r, store.keys, GROUP, self.consumer, legacy=self.key, count=self.batch,
                                 claim_idle_ms=self.claim_idle_ms)
        self._mark = register(self.r, "archive.mark")
        self._schema_ok = False
        self._next_claim = 0.0
        self._next_trim = 0.0
        self.failures = 0
        #: Jobs archived by this consumer (rows upserted), for tests and benchmarks.
        self.archived = 0
        self.skipped = 0
        self.registry = CatalogueRegistry(self.r, prefix=settings.key_prefix, host=host_name(settings))
        self._next_claim_check = 0.0
        #: Whether this archiver's catalogue is the deployment's shared history (None: not checked yet).
        self.shares: bool | None = None

    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            self._catalogue = get_catalogue(self.settings)
        return self._catalogue

    def identity(self) -> str:
        """This archiver's catalogue identity (:mod:`falq.shared.catalogue.registry`)."""
        return identity_of(self.catalogue.engine.url.render_as_string(hide_password=False), self.registry.host)

    def shares_history(self, *, force: bool = False) -> bool:
        """Register this catalogue and claim the shared history (every :data:`CLAIM_EVERY_S`);
        whether this archiver may consume the stream. Says so in the log when it changes."""
        now = time.monotonic()
        if not force and self.shares is not None and now < self._next_claim_check:
            return self.shares
        self._next_claim_check = now + CLAIM_EVERY_S
        mine = self.identity()
        self.registry.register("worker", mine)
        shared = self.registry.claim(mine)
        shares = shared == mine
        if shares != self.shares:
            if shares:
                log.info("archiving into %s, the deployment's shared history", mine)
            else:
                log.warning("archiver off: %s", explain_outside(mine, shared))
        self.shares = shares
        return shares

    # --- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Archive until ``stop`` is set; never raises, backs off on failures."""
        while not stop.is_set():
            try:
                if not self.shares_history():
                    stop.wait(CLAIM_EVERY_S)
                    continue
                self.tick(block_ms=BLOCK_MS)
                self.failures = 0
            except Exception as exc:  # the database, S3 or Redis is down: wait and go on
                self.failures += 1
                delay = backoff_delay(self.failures, base_s=0.5, max_s=MAX_BACKOFF_S)
                log.warning("archiving paused %.1fs: %s", delay, _describe(exc))
                stop.wait(delay)

    def tick(self, *, block_ms: int = 0) -> int:
        """One pass: take over stale entries, archive this consumer's pending ones, else new
        ones. Returns how many entries were handled (acked); 0 without reading when this
        catalogue is not the shared history. Raises on a failure (the entries stay pending)."""
        if not self.shares_history():
            return 0
        now = time.monotonic()
        entries: list[Ended] = []
        if now >= self._next_claim:
            self._next_claim = now + max(0.5, self.claim_idle_ms / 2000)
            entries = self.ended.claim_stale()
            if entries:
                log.info("took over %d pending archive entries", len(entries))
        if now >= self._next_trim:
            self._next_trim = now + TRIM_EVERY_S
            self.trim()
        entries += self.ended.read(block_ms=block_ms or None)
        if not entries:
            return 0
        return self.archive(entries)

    # --- one batch ---------------------------------------------------------------------------------
    def archive(self, entries: list[Ended]) -> int:
        """Archive the jobs of ``entries`` and ack them; returns how many entries were acked."""
        ids = list(dict.fromkeys(e.job_id for e in entries if e.archive and e.job_id))
        recs = self._records(ids)
        now = time.time()
        rows = [row_from_record(rec, archived_at=now) for rec in recs.values() if rec.state in TERMINAL]
        if rows:
            self._ensure_schema()
            upserted = _offload(self._upsert, rows)
            committed = _offload(self._committed, [r["id"] for r in upserted])
            if self.storage is not None:
                self._write_docs(committed)
            self._expire(upserted)
            self.archived += len(upserted)
        self.ended.ack(entries)
        return len(entries)

    def _records(self, ids: list[str]) -> dict[str, JobRecord]:
        """The records still in Redis (an older entry of a job archived and expired since has none)."""
        return {rec.id: rec for rec in self.store.get_many(ids) if rec is not None}

    def _ensure_schema(self) -> None:
        if self._schema_ok:
            return
        url = database_url(self.settings)
        _offload(lambda: check_schema(self.catalogue.engine, auto_upgrade=auto_upgrades(self.settings, url)))
        self._schema_ok = True

    def _upsert(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upsert ``rows``; a row the database refuses (bad data) is skipped alone, logged."""
        try:
            self.catalogue.upsert(rows)
            return rows
        except (sa.exc.DataError, sa.exc.IntegrityError) as exc:  # this data, not the database
            if len(rows) == 1:
                log.error("job %s could not be archived (%s); skipped", rows[0]["id"], type(exc).__name__)
                self.skipped += 1
                return []
        kept: list[dict[str, Any]] = []
        for row in rows:
            kept.extend(self._upsert([row]))
        return kept

    def _committed(self, ids: list[str]) -> list[dict[str, Any]]:
        """The rows as the database now holds them (what ``job.json`` must say)."""
        from falq.shared.catalogue.schema import jobs

        if not ids:
            return []
        with self.catalogue.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(jobs).where(jobs.c.id.in_(ids))).mappings()]

    def _write_docs(self, rows: list[dict[str, Any]]) -> None:
        storage = self.storage
        assert storage is not None
        # The bucket is otherwise made by the first image upload: a deployment whose first
        # finished jobs made no image (failed, moderated) must not stall its archive on NoSuchBucket.
        _offload(storage.ensure_bucket)

        tenants = TenantStore(self.store.r, prefix=self.settings.key_prefix)

        def put(row: dict[str, Any]) -> None:
            outputs = row.get("outputs") or []
            if outputs and outputs[0].get("key"):  # beside the images, wherever they were put
                key = outputs[0]["key"].rsplit("/", 1)[0] + "/job.json"
            else:
                key = storage.job_json_key(row["endpoint"], row["id"], row["created_at"],
                                           s3_prefix_of(tenants, row.get("tenant") or DEFAULT_TENANT))
            body = json.dumps(job_doc(row), sort_keys=True, separators=(",", ":")).encode()
            storage.put_bytes(key, body, content_type="application/json")

        with ThreadPoolExecutor(max_workers=min(UPLOADS, max(1, len(rows)))) as pool:
            for fut in [pool.submit(put, row) for row in rows]:
                fut.result()

    def _expire(self, rows: list[dict[str, Any]]) -> None:
        keys: list[str] = []
        args: list[Any] = [self.settings.archived_ttl_s]
        for row in rows:
            keys += [self.store.job_key(row["id"]), self.store.idem_key(row["idempotency_key"], row["tenant"])]
            args.append(str(row["version"]))
        if keys:
            self._mark(keys=keys, args=args)

    # --- housekeeping --------------------------------------------------------------------------------
    def trim(self) -> int:
        """Delete the entries of an older release's ``{p}:archive`` the group has acked; remove
        dead consumers. Returns entries trimmed. (The end-of-job stream is trimmed by the
        maintenance pass, for all its groups: :func:`falq.shared.jobs.ended.trim`.)"""
        try:
            groups = self.r.xinfo_groups(self.key)
        except redis.ResponseError:
            return 0
        group = next((g for g in groups if _s(g.get("name")) == GROUP), None)
        if group is None:
            return 0
        summary = self.r.xpending(self.key, GROUP)
        if summary.get("pending"):
            minid = _s(summary.get("min"))  # the oldest entry still pending stays, and all after it
        else:  # everything read was acked: keep only what was never read
            last = _s(group.get("last-delivered-id"))
            if not last or last == "0-0":
                return 0
            ms, _, seq = last.partition("-")
            minid = f"{ms}-{int(seq or 0) + 1}"
        trimmed = int(self.r.xtrim(self.key, minid=minid, approximate=False))
        for c in self.r.xinfo_consumers(self.key, GROUP):
            name = _s(c.get("name"))
            if name != self.consumer and not c.get("pending") and int(c.get("idle") or 0) > DEAD_CONSUMER_MS:
                self.r.xgroup_delconsumer(self.key, GROUP, name)
        return trimmed

    def backlog(self) -> int:
        """Entries not yet acked (pending) plus those never read, on the end-of-job stream and
        an older release's ``{p}:archive``: how far archiving is behind."""
        return backlog(self.r, [self.store.keys.ended, self.key], GROUP)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CatalogueUnavailable | CatalogueSchemaOutdated | StorageError | StorageTransientError):
        return str(exc)
    return type(exc).__name__


def check_catalogue(settings: Settings) -> str | None:
    """At worker start: None if archiving can go on, else why the worker must not start (an
    outdated schema: run ``falq db upgrade``). A database that is down only delays archiving."""
    try:
        get_catalogue(settings, check=True)
    except CatalogueSchemaOutdated as exc:
        return str(exc)
    except CatalogueUnavailable as exc:
        log.warning("%s; finished jobs stay in Redis until it is back", exc)
    return None


def start_archiver(store: JobStore, settings: Settings, storage: Storage | None,
                   stop: threading.Event | None = None, *, into: Consumers | None = None) -> Archiver:
    """Run this worker's archiver: as a part of the consumer loop ``into`` (about once a
    second, reads without blocking), else in a loop of its own until ``stop`` is set."""
    archiver = Archiver(store, settings, storage)
    try:  # said at start; the loop re-checks (a reset claim, a database that was down)
        archiver.shares_history(force=True)
    except Exception as exc:
        log.warning("cannot check the shared history yet: %s", _describe(exc))
    if into is not None:
        # tick() reads nothing while this catalogue is not the shared history (re-checked by it).
        into.add(Part("archiving", archiver.tick, every_s=1.0, max_backoff_s=MAX_BACKOFF_S))
    else:
        forever("falq-archiver", archiver.run, stop, logger=log, what="archiver")
    return archiver
