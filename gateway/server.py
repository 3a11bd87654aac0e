"""Serving the gateway: ``falq api`` (:data:`command`, :func:`main`) and :class:`GatewayServer` for tests.

Example::

    FALQ_API_KEYS=k1,k2 falq api --host 0.0.0.0 --port 8080
    falq api --unauthenticated                 # local use only: no API key needed

    with GatewayServer(settings, api_keys=["k1"]) as gw:      # a background thread, free port
        httpx.get(f"{gw.url}/healthz")
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click
import uvicorn

from falq.gateway.app import create_app
from falq.gateway.config import GatewayConfigError, GatewaySettings

# The emulator's socket and uvicorn helpers: one way to bind and serve in the code base.
from falq.shared.asgi import BackgroundServer, base_url, bind, uvicorn_config
from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command
from falq.shared.settings import Settings


class GatewayServer(BackgroundServer):
    """The gateway on a free port in a background thread (tests, notebooks).

    Parameters:
        settings: falq settings (e.g. ``DevStack.settings()``).
        api_keys: accepted keys; ``None`` serves unauthenticated.
        host, port: where to listen (port 0: a free one).
        **gateway: other :class:`GatewaySettings` fields (``gateway_public_url``, ``fal_jwks_url`` ...).

    Attributes: ``url`` (no trailing slash), ``app``.
    """

    def __init__(self, settings: Settings, *, api_keys: list[str] | None = None, host: str = "127.0.0.1",
                 port: int = 0, log_level: str = "warning", **gateway: Any) -> None:
        gs = GatewaySettings(_env_file=None, api_keys=",".join(api_keys) if api_keys else None,  # type: ignore[call-arg]
                             **gateway)
        super().__init__(create_app(settings, gs, unauthenticated=api_keys is None), host=host, port=port,
                         log_level=log_level, name="falq-gateway")


@click.command(name="api", context_settings=HELP_OPTIONS)
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", type=int, default=8080, show_default=True, help="0 picks a free port")
@click.option("--public-url", default=None, help="base URL put into status/response/cancel URLs "
                                                 "(default: the request's own; FALQ_GATEWAY_PUBLIC_URL)")
@click.option("--unauthenticated", is_flag=True, help="serve without API keys (local use only)")
@click.option("--no-webhook-delivery", is_flag=True,
              help="ignored (kept for old scripts): fal_webhook callbacks are delivered by the workers")
@click.option("--log-level", default="warning", show_default=True, help="uvicorn's log level")
def command(host: str, port: int, public_url: str | None, unauthenticated: bool, no_webhook_delivery: bool,
            log_level: str) -> int:
    """Serve falq over HTTP: fal's queue protocol (point any fal client here) and falq's REST routes.

    API keys: FALQ_API_KEYS (comma separated). Exit status 2 for a configuration error.
    """
    try:
        gs = GatewaySettings()
        if public_url:
            gs.gateway_public_url = public_url
        app = create_app(Settings(), gs, unauthenticated=unauthenticated, dispatch_hooks=not no_webhook_delivery)
    except GatewayConfigError as exc:
        print(f"falq api: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic.ValidationError: say which setting, never its value
        print(f"falq api: invalid settings: {exc.__class__.__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    problem = _catalogue_problem(app)
    if problem:  # an outdated catalogue schema: refuse to start, naming `falq db upgrade`
        print(f"falq api: {problem}", file=sys.stderr)
        return 2
    _register_catalogue(app)
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"falq api: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    auth = "unauthenticated" if unauthenticated else "API keys required"  # FALQ_API_KEYS or tenant keys
    print(f"falq gateway listening on {base_url(host, sock)} ({auth})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(uvicorn_config(app, log_level)).run(sockets=[sock])
    return 0


def _catalogue_problem(app: Any) -> str | None:
    """Why the gateway must not start on this catalogue (its schema is outdated), or None. A
    database that is down only makes history unavailable (503) until it is back."""
    settings = app.state.gateway.settings
    if not settings.catalogue:
        return None
    from falq.shared.catalogue.store import get_catalogue
    from falq.shared.errors import CatalogueSchemaOutdated, CatalogueUnavailable

    try:
        get_catalogue(settings, check=True)
    except CatalogueSchemaOutdated as exc:
        return str(exc)
    except CatalogueUnavailable as exc:
        print(f"falq api: warning: {exc}", file=sys.stderr)
    return None


def _register_catalogue(app: Any) -> None:
    """Register the catalogue this gateway reads; warn when it is not the shared history (the
    console and /v1 would show only part of it). Redis down: said, and the gateway starts."""
    settings = app.state.gateway.settings
    if not settings.catalogue:
        return
    import redis

    from falq.shared.catalogue.engine import database_url
    from falq.shared.catalogue.registry import CatalogueRegistry, host_name, identity_of

    registry = CatalogueRegistry(app.state.gateway.store.r, prefix=settings.key_prefix, host=host_name(settings))
    mine = identity_of(database_url(settings), registry.host)
    try:
        registry.register("gateway", mine)
        shared = registry.shared()
    except redis.RedisError as exc:
        print(f"falq api: warning: cannot register the catalogue in Redis: {type(exc).__name__}", file=sys.stderr)
        return
    if shared is not None and shared != mine:
        print(f"falq api: warning: this gateway reads {mine}, not the deployment's shared history {shared}: "
              "it shows only part of the history. Set FALQ_DATABASE_URL to the shared database "
              "(`falq doctor` checks every host)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run :data:`command` (what ``falq api`` runs) on ``argv``; returns the exit code: 2 for a configuration error."""
    return run_command(command, argv, prog_name="falq api")
