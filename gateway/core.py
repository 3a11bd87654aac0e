"""What every route of the gateway shares: settings, the producer client, S3, JSON answers.

The routes are ``async`` (one event loop serves thousands of status polls and SSE
streams), while falq's Redis, Celery and boto3 clients are blocking; every call into them
goes through :func:`blocking` (Starlette's thread pool), never straight onto the loop.

Example::

    gw = Gateway(settings, GatewaySettings(api_keys="k"))
    rec = await blocking(gw.store.get, job_id)
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from functools import cached_property
from typing import Any, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from falq.gateway.auth import Principal
from falq.gateway.config import GatewaySettings
from falq.producers.client import Falq
from falq.shared.errors import FalqError, JobNotFound
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.settings import Settings
from falq.shared.storage.s3 import Storage

P = ParamSpec("P")
_SAFE_ID = re.compile(r"[\x21-\x7e]{1,200}")
T = TypeVar("T")


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call (Redis, Celery, S3) in the thread pool."""
    return await run_in_threadpool(fn, *args, **kwargs)


def json_response(code: int, body: Any, rid: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON answer, with ``x-fal-request-id`` when the request concerns one job."""
    hdrs = dict(headers or {})
    if rid and _SAFE_ID.fullmatch(rid):  # an id from the URL is echoed only when it is a plain token
        hdrs["x-fal-request-id"] = rid
    return Response(json.dumps(body, separators=(",", ":")), code, hdrs, media_type="application/json")


class Gateway:
    """The gateway's state: one per app.

    Parameters:
        settings: falq's shared settings (Redis, S3, limits ...).
        gsettings: the gateway's own settings (:mod:`falq.gateway.config`).
        falq: a producer client to reuse (built from ``settings`` by default).
    """

    def __init__(self, settings: Settings, gsettings: GatewaySettings, *, falq: Falq | None = None) -> None:
        self.settings = settings
        self.gsettings = gsettings
        self.falq = falq or Falq(settings)

    @property
    def store(self) -> JobStore:
        return self.falq.store

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings)

    def base_url(self, request: Request) -> str:
        """Where callers reach the gateway: ``FALQ_GATEWAY_PUBLIC_URL`` or the request's own base."""
        return (self.gsettings.gateway_public_url or str(request.base_url)).rstrip("/")

    def queue_position(self, rec: JobRecord) -> int:
        """Jobs waiting in falq ahead of ``rec`` (0 once it is dispatched or submitted): one ZRANK.

        With fair dispatch (:mod:`falq.shared.fairshare.scheduler`) a job waits in its own tenant's ready
        set, so the position counts only its tenant's jobs ahead of it: the order it is served
        in, and nothing about other tenants' work. Without it, the rank among all queued jobs.
        """
        if rec.state != "queued":
            return 0
        index = self.store.keys.fair_ready(rec.lane, rec.tenant) if self.settings.fair_dispatch \
            else self.store.keys.state("queued")
        rank = self.store.r.zrank(index, rec.id)
        return int(rank) if isinstance(rank, int) else 0

    def presign(self, key: str) -> str:
        return self.storage.presign(key)


def missing(job_id: str) -> JobNotFound:
    """The one "no such job" error: what an unknown id and another tenant's id both raise."""
    return JobNotFound(f"no job with id {job_id!r} (never enqueued, or its record expired)")


def visible_job(gw: Gateway, who: Principal, job_id: str) -> JobRecord:
    """The job ``job_id`` if ``who``'s tenant owns it; else :class:`JobNotFound`, exactly as
    for an id that does not exist (blocking: call it through :func:`blocking`).

    Every gateway route that takes a job id goes through here. Both "no such job" and
    "another tenant's job" cost the same one HMGET (and, with the catalogue on, the same
    tenant-filtered catalogue query) and raise the same error with the same text, so neither
    the answer nor the work done tells them apart (``tests/integration/test_tenant_isolation.py``).

    Example::

        rec = await blocking(visible_job, gw, principal(request), job_id)   # or 404
    """
    try:
        # Redis, else the catalogue for a finished job Redis no longer holds (tenant-filtered there)
        rec = gw.falq.lookup(job_id, tenant=who.tenant)
    except JobNotFound:
        raise missing(job_id) from None
    if rec.tenant != who.tenant:
        raise missing(job_id)
    return rec


class RequestIdMiddleware:
    """Adds ``x-fal-request-id`` to every answer that lacks one (a fresh id: a correlation id).

    fal's Python client uses the header's presence to tell an app's error from an ingress
    error, so every answer of the gateway carries one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-fal-request-id" for k, _ in headers):
                    headers.append((b"x-fal-request-id", uuid.uuid4().hex.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class Unprocessable(FalqError):
    """A request the gateway refuses with 422; ``detail`` holds fal-style ``{loc, msg, type}`` entries."""

    kind = "unprocessable"

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(detail)} invalid field(s)")
        self.detail = detail

    @classmethod
    def field(cls, loc: list[str | int], msg: str) -> Unprocessable:
        return cls([{"loc": loc, "msg": msg, "type": "value_error"}])


async def read_json(request: Request) -> Any:
    """The request body as JSON; raise :class:`Unprocessable` when it is not JSON."""
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise Unprocessable([{"loc": ["body"], "msg": "Body is not valid JSON", "type": "json_invalid"}]) from None


def pydantic_detail(exc: Any, root: str = "body") -> list[dict[str, Any]]:
    """fal-style ``detail`` entries for a :class:`pydantic.ValidationError`."""
    out = []
    for err in json.loads(exc.json(include_url=False)):
        out.append({"loc": [root, *err.get("loc", [])], "msg": err.get("msg", "invalid"), "type": err.get("type", "")})
    return out
