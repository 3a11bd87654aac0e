"""fal's queue protocol, served by falq: any fal client gets falq's queue by changing its base URL.

Routes (one catch-all, as in the emulator, so every path form fal's clients send works):

* ``POST /{owner}/{app}/{path}`` -- validate, enqueue a falq job, answer like fal's submit
  (``request_id`` = the falq job id; ``?fal_webhook=URL``, delivered signed the way fal signs,
  keys at ``/.well-known/jwks.json``; fal's request headers passed on to the job's submit
  (:mod:`falq.gateway.fal.headers`), ``X-Fal-Queue-Priority: low`` -> also the bulk lane;
  ``Idempotency-Key``; ``X-Falq-Metadata: {json}``). Bad input: 422 with fal's ``detail``
  entries, and nothing is enqueued.
* ``GET  /{owner}/{app}[/{path}]/requests/{id}/status[/]?logs=1|0|true|false``: 202, or 200 when COMPLETED
* ``GET  /{owner}/{app}[/{path}]/requests/{id}/status/stream``: SSE, closed after COMPLETED
* ``GET  /{owner}/{app}[/{path}]/requests/{id}[/]``: the result (presigned S3 URLs; data URIs
  for ``sync_mode``; ``x-fal-billable-units`` as fal reported it) or fal's error answer
  (422 ``content_policy_violation`` for moderation)
* ``PUT  /{owner}/{app}[/{path}]/requests/{id}/cancel``: 202 ``CANCELLATION_REQUESTED`` / 400 ``ALREADY_COMPLETED``

Unknown ids answer 404 ``{"status": "NOT_FOUND"}``, and so do ids of another tenant's jobs
(byte for byte: :func:`falq.gateway.core.visible_job`). Submitting needs the key's ``submit``
scope, so does cancel; status, stream and result need ``read`` (403 otherwise, checked first).
A job is created for the key's tenant; an endpoint the tenant may not use is a 422 naming
``endpoint``.

Example::

    curl -X POST -H "Authorization: Key $FALQ_API_KEY" -d '{"prompt":"a fox"}' \\
         http://127.0.0.1:8080/fal-ai/qwen-image-2/text-to-image
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from falq.gateway.auth import Principal, principal, require
from falq.gateway.core import Gateway, blocking, json_response, visible_job
from falq.gateway.fal.headers import fal_headers_of
from falq.gateway.fal.views import (
    APPS,
    COMPLETED,
    app_of,
    error_result,
    failure,
    queue_urls,
    result_body,
    status_body,
    validation_detail,
)
from falq.gateway.fal.webhook_sender import check_webhook_url
from falq.producers.admin import Admin
from falq.shared.errors import InvalidInput, JobNotFound
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.jobs.records import JobRecord

#: An SSE stream sends a ``: ping`` comment this often while nothing changes, as fal does.
STREAM_HEARTBEAT_S = 15.0
STREAM_POLL_S = 0.25
_ACTIONS = ("", "status", "status/stream", "cancel")


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def queue_call(request: Request) -> Response:
    """Dispatch every queue-protocol path."""
    parts = [p for p in request.url.path.split("/") if p]
    idx = len(parts) - 1 - parts[::-1].index("requests") if "requests" in parts[2:] else -1
    prefix = "/".join(parts[:idx] if idx >= 0 else parts)
    if idx < 0:
        if prefix not in ENDPOINTS:
            return json_response(404, {"detail": f"Application '{prefix}' not found"})
        if request.method != "POST":
            return json_response(405, {"detail": "Method not allowed"}, headers={"allow": "POST"})
        require(request, "submit")
        return await submit(request, prefix)
    tail = parts[idx + 1:]
    if prefix not in APPS and prefix not in ENDPOINTS:
        return json_response(404, {"detail": f"Application '{prefix}' not found"})
    if not tail:
        return json_response(404, {"detail": "Not found"})
    rid, action = tail[0], "/".join(tail[1:])
    if action not in _ACTIONS:
        return json_response(404, {"detail": "Not found"}, rid)
    expected = {"": "GET", "status": "GET", "status/stream": "GET", "cancel": "PUT"}[action]
    if request.method != expected:
        return json_response(405, {"detail": "Method not allowed"}, rid, {"allow": expected})
    who = require(request, "submit" if action == "cancel" else "read")
    gw = _gw(request)
    rec = await _find(gw, who, rid)
    if rec is None or app_of(rec.endpoint) != app_of(prefix):
        return json_response(404, {"status": "NOT_FOUND", "detail": f"Request {rid} not found"}, rid)
    if action == "status":
        return await status(request, gw, rec)
    if action == "status/stream":
        return stream(request, gw, rec)
    if action == "cancel":
        return await cancel(gw, rec)
    return await result(gw, rec)


async def _find(gw: Gateway, who: Principal, rid: str) -> JobRecord | None:
    """The caller's job ``rid``; None for an unknown id and for another tenant's, alike."""
    if not rid or len(rid) > 200:
        return None
    try:
        return await blocking(visible_job, gw, who, rid)
    except JobNotFound:
        return None


# --- submit --------------------------------------------------------------------------------------


async def submit(request: Request, endpoint: str) -> Response:
    """Validate everything first; enqueue only a request that is entirely valid."""
    gw = _gw(request)
    tenant = principal(request).tenant
    try:
        data = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        bad = {"loc": ["body"], "msg": "Body is not valid JSON", "type": "json_invalid"}
        return json_response(422, {"detail": [bad]})
    passed, detail = fal_headers_of(request.headers)
    lane = "bulk" if passed.get("X-Fal-Queue-Priority") == "low" else "interactive"
    key = request.headers.get("idempotency-key")
    if key is not None and (not 1 <= len(key) <= 200 or any(c.isspace() for c in key)):
        detail.append({"loc": ["header", "idempotency-key"], "msg": "must be 1-200 characters without whitespace",
                       "type": "value_error"})
    metadata = _metadata(request.headers.get("x-falq-metadata"), detail)
    webhook = request.query_params.get("fal_webhook")
    if webhook is not None:
        try:
            webhook = check_webhook_url(webhook)
        except InvalidInput:
            detail.append({"loc": ["query", "fal_webhook"], "msg": "must be an http(s) URL without credentials",
                           "type": "value_error"})
    try:
        await blocking(gw.falq.validate, endpoint, data, lane=lane, tenant=tenant)
    except InvalidInput as exc:
        entries = validation_detail(exc)
        for entry in entries:  # the endpoint is the URL's path here, not a body field
            if entry["loc"] == ["body", "endpoint"]:
                entry["loc"] = ["path", "endpoint"]
        detail = entries + detail
    if detail:
        return json_response(422, {"detail": detail})
    # The webhook is part of the record from its creation on; the save that ends the job puts
    # it in the outbox (falq.workers.callbacks.sender delivers it, in fal's shape).
    handle = await blocking(gw.falq.submit, endpoint, data, lane=lane,  # type: ignore[arg-type]
                            idempotency_key=key, metadata=metadata, tenant=tenant, fal_webhook=webhook or None,
                            fal_headers=passed)
    rec = await blocking(handle.record)
    position = await blocking(gw.queue_position, rec)
    body: dict[str, Any] = {"status": "IN_QUEUE", "request_id": rec.id, **queue_urls(gw.base_url(request), rec),
            "queue_position": position, "gateway_request_id": rec.id, "logs": None, "metrics": {}}
    return json_response(200, body, rec.id)


def _metadata(raw: str | None, detail: list[dict[str, Any]]) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        detail.append({"loc": ["header", "x-falq-metadata"], "msg": "must be a JSON object", "type": "value_error"})
        return None
    return value


# --- status, stream, result, cancel --------------------------------------------------------------


async def status(request: Request, gw: Gateway, rec: JobRecord) -> Response:
    position = await blocking(gw.queue_position, rec)
    body = status_body(rec, queue_urls(gw.base_url(request), rec), position=position,
                       with_logs=truthy(request.query_params.get("logs")))
    return json_response(200 if body["status"] == COMPLETED else 202, body, rec.id)


def stream(request: Request, gw: Gateway, rec: JobRecord) -> Response:
    """fal's SSE status stream: one ``data:`` event per change carrying only the log lines not
    sent yet on this connection, a ``: ping`` comment every 15 s otherwise, closed after
    COMPLETED (what fal's live stream does)."""
    with_logs = truthy(request.query_params.get("logs"))
    urls = queue_urls(gw.base_url(request), rec)

    async def frames() -> AsyncIterator[bytes]:
        current: JobRecord | None = rec
        last, last_sent = "", time.monotonic()
        sent_logs: list[str] = []
        while current is not None:
            position = await blocking(gw.queue_position, current)
            body = status_body(current, urls, position=position, with_logs=with_logs)
            logs = body.pop("logs")
            text = json.dumps(body, separators=(",", ":"))
            lines = current.logs
            fresh = lines[_overlap(sent_logs, lines):] if with_logs else []
            now = time.monotonic()
            if text != last or fresh:
                # log_entries() gives one entry per line of the tail, in order.
                body["logs"] = (logs or [])[len(lines) - len(fresh):] if with_logs else None
                yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()
                last, last_sent = text, now
                sent_logs = list(lines)
            elif now - last_sent >= STREAM_HEARTBEAT_S:
                yield b": ping\n\n"
                last_sent = now
            if body["status"] == COMPLETED:
                return
            await asyncio.sleep(STREAM_POLL_S)
            current = await blocking(_reload, gw, current)

    headers = {"x-fal-request-id": rec.id, "cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


def _overlap(sent: list[str], lines: list[str]) -> int:
    """How many leading ``lines`` were already sent: the tail may have moved on by some lines."""
    for start in range(len(sent)):
        if lines[: len(sent) - start] == sent[start:]:
            return len(sent) - start
    return 0


def _reload(gw: Gateway, rec: JobRecord) -> JobRecord | None:
    """The record again, read in full only when its version moved (cheap for idle streams)."""
    version = gw.store.r.hget(gw.store.job_key(rec.id), "version")
    if version is None:
        return None
    if int(version) == rec.version:
        return rec
    try:
        return gw.store.get(rec.id)
    except JobNotFound:
        return None


async def result(gw: Gateway, rec: JobRecord) -> Response:
    """fal's result answer: the images of a job with a result (a cancelled job fal finished
    anyway too: 200 as live fal answers it, :func:`falq.shared.fal.shapes.failure`), else fal's
    error answer."""
    if not rec.terminal:
        return json_response(400, {"detail": "Request is still in progress"}, rec.id)
    fail = failure(rec)
    if fail is not None:
        code, body, headers = error_result(fail)
        return json_response(code, body, rec.id, headers)
    body = await blocking(result_body, rec, gw.presign, gw.storage.get_bytes)
    billed = {} if rec.billable_units is None else {"x-fal-billable-units": f"{rec.billable_units:g}"}
    return json_response(200, body, rec.id, billed)


async def cancel(gw: Gateway, rec: JobRecord) -> Response:
    """fal's cancel: 202 ``CANCELLATION_REQUESTED``, or 400 ``ALREADY_COMPLETED`` once the job ended."""
    done = await blocking(Admin(gw.falq, gw.settings).cancel, rec.id)
    if done.outcome == "final":
        return json_response(400, {"status": "ALREADY_COMPLETED"}, rec.id)
    return json_response(202, {"status": "CANCELLATION_REQUESTED"}, rec.id)


__all__ = ["queue_call"]
