"""Serving the gateway: ``falq api`` (:func:`main`) and :class:`GatewayServer` for tests.

Example::

    FALQ_API_KEYS=k1,k2 falq api --host 0.0.0.0 --port 8080
    falq api --unauthenticated                 # local use only: no API key needed

    with GatewayServer(settings, api_keys=["k1"]) as gw:      # a background thread, free port
        httpx.get(f"{gw.url}/healthz")
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import uvicorn

from falq.gateway.app import create_app
from falq.gateway.config import GatewayConfigError, GatewaySettings

# The emulator's socket and uvicorn helpers: one way to bind and serve in the code base.
from falq.shared.asgi import BackgroundServer, base_url, bind, uvicorn_config
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="falq api", description=(
        "Serve falq over HTTP: fal's queue protocol (point any fal client here) and falq's REST routes. "
        "API keys: FALQ_API_KEYS (comma separated)."))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument("--public-url", default=None, help="base URL put into status/response/cancel URLs "
                                                       "(default: the request's own; FALQ_GATEWAY_PUBLIC_URL)")
    p.add_argument("--unauthenticated", action="store_true", help="serve without API keys (local use only)")
    p.add_argument("--no-webhook-delivery", action="store_true",
                   help="do not deliver fal_webhook callbacks from this process (another replica does)")
    p.add_argument("--log-level", default="warning")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry (``falq api``). Returns the exit code: 2 for a configuration error."""
    args = build_parser().parse_args(argv)
    try:
        gs = GatewaySettings()
        if args.public_url:
            gs.gateway_public_url = args.public_url
        app = create_app(Settings(), gs, unauthenticated=args.unauthenticated,
                         dispatch_hooks=not args.no_webhook_delivery)
    except GatewayConfigError as exc:
        print(f"falq api: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic.ValidationError: say which setting, never its value
        print(f"falq api: invalid settings: {exc.__class__.__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"falq api: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    auth = "unauthenticated" if args.unauthenticated else "API keys required"
    print(f"falq gateway listening on {base_url(args.host, sock)} ({auth})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(uvicorn_config(app, args.log_level)).run(sockets=[sock])
    return 0
