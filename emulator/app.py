"""Starlette routes of the emulator: fal's queue protocol, files, storage, admin.

Queue routes (``Authorization: Key ...`` required):

* ``POST /{owner}/{app}/{path}`` submit (``?fal_webhook=URL``)
* ``GET  /{owner}/{app}[/{path}]/requests/{id}/status[/]`` (``?logs=1|0|true|false``)
* ``GET  /{owner}/{app}[/{path}]/requests/{id}/status/stream`` (SSE)
* ``GET  /{owner}/{app}[/{path}]/requests/{id}[/]`` result
* ``PUT  /{owner}/{app}[/{path}]/requests/{id}/cancel``

Other routes: ``GET /files/{name}``, ``GET /.well-known/jwks.json``, the storage upload
routes of :mod:`falq.emulator.storage`, fal's platform API (``/v1/models/pricing``,
``/v1/models/billing-events``, ``/v1/models/usage``, :mod:`falq.emulator.platform`) and
``/_emulator/{config,reset,requests,health,billing}``.

Storage, as the live service answers it (README, "fal, as the live service behaves"):

* ``POST /storage/upload/initiate`` needs ``Authorization: Key`` (401) and a ``storage_type``
  query (422 when missing, 400 ``Invalid storage type`` when unknown); with
  ``upload_cdn_outage`` the ``fal-cdn-v3`` type answers an nginx 503 while ``gcs`` works;
* ``POST /v1/storage/files/sign?url=FILE_URL`` with ``{"expiration_seconds": N}`` (1..604800)
  answers ``{"signed_url": ...}`` (fal's platform API; ``FALQ_FAL_PLATFORM_URL`` is then the
  emulator's ``/v1``); with ``file_access`` ``forbid``/``hide`` a file answers 403/404 unless
  the request carries ``Authorization: Key`` or a signed URL.

Answers that follow the live service (README, "fal, as the live service behaves"):

* a locked key's submit: 403 ``{"detail": "User is locked. Reason: Exhausted balance. ..."}``
  (``locked_status``; 402 is the legacy option), no request id, nothing created;
* a prompt with ``moderation_submit_marker``: 422 ``content_policy_violation`` at submit,
  nothing created; a moderated request's result: the same 422 with ``x-fal-request-id``
  and ``X-Fal-Error-Type: content_policy_violation``;
* a successful result: 200 with ``x-fal-billable-units`` (images billed); an expired one:
  404 ``{"detail": "Request result not found or expired"}``;
* the status stream (``stream_mode="live"``): a ``data:`` event per change carrying only
  new log entries (the first event: the polled-logs window), ``: ping`` comments every
  ``stream_heartbeat_s`` in between, closed after COMPLETED.

Example::

    app = create_app(EmulatorConfig(latency="0"))   # any ASGI server can serve it
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from falq.emulator import platform
from falq.emulator.config import EmulatorConfig
from falq.emulator.core import LOCKED_DETAIL, Emulator
from falq.emulator.faults import SUBMIT_500_BODY, SUBMIT_500_SCOPE_KEY, FaultMiddleware
from falq.emulator.state import COMPLETED, IN_QUEUE, RequestRecord
from falq.shared.fal.endpoints import ENDPOINTS

APPS = {e.app for e in ENDPOINTS.values()}
__all__ = ["LOCKED_DETAIL", "create_app", "queue_call"]


def _json(code: int, body: Any, rid: str | None = None, headers: dict[str, str] | None = None) -> Response:
    hdrs = dict(headers or {})
    if rid:
        hdrs["x-fal-request-id"] = rid
    return Response(json.dumps(body, separators=(",", ":")), code, hdrs, media_type="application/json")


def _base(request: Request, emu: Emulator) -> str:
    emu.outputs.own_netlocs.add(request.url.netloc)
    return emu.config.public_url or str(request.base_url).rstrip("/")


def _emu(request: Request) -> Emulator:
    emu: Emulator = request.app.state.emulator
    return emu


def _auth(request: Request, emu: Emulator) -> tuple[str | None, Response | None]:
    """The API key, or a 401 answer."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() not in ("key", "bearer") or not key:
        return None, _json(401, {"detail": "Missing or malformed Authorization header (expected 'Key <FAL_KEY>')"})
    accepted = emu.config.accepted_keys
    if accepted is not None and key not in accepted:
        return None, _json(401, {"detail": "Invalid API key"})
    return key, None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


async def queue_call(request: Request) -> Response:
    """Dispatch every queue-protocol path (one catch-all keeps routing cheap)."""
    emu = _emu(request)
    parts = [p for p in request.url.path.split("/") if p]
    idx = len(parts) - 1 - parts[::-1].index("requests") if "requests" in parts[2:] else -1
    prefix = "/".join(parts[:idx] if idx >= 0 else parts)
    if idx < 0:
        if request.method != "POST" or prefix not in ENDPOINTS:
            return _json(404, {"detail": f"Application '{prefix}' not found"})
        key, denied = _auth(request, emu)
        if denied is not None or key is None:
            return denied or _json(401, {})
        return await _submit(request, emu, prefix, key)
    if prefix not in APPS and prefix not in ENDPOINTS:
        return _json(404, {"detail": f"Application '{prefix}' not found"})
    tail = parts[idx + 1 :]
    if not tail:
        return _json(404, {"detail": "Not found"})
    rid, action = tail[0], "/".join(tail[1:])
    key, denied = _auth(request, emu)
    if denied is not None:
        return denied
    rec = emu.records.get(rid)
    if rec is None or rec.app != "/".join(prefix.split("/")[:2]):
        return _json(404, {"status": "NOT_FOUND", "detail": f"Request {rid} not found"}, rid)
    method = request.method
    if action == "" and method == "GET":
        code, body, headers = emu.result(rec)
        return _json(code, body, rid, headers)
    if action in ("status", "status/stream") and method == "GET":
        dropped = emu.start_timeout_answer(rec)
        if dropped is not None:
            return _json(*dropped[:2], rid, dropped[2])
    if action == "status" and method == "GET":
        body = emu.status_body(rec, _truthy(request.query_params.get("logs")))
        return _json(200 if rec.state == COMPLETED else 202, body, rid)
    if action == "status/stream" and method == "GET":
        return _stream(request, emu, rec)
    if action == "cancel" and method == "PUT":
        code, body = emu.cancel(rec)
        return _json(code, body, rid)
    return _json(405 if action in ("", "status", "status/stream", "cancel") else 404, {"detail": "Not found"}, rid)


async def _submit(request: Request, emu: Emulator, endpoint: str, key: str) -> Response:
    body = await request.body()
    refusal = emu.submit_refusal(key, body)
    if refusal is not None:  # locked account or submit-time moderation: nothing is created
        return _json(*refusal)
    headers = {k.lower(): v for k, v in request.headers.items()}
    rec = emu.submit(endpoint, body, key, headers, request.query_params.get("fal_webhook"), _base(request, emu))
    if request.scope.get(SUBMIT_500_SCOPE_KEY):
        # The ambiguous failure: the request exists and runs, but the answer is a 500 that
        # names it. fal-client never retries this (fal may have created the request).
        emu.stats.faults["submit_500_created"] += 1
        return _json(500, SUBMIT_500_BODY, rec.id)
    position = emu.queue_of(rec).position(rec) if rec.state == IN_QUEUE else 0
    answer: dict[str, Any] = {
        "status": "IN_QUEUE",
        "request_id": rec.id,
        **emu.urls(rec),
        "queue_position": position,
        "gateway_request_id": rec.id,
        "logs": None,
        "metrics": {},
    }
    return _json(200, answer, rec.id)


def _stream(request: Request, emu: Emulator, rec: RequestRecord) -> Response:
    with_logs = _truthy(request.query_params.get("logs"))
    legacy = emu.config.stream_mode == "legacy"  # fixed for the connection's life

    async def live() -> AsyncIterator[bytes]:
        """fal's stream: an event per change, new logs only, ``: ping`` while quiet.

        The first event of a connection carries the polled-logs window, so a client that
        reconnects may see entries again and must deduplicate (by timestamp and message).
        """
        sent = 0  # rec.logs[:sent] went out on this connection (or predate its window)
        last: tuple[str, int | None] | None = None
        last_sent = time.monotonic()
        while True:
            position = emu.queue_of(rec).position(rec) if rec.state == IN_QUEUE else None
            key = (rec.state, position)
            new_logs = with_logs and rec.state != IN_QUEUE and len(rec.logs) > sent
            if emu.start_timeout_answer(rec) is not None:
                return  # dropped at its start timeout: a reconnect gets the 504
            if last is None or key != last or new_logs:
                body = emu.status_body(rec, False)
                if with_logs and rec.state != IN_QUEUE:
                    body["logs"] = emu.log_window(rec) if last is None else list(rec.logs[sent:])
                    sent = len(rec.logs)
                last, last_sent = key, time.monotonic()
                yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()
                if rec.state == COMPLETED:
                    return
            elif time.monotonic() - last_sent >= emu.config.stream_heartbeat_s:
                last_sent = time.monotonic()
                yield b": ping\n\n"
            was_queued = rec.state == IN_QUEUE
            wait = max(0.005, emu.config.stream_heartbeat_s - (time.monotonic() - last_sent))
            await emu.wait_change(rec, wait)
            if was_queued and rec.state == IN_QUEUE:
                await emu.wait_change(rec, min(0.1, wait))  # coalesce bursts of queue movement

    async def frames() -> AsyncIterator[bytes]:
        """The emulator's old stream: a full frame (all logs) at least every stream_interval_s."""
        last, last_sent = "", 0.0
        while True:
            text = json.dumps(emu.status_body(rec, with_logs, window=False), separators=(",", ":"))
            now = time.monotonic()
            if text != last or now - last_sent >= emu.config.stream_interval_s:
                yield f"data: {text}\n\n".encode()
                last, last_sent = text, now
            if rec.state == COMPLETED:
                return
            was_queued = rec.state == IN_QUEUE
            await emu.wait_change(rec, emu.config.stream_interval_s)
            if was_queued and rec.state == IN_QUEUE:
                await emu.wait_change(rec, 0.1)  # coalesce bursts of queue movement

    headers = {"x-fal-request-id": rec.id, "cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(frames() if legacy else live(), media_type="text/event-stream", headers=headers)


# --- files and storage ------------------------------------------------------------------


#: ``storage_type`` values fal's storage API knows (fal-js: fal-cdn-v3; fal-client's fallback: gcs).
STORAGE_TYPES = ("fal-cdn-v3", "fal-cdn", "gcs")
#: What fal's edge answers while a backend is down (no x-fal-request-id: nothing was created).
NGINX_503 = "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 " \
            "Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>"


def _file_allowed(request: Request, emu: Emulator, name: str) -> bool:
    """The account's file ACL: public, or credentials / a signed URL when restricted."""
    if emu.config.file_access == "allow":
        return True
    if emu.files.signature_ok(name, request.query_params.get("identity")):
        return True
    key, denied = _auth(request, emu)
    return denied is None and key is not None


async def get_file(request: Request) -> Response:
    emu = _emu(request)
    if not _file_allowed(request, emu, request.path_params["name"]):
        if emu.config.file_access == "hide":
            return _json(404, {"detail": "File not found"})
        return _json(403, {"detail": "Access to this file is forbidden"})
    found = await emu.outputs.file_bytes(request.path_params["name"])
    if found is None:
        return _json(404, {"detail": "File not found"})
    data, content_type = found
    return Response(
        b"" if request.method == "HEAD" else data,
        200,
        media_type=content_type,
        headers={"content-length": str(len(data))},
    )


async def upload_initiate(request: Request) -> Response:
    emu = _emu(request)
    _, denied = _auth(request, emu)
    if denied is not None:
        return denied
    storage_type = request.query_params.get("storage_type")
    if storage_type is None:
        return _json(422, {"detail": [{"loc": ["query", "storage_type"], "msg": "field required",
                                       "type": "value_error.missing"}]})
    if storage_type not in STORAGE_TYPES:
        return _json(400, {"detail": "Invalid storage type"})
    if storage_type == "fal-cdn-v3" and emu.config.upload_cdn_outage:
        emu.stats.faults["upload_cdn_outage"] += 1
        return Response(NGINX_503, 503, media_type="text/html")
    try:
        body = await request.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    content_type = str(body.get("content_type") or "application/octet-stream")
    token, name = emu.files.open_upload(body.get("file_name"), content_type)
    base = _base(request, emu)
    return _json(200, {"upload_url": f"{base}/storage/upload/put/{token}", "file_url": f"{base}/files/{name}"})


async def upload_put(request: Request) -> Response:
    emu = _emu(request)
    name = emu.files.complete_upload(
        request.path_params["token"], await request.body(), request.headers.get("content-type")
    )
    if name is None:
        return _json(404, {"detail": "Unknown upload URL"})
    return _json(200, {"file_url": f"{_base(request, emu)}/files/{name}"})


async def storage_token(request: Request) -> Response:
    emu = _emu(request)
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return _json(
        200,
        {
            "token": "emulator-cdn-token",
            "token_type": "Bearer",
            "base_url": _base(request, emu),
            "expires_at": expires,
        },
    )


async def cdn_upload(request: Request) -> Response:
    emu = _emu(request)
    name = emu.files.new_name(request.headers.get("x-fal-file-name") or "upload.bin")
    emu.files.put_bytes(name, await request.body(), request.headers.get("content-type", "application/octet-stream"))
    return _json(200, {"access_url": f"{_base(request, emu)}/files/{name}"})


async def sign_file(request: Request) -> Response:
    """fal's ``POST /v1/storage/files/sign``: a URL that opens a restricted file for a while."""
    emu = _emu(request)
    _, denied = _auth(request, emu)
    if denied is not None:
        return denied
    url = request.query_params.get("url")
    if not url:
        return _json(422, {"detail": [{"loc": ["query", "url"], "msg": "field required", "type": "missing"}]})
    if "?" in url:
        return _json(422, {"detail": [{"loc": ["query", "url"], "msg": "must not contain query parameters",
                                       "type": "value_error"}]})
    try:
        body = await request.json()
    except ValueError:
        body = None
    expiry = body.get("expiration_seconds") if isinstance(body, dict) else None
    if not isinstance(expiry, int) or isinstance(expiry, bool) or not 1 <= expiry <= 604800:
        return _json(422, {"detail": [{"loc": ["body", "expiration_seconds"],
                                       "msg": "required integer, 1 <= x <= 604800", "type": "value_error"}]})
    _base(request, emu)  # records this netloc as the emulator's own
    name = emu.files.name_from_url(url, emu.outputs.own_netlocs)
    if name is None:
        return _json(404, {"detail": "File not found"})
    return _json(200, {"signed_url": f"{url}?identity={emu.files.sign(name, expiry)}"})


# --- admin ---------------------------------------------------------------------------------


async def jwks(request: Request) -> Response:
    return _json(200, _emu(request).signer.jwks(), headers={"cache-control": "max-age=3600"})


async def get_config(request: Request) -> Response:
    return _json(200, _emu(request).config.model_dump())


async def set_config(request: Request) -> Response:
    emu = _emu(request)
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object")
        emu.set_config(emu.config.updated(changes))
    except pydantic.ValidationError as exc:
        return _json(422, {"detail": json.loads(exc.json(include_url=False))})
    except ValueError as exc:
        return _json(422, {"detail": str(exc)})
    return _json(200, emu.config.model_dump())


async def reset(request: Request) -> Response:
    _emu(request).reset()
    return _json(200, {"ok": True})


async def list_requests(request: Request) -> Response:
    since = request.query_params.get("since")
    try:
        since_f = float(since) if since else None
    except ValueError:
        return _json(422, {"detail": "since must be a unix time (float)"})
    return _json(200, _emu(request).introspect(since_f))


async def health(request: Request) -> Response:
    return _json(200, {"ok": True})


def create_app(config: EmulatorConfig | None = None, emulator: Emulator | None = None) -> Starlette:
    """Build the ASGI app. ``app.state.emulator`` is the :class:`Emulator` behind it."""
    emu = emulator or Emulator(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await emu.aclose()

    routes = [
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/_emulator/config", get_config, methods=["GET"]),
        Route("/_emulator/config", set_config, methods=["POST"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/requests", list_requests, methods=["GET"]),
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/billing", platform.billed, methods=["GET"]),
        Route("/v1/models/pricing", platform.pricing, methods=["GET"]),
        Route("/v1/models/billing-events", platform.billing_events, methods=["GET"]),
        Route("/v1/models/usage", platform.usage, methods=["GET"]),
        Route("/storage/upload/initiate", upload_initiate, methods=["POST"]),
        Route("/storage/upload/put/{token}", upload_put, methods=["PUT"]),
        Route("/storage/auth/token", storage_token, methods=["POST"]),
        Route("/files/upload", cdn_upload, methods=["POST"]),
        Route("/v1/storage/files/sign", sign_file, methods=["POST"]),
        Route("/files/{name:path}", get_file, methods=["GET", "HEAD"]),
        Route("/{path:path}", queue_call, methods=["GET", "POST", "PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(FaultMiddleware, emulator=emu)])
    app.state.emulator = emu
    return app
