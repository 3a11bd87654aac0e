"""API-key authentication of the gateway: ``Authorization: Key <falq api key>`` (as fal) or ``Bearer``.

Callers present a *falq* API key (``FALQ_API_KEYS``), never the fal key: that one stays
with the workers. Keys are compared in constant time against every configured key, so
neither the match nor its position leaks through timing. The probes (``/healthz``,
``/readyz``), the OpenAPI document and the fal webhook receiver (which fal signs instead)
need no key.

Example::

    auth = ApiKeys(["k-123"])
    auth.allows("Key k-123")        # True
    auth.allows("Bearer k-123")     # True
    auth.allows("Key nope")         # False
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from falq.gateway.config import GatewayConfigError

#: Paths answered without an API key.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/_falq/fal-webhook"})


class ApiKeys:
    """The accepted keys. ``None`` means authentication is off (``--unauthenticated``).

    Raises :class:`GatewayConfigError` for an empty key list: refusing to start beats
    silently accepting everyone.
    """

    def __init__(self, keys: Iterable[str] | None) -> None:
        if keys is None:
            self._keys: list[bytes] | None = None
            return
        self._keys = [k.encode() for k in keys if k]
        if not self._keys:
            raise GatewayConfigError("no API keys configured: set FALQ_API_KEYS or run with --unauthenticated")

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value carries an accepted key."""
        if self._keys is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() not in ("key", "bearer"):
            return False
        given = value.strip().encode()
        ok = False
        for key in self._keys:  # no early exit: the time taken does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
        return ok and bool(given)


class AuthMiddleware:
    """Pure ASGI middleware answering 401 (fal's shape) to requests without an accepted key."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if self.keys.allows(header):
            await self.app(scope, receive, send)
            return
        detail = "Missing or malformed Authorization header (expected 'Key <falq api key>')" if not header \
            else "Invalid API key"
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Key realm="falq"'),
        ]})
        await send({"type": "http.response.body", "body": body})
