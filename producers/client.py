"""The Python API producers use: validate, enqueue, and find out what happened.

Example::

    from falq.producers import Falq

    falq = Falq()                                   # configured from FALQ_* / FAL_KEY
    job = falq.generate("a red fox in the snow", image_size="landscape_16_9", seed=7)
    rec = job.wait(timeout=300)                     # the final JobRecord
    for image in job.result():
        print(image["key"], image["presigned_url"])

Every input is validated with the shared schemas *before* anything touches Redis, so a
rejected call leaves Redis and the queues exactly as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery

from falq.shared.batches.chains import Chains, Ref, parents_of, refs_in, restore_refs, split_refs
from falq.shared.catalogue.search import record_matches
from falq.shared.egress import OutboundRefused, check_url
from falq.shared.engine.publish import publish
from falq.shared.errors import (
    CatalogueUnavailable,
    FieldError,
    InvalidInput,
    JobNotFound,
    JobTimeout,
    RedisMemoryFull,
    is_redis_oom,
)
from falq.shared.fairshare.scheduler import FairShare
from falq.shared.fal.endpoints import EDIT, ENDPOINTS, TEXT_TO_IMAGE, get_endpoint, validate_input
from falq.shared.jobs.records import STATES, TERMINAL, JobRecord, Lane
from falq.shared.jobs.store import JobStore
from falq.shared.redisconn import redis_client as make_redis
from falq.shared.settings import Settings, get_settings
from falq.shared.spend.pricing import Pricing
from falq.shared.tenants.store import NAME_RULE, Tenant, TenantStore, folder_of, valid_name

if TYPE_CHECKING:
    from falq.shared.catalogue.store import Catalogue

log = logging.getLogger("falq.producers")


@dataclass(frozen=True)
class JobRequest:
    """One validated job, ready to enqueue (used by bulk pipelines)."""

    endpoint: str
    input: dict[str, Any]
    lane: Lane = "interactive"
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    #: The owning tenant (:mod:`falq.shared.tenants.store`); None: the client's own (``Falq(tenant=)``).
    tenant: str | None = None
    #: The batch the job belongs to (:mod:`falq.shared.batches.store`), if any.
    batch_id: str | None = None
    #: ``X-Fal-Queue-Priority`` chosen for the job (e.g. ``falq bulk --priority low``); None: its
    #: tenant's choice, else the lane's setting.
    priority: str | None = None


#: How long a producer trusts what it read about a tenant (a bulk file validates 50,000 items
#: against one tenant; a change of the tenant reaches running producers within this time).
TENANT_CACHE_S = 1.0


class Falq:
    """A producer's handle on falq.

    Parameters:
        settings: falq settings; by default read from the environment.
        redis_client: a Redis client to reuse (by default one is built from settings).
        celery_app: a Celery app to publish with (by default one is built from settings).
        tenant: the tenant jobs are enqueued for (default ``FALQ_TENANT``, else ``default``);
            checked at enqueue: it must exist and allow the job's endpoint.

    Producers hold Redis credentials, so they are inside falq's trust boundary: ``tenant``
    attributes their work, it does not confine them (gateway API keys do, for everyone else).
    """

    def __init__(self, settings: Settings | None = None, *, redis_client: Any = None,
                 celery_app: Celery | None = None, tenant: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.redis = redis_client or make_redis(self.settings.redis_url, settings=self.settings)
        self.store = JobStore(self.redis, prefix=self.settings.key_prefix, ttl_s=self.settings.record_ttl_s,
                              archive=self.settings.catalogue)
        #: Fair dispatch between tenants (falq.shared.fairshare.scheduler): jobs wait in ready sets.
        self.fair = FairShare(self.redis, self.settings)
        self._app = celery_app
        self.tenant = tenant or self.settings.tenant
        self._tenants: dict[str, tuple[float, Tenant | None]] = {}
        self._pricing: Pricing | None = None

    @property
    def pricing(self) -> Pricing:
        """The account's unit prices (:mod:`falq.shared.spend.pricing`)."""
        if self._pricing is None:
            self._pricing = Pricing(self.redis, self.settings)
        return self._pricing

    @property
    def app(self) -> Celery:
        if self._app is None:
            from falq.shared.engine.celery_app import make_app

            self._app = make_app(self.settings)
        return self._app

    # --- enqueue ---------------------------------------------------------------------------------
    def generate(self, prompt: str, *, pro: bool = False, lane: Lane = "interactive",
                 idempotency_key: str | None = None, metadata: dict[str, Any] | None = None,
                 callback_url: str | None = None, **fields: Any) -> JobHandle:
        """Enqueue a text-to-image job. ``fields`` are the schema's fields (seed, image_size...)."""
        endpoint = TEXT_TO_IMAGE["pro" if pro else "standard"]
        return self.submit(endpoint, {"prompt": prompt, **fields}, lane=lane, idempotency_key=idempotency_key,
                           metadata=metadata, callback_url=callback_url)

    def edit(self, prompt: str, images: Iterable[Any], *, pro: bool = False, lane: Lane = "interactive",
             idempotency_key: str | None = None, metadata: dict[str, Any] | None = None,
             callback_url: str | None = None, flatten_alpha: bool = False, **fields: Any) -> JobHandle:
        """Enqueue an edit job. ``images`` are URLs, data URIs, local paths or bytes."""
        from falq.producers.inputs import prepare_images

        endpoint = EDIT["pro" if pro else "standard"]
        urls = prepare_images(list(images), self.settings, flatten_alpha=flatten_alpha)
        return self.submit(endpoint, {"prompt": prompt, "image_urls": urls, **fields}, lane=lane,
                           idempotency_key=idempotency_key, metadata=metadata, callback_url=callback_url)

    def validate(self, endpoint: str, data: Any, *, lane: str = "interactive",
                 callback_url: str | None = None, tenant: str | None = None) -> JobRequest:
        """Validate without enqueueing; raises :class:`InvalidInput` listing every problem
        (``tenant``: unknown tenant; ``endpoint``: one the tenant may not use)."""
        errors: list[FieldError] = []
        model = None
        refs: dict[int, Ref] = {}
        owner = tenant or self.tenant
        try:
            spec = get_endpoint(endpoint)
            # References to other jobs' outputs (falq:JOB_ID#N, falq.shared.batches.chains) are checked
            # for their form here and against the parents at enqueue; the rest as usual.
            data, refs, ref_errors = split_refs(data)
            errors.extend(ref_errors)
            model = validate_input(spec.id, data, max_num_images=self.settings.max_num_images)
        except InvalidInput as exc:
            errors.extend(exc.errors)
        if lane not in ("interactive", "bulk"):
            errors.append(FieldError("lane", f"must be 'interactive' or 'bulk', not {lane!r}"))
        if callback_url is not None:
            errors.extend(_callback_url_errors(callback_url, allow_private=self.settings.callback_allow_private))
        if not errors:  # the tenant check needs Redis: a request refused on its own terms never waits on it
            errors.extend(self._tenant_errors(owner, endpoint))
        if errors or model is None:
            raise InvalidInput(errors)
        payload = restore_refs(model.model_dump(mode="json", exclude_none=True), refs)
        return JobRequest(spec.id, payload, lane, callback_url=callback_url, tenant=owner)  # type: ignore[arg-type]

    def _tenant(self, name: str) -> Tenant | None:
        """The tenant as read at most ``TENANT_CACHE_S`` ago."""
        now = time.monotonic()
        hit = self._tenants.get(name)
        if hit is None or hit[0] < now:
            hit = (now + TENANT_CACHE_S, TenantStore(self.redis, prefix=self.settings.key_prefix).get(name))
            self._tenants[name] = hit
        return hit[1]

    def _tenant_errors(self, name: str, endpoint: str) -> list[FieldError]:
        """Why ``name`` may not enqueue a job of ``endpoint`` (empty: it may)."""
        if not valid_name(name):
            return [FieldError("tenant", NAME_RULE)]
        found = self._tenant(name)
        if found is None:
            return [FieldError("tenant", f"no tenant named {name!r} (see falq tenants list)")]
        if endpoint in ENDPOINTS and not found.allows(endpoint):
            return [FieldError("endpoint", f"tenant {name!r} may not use {endpoint}; it may use: "
                                           f"{', '.join(found.endpoints)}")]
        return []

    def submit(self, endpoint: str, data: dict[str, Any], *, lane: Lane = "interactive",
               idempotency_key: str | None = None, metadata: dict[str, Any] | None = None,
               callback_url: str | None = None, tenant: str | None = None,
               fal_webhook: str | None = None, fal_headers: dict[str, str] | None = None,
               priority: str | None = None) -> JobHandle:
        """Validate and enqueue one job; with a known ``idempotency_key`` (of the same tenant),
        return that job. ``tenant`` overrides the client's tenant for this job. ``fal_webhook``
        (the gateway's, checked there) gets fal's webhook shape when the job ends, through the
        same outbox as ``callback_url``; it is part of the record from its creation on.
        ``fal_headers`` (the gateway's, checked there) go with the job's submit to fal."""
        req = self.validate(endpoint, data, lane=lane, callback_url=callback_url, tenant=tenant)
        if priority is not None:
            if priority not in ("normal", "low"):
                raise InvalidInput([FieldError("priority", "must be normal or low")])
            req = replace(req, priority=priority)
        if idempotency_key is not None:
            _check_key(idempotency_key)
        rec = self._record(req, metadata)
        rec.fal_webhook = fal_webhook
        rec.fal_headers = dict(fal_headers or {})
        if rec.parents:  # missing parents, another tenant's, too deep: refused, nothing enqueued
            self.check_parents([rec])
        try:
            rec, created = self.store.create(rec, idempotency_key, fair=self.fair.enabled)
        except redis.RedisError as exc:
            if is_redis_oom(exc):
                raise RedisMemoryFull() from exc
            raise
        if rec.state == "waiting":  # no message until its parents completed (falq.shared.batches.chains)
            self.chains.link(rec.id, rec.parents)
        elif self.fair.enabled:
            # The record entered its tenant's ready set with it; one that existed without a
            # message (its producer died first) is made ready now. Then dispatch what fits.
            if not created and not self.store.is_published(rec.id):
                self.fair.make_ready(rec, dispatch=False)
            self.fair.try_dispatch(self.app)
        elif created or not self.store.is_published(rec.id):
            try:
                publish(self.app, self.settings, rec.id, lane=rec.lane, endpoint=rec.endpoint, tenant=rec.tenant)
            except Exception as exc:
                if not is_redis_oom(exc):
                    raise
                if created:  # no record without a message
                    self._forget([(rec.id, idempotency_key, rec.tenant)])
                raise RedisMemoryFull() from exc
            self._mark_published([rec.id])
        return JobHandle(self, rec.id)

    def submit_many(self, requests: list[JobRequest]) -> list[tuple[str, bool]]:
        """Enqueue validated requests with pipelined Redis writes.

        Returns ``(job_id, created)`` per request; a request whose idempotency key names an
        existing job is not enqueued again (its message is re-sent only if it never was).
        """
        recs = [self._record(r, r.metadata) for r in requests]
        if any(rec.parents for rec in recs):
            self.check_parents(recs)
        items = [(rec, req.idempotency_key) for rec, req in zip(recs, requests, strict=True)]
        try:
            owners = self.store.create_many(items, fair=self.fair.enabled)
        except redis.RedisError as exc:
            if not is_redis_oom(exc):
                raise
            # Some creates of the pipeline may have gone through: none has a message yet.
            self._forget([(rec.id, key, rec.tenant) for rec, key in items])
            raise RedisMemoryFull(total=len(items)) from exc
        created = [o == rec.id for o, rec in zip(owners, recs, strict=True)]
        # A record created now has no message yet; only jobs that existed may have one.
        older = sorted({o for o, c in zip(owners, created, strict=True) if not c})
        sent_before = dict(zip(older, self.store.published_flags(older), strict=True)) if older else {}
        flags = [not c and sent_before[o] for o, c in zip(owners, created, strict=True)]
        to_publish = [(owner, rec) for owner, rec, done in zip(owners, recs, flags, strict=True) if not done]
        if to_publish:
            # A job that already existed keeps its own lane and endpoint.
            existing_ids = sorted({owner for owner, rec in to_publish if owner != rec.id})
            existing = {
                job_id: found
                for job_id, found in zip(existing_ids, self.store.get_many(existing_ids), strict=True)
                if found is not None
            }
            # A waiting job (falq.shared.batches.chains) gets no message: it is linked to its parents.
            for owner, rec in to_publish:
                src = existing.get(owner, rec)
                if src.state == "waiting":
                    self.chains.link(owner, src.parents)
            to_publish = [(o, rec) for o, rec in to_publish if existing.get(o, rec).state != "waiting"]
            if self.fair.enabled:
                # New jobs entered their ready sets with their records (falq.shared.fairshare.scheduler); an
                # existing one that never got a message (its producer died first) is made ready.
                for owner, _rec in to_publish:
                    if owner in existing:
                        self.fair.make_ready(existing[owner], dispatch=False)
                to_publish = []
            sent: set[str] = set()
            try:
                with self.app.producer_or_acquire() as producer:
                    for owner, rec in to_publish:
                        src = existing.get(owner, rec)
                        publish(self.app, self.settings, owner, lane=src.lane, endpoint=src.endpoint,
                                producer=producer, tenant=src.tenant)
                        sent.add(owner)
            except Exception as exc:
                if not is_redis_oom(exc):
                    raise
                # Redis filled up mid-batch: the jobs sent so far stay enqueued; the ones this
                # call created and could not send are removed again (no record without a message).
                self._mark_published(sorted(sent))
                self._forget([(rec.id, key, rec.tenant) for (rec, key), own in zip(items, owners, strict=True)
                              if own == rec.id and own not in sent])
                done = [(o, c) for o, c, was in zip(owners, created, flags, strict=True) if was or o in sent]
                raise RedisMemoryFull(enqueued=done, total=len(items)) from exc
            self._mark_published([owner for owner, _ in to_publish])
        if self.fair.enabled:
            self.fair.try_dispatch(self.app)
        return list(zip(owners, created, strict=True))

    def _forget(self, jobs: list[tuple[str, str | None, str]]) -> None:
        """Undo records whose message was never sent (see :meth:`JobStore.forget_unpublished`);
        each entry is ``(job id, idempotency key, tenant)``."""
        for job_id, key, tenant in jobs:
            try:
                self.store.forget_unpublished(job_id, key, tenant)
            except redis.RedisError as exc:
                log.error("could not remove unpublished job %s (%s); it stays queued without a message",
                          job_id, type(exc).__name__)

    def _mark_published(self, job_ids: list[str]) -> None:
        """Mark sent jobs published. Their messages exist, so a full Redis refusing this flag
        (an HSET) does not undo them: the flag only spares a re-send on an idempotent retry."""
        try:
            self.store.mark_published(job_ids)
        except redis.RedisError as exc:
            if not is_redis_oom(exc):
                raise
            log.warning("Redis memory is full: %d enqueued job(s) could not be marked published", len(job_ids))

    def _record(self, req: JobRequest, metadata: dict[str, Any] | None) -> JobRecord:
        n = int(req.input.get("num_images", 1))
        quote = self.pricing.quote(req.endpoint)
        tenant = req.tenant or self.tenant
        owner = self._tenant(tenant) if valid_name(tenant) else None
        priority = req.priority or (owner.priority if owner is not None else None)
        rec = JobRecord.new(
            endpoint=req.endpoint, input=req.input, lane=req.lane, metadata=dict(metadata or {}),
            callback_url=req.callback_url, cost_estimate=quote.cost(n), unit_price=quote.unit_price,
            price_source=quote.source, tenant=tenant, batch_id=req.batch_id, priority=priority,
            folder=folder_of(owner, tenant),
        )
        parents = parents_of(req.input)
        if parents:  # a chained job waits for its parents (falq.shared.batches.chains)
            rec.parents = parents
            rec.state = "waiting"
            rec.timestamps = {"waiting": rec.created_at}
        return rec

    @property
    def chains(self) -> Chains:
        """Links chained jobs to their parents (the workers release them)."""
        return Chains(self.store, self.settings)

    def check_parents(self, recs: list[JobRecord]) -> None:
        """Refuse references to missing jobs, another tenant's jobs, too deep a chain or too
        many children (:meth:`Chains.check`); raises :class:`InvalidInput` naming each field
        (``image_urls[N]``, prefixed ``[i].`` for several records)."""
        items = [(rec.id, refs_in(rec.input), 0) for rec in recs]
        found = self.chains.check(items, lambda n: recs[n].tenant)
        if found:
            many = len(recs) > 1
            raise InvalidInput([FieldError(f"[{n}].{e.field}" if many else e.field, e.message)
                                for n, errs in sorted(found.items()) for e in errs])

    # --- look up ---------------------------------------------------------------------------------
    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job (live, or archived in the catalogue); raises :class:`JobNotFound`."""
        self.lookup(job_id)
        return JobHandle(self, job_id)

    @property
    def catalogue(self) -> Catalogue | None:
        """The SQL catalogue of finished jobs (None when ``FALQ_CATALOGUE`` is off)."""
        if not self.settings.catalogue:
            return None
        from falq.shared.catalogue.store import get_catalogue

        return get_catalogue(self.settings)

    def lookup(self, job_id: str, *, tenant: str | None = None) -> JobRecord:
        """The job's record: the live one from Redis, else the archived one from the catalogue
        (a job whose Redis copy expired). With ``tenant``, another tenant's job is not found,
        exactly like an unknown id (both ask the catalogue). Raises :class:`JobNotFound`, or
        :class:`~falq.shared.errors.CatalogueUnavailable` when Redis does not have it and the
        catalogue cannot be asked.

        Example::

            falq.lookup("8f3e...").state      # 'completed', a month later too
        """
        try:
            rec: JobRecord | None = self.store.get(job_id)
        except JobNotFound:
            rec = None
        if rec is not None and (tenant is None or rec.tenant == tenant):
            return rec
        cat = self.catalogue
        archived = cat.get(job_id, tenant=tenant) if cat is not None else None
        if archived is None:
            raise JobNotFound(f"no job with id {job_id!r} (never enqueued, or its record expired)")
        return archived

    def jobs(self, state: str | None = None, *, limit: int = 100, since: float | None = None,
             tenant: str | None = None, endpoint: str | None = None, batch_id: str | None = None,
             text: str | None = None, metadata: dict[str, str] | None = None) -> list[JobRecord]:
        """Records by state (or all), newest first: live ones from Redis, finished ones from the
        catalogue too (history Redis no longer has), each job once. ``text``: every word in the
        prompt; ``metadata``: ``{key: value}`` that must all match."""
        if state is not None and state not in STATES:
            raise InvalidInput([FieldError("state", f"must be one of {', '.join(STATES)}")])
        filters = {"tenant": tenant, "endpoint": endpoint, "batch_id": batch_id, "text": text,
                   "metadata": dict(metadata or {})}
        filtered = any(v for v in filters.values())
        # With a tenant, its own index: other tenants' jobs never crowd its newest out.
        live = self.store.find(state, limit=limit if not filtered else max(limit, 1000), since=since,
                               tenant=tenant or None)
        live = [r for r in live if record_matches(r, **filters)]  # type: ignore[arg-type]
        cat = self.catalogue
        if cat is None or (state is not None and state not in TERMINAL):
            return live[:limit]
        from falq.shared.catalogue.search import merge_newest
        from falq.shared.catalogue.store import CatalogueQuery

        q = CatalogueQuery(state=state, since=since, limit=limit, **filters)  # type: ignore[arg-type]
        try:
            archived = cat.search(q)
        except CatalogueUnavailable as exc:  # the live part still answers; say what is missing
            log.warning("listing without the catalogue's history: %s", exc)
            archived = []
        return merge_newest(live, archived, limit)

    def cancel(self, job_id: str) -> JobRecord:
        """Ask for a job to be cancelled; returns the record as it stands.

        A job no worker has picked up is cancelled at once (it will never be submitted);
        one at fal is cancelled there by its worker, which then ends it ``cancelled``.
        """
        self.store.get(job_id)
        self.store.request_cancel(job_id)
        lease_holder = self.redis.get(self.store.keys.lease(job_id))

        def change(r: JobRecord) -> bool:
            if r.terminal:
                return False
            r.cancel_requested = True
            if r.state == "waiting" or (r.state == "queued" and lease_holder is None):
                r.move("cancelled")
            return True

        return self.store.update(job_id, change)

    # --- dead letters ----------------------------------------------------------------------------
    def retry(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """Run failed jobs again, as new attempts of the same jobs; returns their records.

        A failed job goes back to ``queued`` with its request fields cleared; its ``errors``
        and ``submissions`` keep the whole history, and ``retry_from`` restarts the attempt
        limit. Jobs not in ``failed`` are returned unchanged. Raises :class:`JobNotFound`
        for an unknown id (before anything is changed).

        A job that holds an output fal made and billed is never submitted again: a cancelled
        job fal finished anyway completes from its mirrored images, and a failed (or cancelled)
        job whose result is kept beside its record goes back to mirroring it.
        """
        ids = list(dict.fromkeys(job_ids))
        for job_id in ids:
            self.store.get(job_id)

        applied = {"last": False}  # set by the last (successful) run of `again`
        kept = {"last": ""}  # how the last run of `again` reused an output fal made (and billed)

        def again(r: JobRecord) -> bool:
            applied["last"], kept["last"] = False, ""
            paid = self._kept_output(r)
            if paid:
                # fal made (and billed) this job's output: use it, never submit again.
                kept["last"] = paid
                if paid == "mirrored":
                    r.move("completed")
                else:
                    r.paused, r.cancel_requested = None, False
                    r.move("mirroring")
                return True
            applied["last"] = r.state == "failed"
            if r.state != "failed":
                return False
            r.start_over("queued")
            return True

        out = []
        for job_id in ids:
            if self._kept_output(self.store.get(job_id)):
                rec = self.store.update(job_id, again)
                if kept["last"] == "saved":
                    self.store.clear_cancel(job_id)
                    publish(self.app, self.settings, rec.id, lane=rec.lane, endpoint=rec.endpoint, tenant=rec.tenant)
                out.append(rec)
                continue
            # A chained job waits for its parents again, its references restored (falq.shared.batches.chains).
            if self.chains.reopen(job_id, states=("failed",)):
                out.append(self.store.get(job_id))
                continue
            rec = self.store.update(job_id, again)
            if applied["last"]:
                self.store.clear_cancel(job_id)
                self.fair.make_ready(rec, self.app)  # its ready set, or published at once without fair dispatch
                self.chains.reopen_children(rec.id)  # the children it failed wait for it again
            out.append(rec)
        return out

    def _kept_output(self, r: JobRecord) -> str:
        """How a failed or cancelled job still holds an output fal made and billed: ``mirrored``
        (a cancelled job fal finished anyway: its images are in the bucket), ``saved`` (fal's
        result JSON is kept beside the record, not yet mirrored), or '' (none: a retry submits)."""
        if r.state == "cancelled" and r.fal_outcome == "finished" and r.outputs:
            return "mirrored"
        if r.state in ("failed", "cancelled") and r.result_saved_at is not None and r.response_url \
                and self.store.load_result(r.id) is not None:
            return "saved"
        return ""

    def retry_failed(self, since: float | None = None, *, limit: int = 100_000) -> list[JobRecord]:
        """:meth:`retry` every failed job (that failed after ``since``, epoch seconds)."""
        return self.retry(self.store.ids_in_state("failed", limit=limit, since=since))


class JobHandle:
    """A job seen from the producer side.

    Example::

        job = falq.generate("a lighthouse at dusk")
        job.status()          # 'queued', 'in_progress', ...
        job.wait(timeout=120) # JobRecord once terminal
    """

    def __init__(self, client: Falq, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def record(self) -> JobRecord:
        """The record, live from Redis or archived in the catalogue (:meth:`Falq.lookup`)."""
        return self.client.lookup(self.id)

    def status(self) -> str:
        return self.record().state

    def wait(self, timeout: float | None = None, *, poll_s: float = 0.2) -> JobRecord:
        """Block until the job is terminal; raise :class:`JobTimeout` after ``timeout`` s."""
        end = None if timeout is None else time.monotonic() + timeout
        delay = poll_s
        while True:
            rec = self.record()
            if rec.state in TERMINAL:
                return rec
            if end is not None and time.monotonic() >= end:
                raise JobTimeout(f"job {self.id} still {rec.state} after {timeout}s")
            time.sleep(delay)
            delay = min(2.0, delay * 1.3)

    def result(self, *, expires_s: int | None = None) -> list[dict[str, Any]]:
        """The outputs with their S3 locations and presigned GET URLs.

        A job has a result once it completed, or when it was cancelled but fal finished its
        request anyway (billed, its images mirrored and kept: ``JobRecord.kept_after_cancel``).
        Each image says which: ``job_state`` (``completed`` or ``cancelled``) and ``fal_outcome``
        (``finished`` for the kept output of a cancel). Any other job raises :class:`JobNotFound`.

        Example::

            images = job.result()
            if images and images[0]["job_state"] == "cancelled":
                ...  # fal made (and billed) them after the cancel
        """
        from falq.shared.storage.s3 import Storage

        rec = self.record()
        if not rec.has_result:
            raise JobNotFound(f"job {self.id} has no result: it is {rec.state}")
        storage = Storage(self.client.settings)
        return [{**img.model_dump(), "presigned_url": storage.presign(img.key, expires_s),
                 "job_state": rec.state, "fal_outcome": rec.fal_outcome}
                for img in sorted(rec.outputs, key=lambda i: i.index)]

    def cancel(self) -> JobRecord:
        return self.client.cancel(self.id)


def _callback_url_errors(url: object, *, allow_private: bool) -> list[FieldError]:
    """The cheap enqueue-time check of a ``callback_url`` (no DNS: names are checked, resolved,
    when the worker delivers; see :mod:`falq.shared.egress`)."""
    try:
        check_url(url, allow_private=allow_private, what="callback_url")
    except OutboundRefused as exc:
        if exc.reason == "credentials":
            return [FieldError("callback_url", "must not carry credentials")]
        if exc.reason == "address":
            return [FieldError("callback_url", "must not target a private or loopback address"
                                               " (FALQ_CALLBACK_ALLOW_PRIVATE)")]
        return [FieldError("callback_url", "must be an http(s) URL")]
    return []


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= 200 or any(c.isspace() for c in key):
        raise InvalidInput([FieldError("idempotency_key", "must be 1-200 characters without whitespace")])
