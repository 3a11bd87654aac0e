"""API-key authentication of the gateway: ``Authorization: Key <falq api key>`` (as fal) or ``Bearer``.

Callers present a *falq* API key, never the fal key: that one stays with the workers. A key
resolves to a :class:`Principal`: the tenant it belongs to and its scopes.

* Keys from ``FALQ_API_KEYS`` are ``default``-tenant ``admin`` keys (what they always were:
  full access). They are compared in constant time against every configured key, with no early
  exit, so neither a match nor its position leaks through timing.
* Tenant keys (``falq tenants key create``) are looked up in Redis by the sha256 of the
  presented key (:class:`falq.shared.tenants.store.ApiKeyStore`): one HGETALL per request, no cache,
  so a revoked key is refused on the very next request. A dictionary lookup by digest leaks
  nothing useful: the digest of a guess says nothing about the digest of a real key.

The probes (``/healthz``, ``/readyz``), the OpenAPI document and the fal webhook receiver (which
fal signs instead) need no key. Without a key, or with an unknown one: 401. A known key
lacking the scope a route needs: 403 (routes call :func:`require`, before they look at any job,
so the answer never depends on whether a job exists; see the scope table in docs/guides/tenants.md).

Example::

    auth = ApiKeys(["k-123"])
    auth.resolve("Key k-123")       # Principal(tenant='default', scopes=frozenset({'admin'}), key_id='config')
    auth.allows("Bearer k-123")     # True
    auth.allows("Key nope")         # False
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from falq.gateway.config import GatewayConfigError
from falq.shared.errors import FalqError
from falq.shared.tenants.store import DEFAULT_TENANT, ApiKeyStore

log = logging.getLogger("falq.gateway")

#: Paths answered without an API key.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/_falq/fal-webhook", "/.well-known/jwks.json"})
#: The web console signs people in itself (a session cookie, :mod:`falq.gateway.console.access`).
CONSOLE_PREFIX = "/ui"
#: Where the middleware leaves the caller's :class:`Principal` (``request.state.principal``).
STATE_KEY = "principal"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and what its key may do.

    ``admin`` includes ``submit`` and ``read``. The *operator* is an ``admin`` key of the
    ``default`` tenant (every ``FALQ_API_KEYS`` key): only it changes limits, budgets,
    tenants and keys, which concern every tenant.
    """

    tenant: str
    scopes: frozenset[str]
    key_id: str

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def operator(self) -> bool:
        return self.tenant == DEFAULT_TENANT and "admin" in self.scopes


#: The caller when the gateway runs ``--unauthenticated`` (local use): the operator.
UNAUTHENTICATED = Principal(DEFAULT_TENANT, frozenset({"submit", "read", "admin"}), "unauthenticated")
CONFIGURED = Principal(DEFAULT_TENANT, frozenset({"admin"}), "config")


class Forbidden(FalqError):
    """The key is valid but lacks what the route needs (answered 403)."""

    kind = "forbidden"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ApiKeys:
    """The accepted keys. ``None`` means authentication is off (``--unauthenticated``).

    Parameters:
        keys: the ``FALQ_API_KEYS`` keys (``default``-tenant admin keys).
        store: where tenant keys are looked up (None: only the configured keys work).

    Raises :class:`GatewayConfigError` when there is no way in at all: no configured key and no
    tenant key in ``store`` (a gateway nobody can call is a configuration mistake, said at start).
    Tenant keys alone are enough: a deployment that only uses ``falq tenants key create`` needs
    no operator key.
    """

    def __init__(self, keys: Iterable[str] | None, store: ApiKeyStore | None = None) -> None:
        self.store = store
        if keys is None:
            self._keys: list[bytes] | None = None
            return
        self._keys = [k.encode() for k in keys if k]
        if not self._keys and not self._tenant_keys_exist():
            raise GatewayConfigError(
                "no API keys configured: set FALQ_API_KEYS, create a tenant key (`falq tenants key create`) "
                "or run with --unauthenticated")

    def _tenant_keys_exist(self) -> bool:
        if self.store is None:
            return False
        try:
            return self.store.any_key()
        except redis.RedisError as exc:
            raise GatewayConfigError(
                f"no FALQ_API_KEYS, and Redis cannot be asked for tenant keys ({type(exc).__name__}): "
                "start Redis first, or set FALQ_API_KEYS") from exc

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    @staticmethod
    def _token(header: str | None) -> str:
        scheme, _, value = (header or "").partition(" ")
        return value.strip() if scheme.lower() in ("key", "bearer") else ""

    def configured(self, header: str | None) -> bool:
        """Whether the header carries a ``FALQ_API_KEYS`` key (constant time over all of them)."""
        if self._keys is None:
            return True
        given = self._token(header).encode()
        ok = False
        for key in self._keys:  # no early exit: the time taken does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
        return ok and bool(given)

    def resolve(self, header: str | None) -> Principal | None:
        """The caller of an ``Authorization`` header value, or None (blocking: may ask Redis)."""
        if self._keys is None:
            return UNAUTHENTICATED
        if self.configured(header):
            return CONFIGURED
        return self.lookup(header)

    def lookup(self, header: str | None) -> Principal | None:
        """The tenant key the header carries, from Redis (blocking), or None."""
        token = self._token(header)
        if not token or self.store is None:
            return None
        found = self.store.lookup(token)
        if found is None or not found.scopes:
            return None
        return Principal(found.tenant, frozenset(found.scopes), found.id)

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value carries an accepted key."""
        return self.resolve(header) is not None


def principal(request: Request) -> Principal:
    """The caller of this request (set by :class:`AuthMiddleware`; the operator when unauthenticated)."""
    found = getattr(request.state, STATE_KEY, None)
    return found if isinstance(found, Principal) else UNAUTHENTICATED


def require(request: Request, scope: str) -> Principal:
    """The caller, if its key has ``scope`` (``operator``: the default tenant's admin); else :class:`Forbidden`.

    Routes call this first, before reading any job, so a 403 never depends on a job."""
    who = principal(request)
    if scope == "operator":
        if not who.operator:
            raise Forbidden("this route needs an admin key of the default tenant (the operator)")
    elif not who.has(scope):
        raise Forbidden(f"this API key lacks the '{scope}' scope")
    return who


class AuthMiddleware:
    """Pure ASGI middleware: resolves the key to a :class:`Principal` (``request.state.principal``)
    and answers 401 (fal's shape) to requests without an accepted key."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or _console(scope["path"]):
            await self.app(scope, receive, send)
            return
        if not self.keys.enabled:
            scope.setdefault("state", {})[STATE_KEY] = UNAUTHENTICATED
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        try:
            if self.keys.configured(header):
                who: Principal | None = CONFIGURED
            else:
                who = await run_in_threadpool(self.keys.lookup, header) if header else None
        except redis.RedisError as exc:
            log.warning("API key lookup failed (%s)", type(exc).__name__)
            await _answer(send, 503, {"detail": f"falq is temporarily unavailable ({type(exc).__name__})"},
                          [(b"retry-after", b"1")])
            return
        if who is not None:
            scope.setdefault("state", {})[STATE_KEY] = who
            await self.app(scope, receive, send)
            return
        detail = "Missing or malformed Authorization header (expected 'Key <falq api key>')" if not header \
            else "Invalid API key"
        await _answer(send, 401, {"detail": detail}, [(b"www-authenticate", b'Key realm="falq"')])


def _console(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


async def _answer(send: Send, status: int, doc: dict[str, str], extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra,
    ]})
    await send({"type": "http.response.body", "body": body})
