"""fal's client-proxy convention: ``POST|GET|PUT /_falq/fal-proxy`` with ``x-fal-target-url``.

fal's JS client can send every request to one proxy URL (``proxyUrl: {url, when: "always"}``),
naming the real fal URL in the ``x-fal-target-url`` header. This middleware serves such
requests by rewriting the path and query to the target's, so the route behind it is the
normal queue route. Only ``https://queue.fal.run/...`` targets are served: falq is a queue,
not a proxy to fal's synchronous or storage hosts.

Example (JS)::

    const fal = createFalClient({ credentials: FALQ_API_KEY,
                                  proxyUrl: { url: "http://gw:8080/_falq/fal-proxy", when: "always" } });
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

PROXY_PATH = "/_falq/fal-proxy"
QUEUE_HOSTS = frozenset({"queue.fal.run"})


class FalProxyMiddleware:
    """Rewrites proxied requests onto the gateway's own fal routes (see module docs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != PROXY_PATH:
            await self.app(scope, receive, send)
            return
        target = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-fal-target-url"), "")
        try:
            parts = urlsplit(target)
            ok = parts.scheme == "https" and parts.hostname in QUEUE_HOSTS and parts.path.startswith("/")
        except ValueError:
            ok = False
        if not ok:
            body = json.dumps({"detail": "x-fal-target-url must be an https://queue.fal.run/... URL"}).encode()
            await send({"type": "http.response.start", "status": 400, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        path = parts.path
        scope = {**scope, "path": path, "raw_path": path.encode(), "query_string": parts.query.encode()}
        await self.app(scope, receive, send)
