"""The gateway's ASGI app: fal's queue protocol and falq's REST routes over one falq deployment.

Example::

    app = create_app(Settings(), GatewaySettings(api_keys="k1"))   # serve with any ASGI server
    app = create_app(settings, gsettings, unauthenticated=True)    # local use only

Layers, outermost first: ``x-fal-request-id`` on every answer, API-key check (401), fal's
client-proxy convention (:mod:`falq.gateway.fal.proxy`), the routes. Typed errors become answers in
one place (:func:`_handlers`): ``Unprocessable`` / ``InvalidInput`` -> 422, ``JobNotFound``
-> 404 ``NOT_FOUND``, Redis, broker or S3 trouble -> 503 (never a stack trace, never a secret).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from kombu.exceptions import OperationalError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from falq.gateway.auth import ApiKeys, AuthMiddleware, Forbidden
from falq.gateway.config import GatewaySettings
from falq.gateway.console import console_routes
from falq.gateway.core import Gateway, RequestIdMiddleware, Unprocessable, blocking, json_response
from falq.gateway.fal import routes as fal_routes
from falq.gateway.fal.proxy import FalProxyMiddleware
from falq.gateway.fal.views import validation_detail
from falq.gateway.fal.webhook_receiver import fal_webhook
from falq.gateway.rest import batches as batch_routes
from falq.gateway.rest import jobs as rest_routes
from falq.gateway.rest import limits as limits_routes
from falq.gateway.rest.openapi import build_document
from falq.producers.client import Falq
from falq.shared.errors import (
    CatalogueUnavailable,
    InvalidInput,
    JobNotFound,
    RedisMemoryFull,
    StorageError,
    StorageTransientError,
    TenantNotFound,
)
from falq.shared.fal.webhook_sign import JWKS_PATH, FalWebhookSigner
from falq.shared.fal.webhook_verify import WebhookVerifier, settings_jwks_url
from falq.shared.settings import Settings
from falq.shared.tenants.store import ApiKeyStore

log = logging.getLogger("falq.gateway")


async def openapi(request: Request) -> Response:
    return json_response(200, build_document())


def _handlers() -> dict[Any, Any]:
    async def unprocessable(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Unprocessable)
        return json_response(422, {"detail": exc.detail})

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidInput)
        return json_response(422, {"detail": validation_detail(exc)})

    async def not_found(request: Request, exc: Exception) -> Response:
        job_id = request.path_params.get("job_id")
        return json_response(404, {"status": "NOT_FOUND", "detail": str(exc)}, job_id)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Forbidden)
        return json_response(403, {"detail": exc.detail})

    async def no_tenant(request: Request, exc: Exception) -> Response:
        return json_response(404, {"detail": str(exc)})

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: backend unavailable (%s)", request.method, request.url.path, type(exc).__name__)
        return json_response(503, {"detail": f"falq is temporarily unavailable ({type(exc).__name__})"},
                             headers={"retry-after": "1"})

    return {Unprocessable: unprocessable, InvalidInput: invalid, JobNotFound: not_found, Forbidden: forbidden,
            TenantNotFound: no_tenant,
            redis.RedisError: unavailable, OperationalError: unavailable, StorageTransientError: unavailable,
            StorageError: unavailable, RedisMemoryFull: unavailable, CatalogueUnavailable: unavailable}


async def jwks(request: Request) -> Response:
    """The public keys falq's outgoing ``fal_webhook`` deliveries are signed with (a JWKS in
    fal's shape, :mod:`falq.shared.fal.webhook_sign`): a receiver written for fal points its JWKS URL
    here. Public, like fal's own."""
    gw: Gateway = request.app.state.gateway
    signer = await blocking(FalWebhookSigner.for_deployment, gw.settings, gw.store.r)
    return json_response(200, signer.jwks(), headers={"cache-control": "max-age=3600"})


def routes() -> list[Route]:
    r, lim = rest_routes, limits_routes
    return [
        Route("/healthz", r.healthz, methods=["GET"]),
        Route("/readyz", r.readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/_falq/fal-webhook", fal_webhook, methods=["POST"]),
        Route(JWKS_PATH, jwks, methods=["GET"]),
        Route("/v1/jobs", r.list_jobs, methods=["GET"]),
        Route("/v1/jobs", r.create_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}", r.get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", r.cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/retry", r.retry_job, methods=["POST"]),
        Route("/v1/bulk", r.bulk, methods=["POST"]),
        Route("/v1/batches", batch_routes.list_batches, methods=["GET"]),
        Route("/v1/batches", batch_routes.create_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}", batch_routes.get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}", batch_routes.set_batch_cap, methods=["PATCH"]),
        Route("/v1/batches/{batch_id}/cancel", batch_routes.cancel_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}/retry", batch_routes.retry_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}/results", batch_routes.batch_results, methods=["GET"]),
        Route("/v1/batches/{batch_id}/errors", batch_routes.batch_errors, methods=["GET"]),
        Route("/v1/retry-failed", r.retry_failed, methods=["POST"]),
        Route("/v1/limits", lim.get_limits, methods=["GET"]),
        Route("/v1/limits", lim.put_limits, methods=["PUT"]),
        Route("/v1/budget", lim.get_budget, methods=["GET"]),
        Route("/v1/budget", lim.put_budget, methods=["PUT"]),
        Route("/v1/tenants", lim.list_tenants, methods=["GET"]),
        Route("/v1/tenants", lim.create_tenant, methods=["POST"]),
        Route("/v1/tenants/{name}", lim.get_tenant, methods=["GET"]),
        Route("/v1/tenants/{name}", lim.patch_tenant, methods=["PATCH"]),
        Route("/v1/tenants/{name}", lim.delete_tenant, methods=["DELETE"]),
        Route("/v1/tenants/{name}/keys", lim.list_keys, methods=["GET"]),
        Route("/v1/tenants/{name}/keys", lim.create_key, methods=["POST"]),
        Route("/v1/tenants/{name}/keys/{key_id}", lim.revoke_key, methods=["DELETE"]),
        Route("/{path:path}", fal_routes.queue_call, methods=["GET", "POST", "PUT"]),
    ]


def create_app(
    settings: Settings | None = None,
    gsettings: GatewaySettings | None = None,
    *,
    unauthenticated: bool = False,
    falq: Falq | None = None,
    verifier: WebhookVerifier | None = None,
    dispatch_hooks: bool = True,
) -> Starlette:
    """Build the gateway.

    Parameters:
        settings: falq's settings (default: from the environment).
        gsettings: the gateway's settings; API keys come from ``gsettings.api_keys``.
        unauthenticated: serve without API keys (refused otherwise when none are configured).
        falq: a producer client to reuse.
        verifier: the fal webhook verifier (default: fal's JWKS or ``FALQ_FAL_JWKS_URL``).
        dispatch_hooks: kept for callers of older versions; ignored. ``fal_webhook`` deliveries
            go through the job outbox and are made by the workers (:mod:`falq.workers.callbacks.sender`).

    Raises :class:`falq.gateway.config.GatewayConfigError` when no key is configured and
    ``unauthenticated`` is false. ``app.state.gateway`` is the :class:`Gateway`.
    """
    settings = settings or Settings()
    gsettings = gsettings or GatewaySettings()
    gw = Gateway(settings, gsettings, falq=falq)
    keys = ApiKeys(None if unauthenticated else gsettings.key_list(),
                   store=ApiKeyStore(gw.store.r, prefix=settings.key_prefix))
    jwks = gsettings.fal_jwks_url or settings_jwks_url(settings)
    verifier = verifier or WebhookVerifier(gw.store.r, jwks_url=jwks, prefix=settings.key_prefix)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield  # nothing runs in the background: fal_webhook deliveries are the workers' (outbox)

    app = Starlette(
        routes=[*console_routes(gw, keys), *routes()],  # the web console (/ui) before the fal catch-all
        lifespan=lifespan,
        exception_handlers=_handlers(),
        middleware=[Middleware(RequestIdMiddleware), Middleware(AuthMiddleware, keys=keys),
                    Middleware(FalProxyMiddleware)],
    )
    app.state.gateway = gw
    app.state.verifier = verifier
    return app
