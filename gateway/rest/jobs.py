"""falq's own REST routes: what fal's protocol has no words for.

* ``GET  /v1/jobs?state=&since=&until=&endpoint=&metadata.KEY=VALUE&limit=`` -- list and search
* ``POST /v1/jobs`` -- one job (``{endpoint, input, lane?, idempotency_key?, metadata?, callback_url?, fal_webhook?}``)
* ``GET  /v1/jobs/{id}`` -- the record (plus ``result`` with presigned URLs once completed, or
  once fal finished a cancelled job anyway: ``state`` stays ``cancelled``, ``fal_outcome`` is
  ``finished``)
* ``POST /v1/jobs/{id}/cancel`` and ``POST /v1/jobs/{id}/retry`` (409 with ``reason`` when the job is
  not failed); both also for a job only the catalogue holds (cancel: 200, it has ended; retry: it
  runs again from its row)
* ``POST /v1/bulk`` -- a list of ``{endpoint, input, id?, metadata?, lane?}``: all validated first;
  one bad item -> 422 naming every bad item by index and nothing enqueued; else enqueued in
  one pipelined batch, each ``id`` becoming the item's idempotency key (a resend is a no-op)
* ``POST /v1/retry-failed?since=`` -- every failed job (since a time) again
* ``GET /healthz`` (liveness, no auth) and ``GET /readyz`` (Redis ping, S3 bucket reachable)

Limits, budget and tenants are in :mod:`falq.gateway.rest.limits`; they, cancel and retry
are thin layers over :class:`falq.producers.admin.Admin`, the service the ``falq`` CLI uses too.

Every route first checks the key's scope (:func:`falq.gateway.auth.require`: 403), then works
only on the key's tenant: jobs are created for it, listings hold only its jobs, and a job id
of another tenant answers 404 exactly as an unknown id (:func:`falq.gateway.core.visible_job`).

Example::

    curl -H "Authorization: Key $K" "http://gw/v1/jobs?state=failed&metadata.batch=b7&limit=20"
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from falq.gateway.auth import Principal, require
from falq.gateway.core import (
    Gateway,
    Unprocessable,
    blocking,
    json_response,
    pydantic_detail,
    read_json,
    visible_job,
)
from falq.gateway.fal.views import FAL_STATUS, failure, result_body, validation_detail
from falq.gateway.fal.webhook_sender import check_webhook_url
from falq.gateway.rest.limits import admin
from falq.gateway.rest.search import parse_query, search
from falq.producers.client import JobRequest
from falq.shared.errors import InvalidInput
from falq.shared.jobs.records import JobRecord
from falq.shared.since import validate_since

MAX_BULK = 10_000


class JobIn(BaseModel):
    """Body of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    input: dict[str, Any]
    lane: Literal["interactive", "bulk"] = "interactive"
    idempotency_key: str | None = Field(None, min_length=1, max_length=200, pattern=r"^\S+$")
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    fal_webhook: str | None = None


class BulkItem(BaseModel):
    """One item of ``POST /v1/bulk``."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    input: dict[str, Any]
    id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^\S+$")
    metadata: dict[str, Any] | None = None
    lane: Literal["interactive", "bulk"] = "bulk"
    callback_url: str | None = None


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _job_view(gw: Gateway, rec: JobRecord) -> dict[str, Any]:
    """The public record, plus fal's status word and (once it has one: completed, or cancelled
    but finished by fal) the presigned result."""
    doc = rec.public()
    doc["fal_status"] = FAL_STATUS[rec.state]
    if rec.has_result:
        doc["result"] = result_body(rec, gw.presign)
    fail = failure(rec)
    if fail is not None:
        doc["error_type"] = fail.error_type
    return doc


async def list_jobs(request: Request) -> Response:
    who = require(request, "read")
    try:
        query = parse_query(request.query_params)
    except InvalidInput as exc:
        raise Unprocessable(validation_detail(exc, root="query")) from None
    gw = _gw(request)
    return json_response(200, await blocking(search, gw.store, query, tenant=who.tenant, catalogue=gw.falq.catalogue))


async def get_job(request: Request) -> Response:
    who = require(request, "read")
    gw = _gw(request)
    rec = await blocking(visible_job, gw, who, request.path_params["job_id"])
    return json_response(200, await blocking(_job_view, gw, rec), rec.id)


async def create_job(request: Request) -> Response:
    who = require(request, "submit")
    gw = _gw(request)
    try:
        job = JobIn.model_validate(await read_json(request))
    except pydantic.ValidationError as exc:
        raise Unprocessable(pydantic_detail(exc)) from None
    detail: list[dict[str, Any]] = []
    if job.fal_webhook is not None:
        try:
            check_webhook_url(job.fal_webhook)
        except InvalidInput:
            detail.append({"loc": ["body", "fal_webhook"], "msg": "must be an http(s) URL without credentials",
                           "type": "value_error"})
    try:
        await blocking(gw.falq.validate, job.endpoint, job.input, lane=job.lane, callback_url=job.callback_url,
                       tenant=who.tenant)
    except InvalidInput as exc:
        detail = _input_detail(exc, ["body"]) + detail
    if detail:
        raise Unprocessable(detail)
    existed = job.idempotency_key is not None and await blocking(_idem_owner, gw, job.idempotency_key, who.tenant)
    handle = await blocking(gw.falq.submit, job.endpoint, job.input, lane=job.lane,
                            idempotency_key=job.idempotency_key, metadata=job.metadata,
                            callback_url=job.callback_url, tenant=who.tenant, fal_webhook=job.fal_webhook or None)
    rec = await blocking(handle.record)
    return json_response(200 if existed else 201, await blocking(_job_view, gw, rec), rec.id)


def _idem_owner(gw: Gateway, key: str, tenant: str) -> bool:
    owner = gw.store.r.get(gw.store.idem_key(key, tenant))
    return owner is not None and gw.store.exists(owner.decode())


def _input_detail(exc: InvalidInput, root: list[str | int]) -> list[dict[str, Any]]:
    """Field errors of a job: schema fields sit under ``input``, the job's own fields at the top."""
    top = {"endpoint", "lane", "callback_url", "idempotency_key", "tenant"}
    out = []
    for err in exc.errors:
        where = root if err.field.split(".")[0] in top else [*root, "input"]
        entry = validation_detail(InvalidInput([err]), root="_")[0]
        entry["loc"] = [*where, *entry["loc"][1:]]
        out.append(entry)
    return out


async def bulk(request: Request) -> Response:
    who = require(request, "submit")
    gw = _gw(request)
    body = await read_json(request)
    if not isinstance(body, list) or not 1 <= len(body) <= MAX_BULK:
        raise Unprocessable.field(["body"], f"must be a JSON array of 1 to {MAX_BULK} jobs")
    requests, detail, invalid = await blocking(_validate_bulk, gw, body, who)
    if detail:
        return json_response(422, {"detail": detail, "invalid": invalid})
    results = await blocking(gw.falq.submit_many, requests)
    jobs = [{"index": i, "id": job_id, "created": created} for i, (job_id, created) in enumerate(results)]
    created = sum(1 for j in jobs if j["created"])
    return json_response(200, {"jobs": jobs, "created": created, "existing": len(jobs) - created})


def _validate_bulk(gw: Gateway, items: list[Any],
                   who: Principal) -> tuple[list[JobRequest], list[dict[str, Any]], list[Any]]:
    requests: list[JobRequest] = []
    detail: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for i, raw in enumerate(items):
        errs: list[dict[str, Any]] = []
        try:
            item = BulkItem.model_validate(raw)
        except pydantic.ValidationError as exc:
            errs = pydantic_detail(exc)
            for e in errs:
                e["loc"] = ["body", i, *e["loc"][1:]]
        else:
            try:
                req = gw.falq.validate(item.endpoint, item.input, lane=item.lane, callback_url=item.callback_url,
                                       tenant=who.tenant)
                requests.append(JobRequest(req.endpoint, req.input, req.lane, idempotency_key=item.id,
                                           metadata=item.metadata, callback_url=req.callback_url,
                                           tenant=who.tenant))
            except InvalidInput as exc:
                errs = _input_detail(exc, ["body", i])
        if errs:
            detail.extend(errs)
            invalid.append({"index": i, "errors": [{"loc": e["loc"][2:], "msg": e["msg"]} for e in errs]})
    return requests, detail, invalid


async def cancel_job(request: Request) -> Response:
    who = require(request, "submit")
    gw = _gw(request)
    rec = await blocking(visible_job, gw, who, request.path_params["job_id"])
    done = await blocking(admin(request).cancel, rec.id)
    return json_response(200, await blocking(_job_view, gw, done.record), done.record.id)


async def retry_job(request: Request) -> Response:
    who = require(request, "submit")
    gw = _gw(request)
    rec = await blocking(visible_job, gw, who, request.path_params["job_id"])
    [done] = await blocking(admin(request).retry, [rec.id])  # a job only the catalogue holds included
    doc = await blocking(_job_view, gw, done.record)
    doc["retried"] = done.retried
    if done.reason:  # why not (409), e.g. a completed job is never run again
        doc["reason"] = done.reason
    if done.warning:  # what the new run lacks (an archived job's callback URL is not kept)
        doc["warning"] = done.warning
    return json_response(200 if done.retried else 409, doc, done.record.id)


async def retry_failed(request: Request) -> Response:
    who = require(request, "admin")
    try:
        since = validate_since(request.query_params.get("since"))
    except InvalidInput as exc:
        raise Unprocessable(validation_detail(exc, root="query")) from None
    done = await blocking(admin(request).retry_failed, since, tenant=who.tenant)
    ids = [o.record.id for o in done if o.retried]
    return json_response(200, {"retried": ids, "count": len(ids)})


async def healthz(request: Request) -> Response:
    return json_response(200, {"ok": True})


async def readyz(request: Request) -> Response:
    gw = _gw(request)
    checks = {"redis": await blocking(_check, lambda: bool(gw.store.r.ping())),
              "s3": await blocking(_check, lambda: _bucket_reachable(gw))}
    ok = all(v == "ok" for v in checks.values())
    return json_response(200 if ok else 503, {"ok": ok, "checks": checks})


def _bucket_reachable(gw: Gateway) -> None:
    """HeadBucket; a 403 counts as reachable, as for the workers (a least-privilege key may lack ListBucket)."""
    from botocore.exceptions import ClientError

    try:
        gw.storage.client.head_bucket(Bucket=gw.storage.bucket)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) not in ("403", "AccessDenied"):
            raise


def _check(probe: Any) -> str:
    try:
        probe()
        return "ok"
    except Exception as exc:  # a probe reports, it never raises
        return f"unavailable ({type(exc).__name__})"


