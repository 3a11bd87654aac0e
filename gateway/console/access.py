"""Who is looking at the console, and what they may see: sign-in, sessions, CSRF, visibility.

A person signs in with a falq API key (a form POST). The key is checked once, turned into a
:class:`Principal` (tenant, scopes) by :func:`principal_for_key` -- the one place that knows
how keys map to tenants and scopes -- and forgotten: Redis keeps a *session* under the
sha256 of a random id (``{p}:console:session:{sha256}``, TTL ``FALQ_CONSOLE_SESSION_TTL_S``),
the browser keeps only that id in a cookie that is HttpOnly, SameSite=Strict, Secure over
https and expires with the session. Every request re-checks that the key behind the session
still exists (a revoked key ends its sessions at once).

Each session carries its own CSRF token; every state-changing form (retry, cancel, sign out)
sends it in a hidden field (htmx requests in ``X-CSRF-Token``) and :func:`check_csrf` compares
it in constant time. The sign-in form, which has no session yet, uses a double-submit token
(a short-lived cookie equal to a hidden field).

Example::

    p = principal_for_key(ctx, "k-123")            # Principal(tenant='default', scopes={'admin'}, ...)
    sid, sess = sessions.create(p)                  # sid goes into the cookie, never into Redis
    sessions.get(sid).principal.can_see(record)     # the one visibility rule of the console
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from falq.gateway.auth import Principal as AuthPrincipal
from falq.shared.keys import Keys
from falq.shared.records import JobRecord
from falq.shared.tenants import KEY_ID_LEN, SCOPES, ApiKeyStore, hash_key

COOKIE = "falq_session"
#: The sign-in form's double-submit cookie (no session exists yet to hold a token).
LOGIN_COOKIE = "falq_login_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Principal:
    """The signed-in key as a session keeps it: its tenant and scopes, never the key.

    Every decision goes through the gateway's own principal (:meth:`auth`, a
    :class:`falq.gateway.auth.Principal`): the same scope rules (``admin`` includes the
    others; the *operator* is an ``admin`` key of the ``default`` tenant) and the same tenant
    rule as the REST routes (:func:`falq.gateway.core.visible_job`: a key sees its own
    tenant's jobs only). ``source``: ``env`` (``FALQ_API_KEYS``) or ``store`` (a tenant key);
    ``digest``: the key's sha256, to re-check on every request that the key still exists.
    """

    tenant: str
    scopes: frozenset[str]
    source: str
    digest: str

    def auth(self) -> AuthPrincipal:
        """The gateway's principal for this key (what the REST routes would see)."""
        return AuthPrincipal(self.tenant, self.scopes, self.digest[:KEY_ID_LEN] if self.source == "store"
                             else self.source)

    def can(self, scope: str) -> bool:
        """``read``, ``submit``, ``admin`` (includes both) or ``operator``, as :func:`falq.gateway.auth.require`."""
        who = self.auth()
        return who.operator if scope == "operator" else who.has(scope)

    def can_see(self, rec: JobRecord) -> bool:
        """The REST routes' visibility rule for a record already read (listings, the gallery)."""
        return self.can("read") and rec.tenant == self.tenant

    @property
    def name(self) -> str:
        """How the header names the signed-in key (never the key itself)."""
        who = "operator key" if self.can("operator") else f"key {self.digest[:KEY_ID_LEN]}"
        return f"{who} · tenant {self.tenant} · {', '.join(sorted(self.scopes))}"

    def as_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "scopes": sorted(self.scopes), "source": self.source, "digest": self.digest}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Principal:
        return cls(tenant=str(doc["tenant"]), scopes=frozenset(doc["scopes"]), source=str(doc["source"]),
                   digest=str(doc["digest"]))


@dataclass
class KeyContext:
    """What :func:`principal_for_key` needs: the gateway's own key resolver and the key store.

    ``api``: the gateway's :class:`falq.gateway.auth.ApiKeys` (the REST routes' resolver);
    ``env_keys``: the ``FALQ_API_KEYS`` keys (None: the gateway runs ``--unauthenticated``).
    """

    api: Any
    env_keys: list[str] | None
    store: ApiKeyStore
    env_digests: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.env_digests = frozenset(hash_key(k) for k in (self.env_keys or []))


def principal_for_key(ctx: KeyContext, key: str) -> Principal | None:
    """The principal of an API key, or None when the key is not accepted (blocking: may ask Redis).

    The console's single mapping of keys to tenants and scopes, and it is the gateway's own:
    the key is resolved by :meth:`falq.gateway.auth.ApiKeys.resolve`, exactly as for a REST
    call (a ``FALQ_API_KEYS`` key: the ``default`` tenant's admin, the operator; a tenant key:
    its tenant and scopes). On an ``--unauthenticated`` gateway any non-empty key signs in as
    the operator (local use only).
    """
    key = key.strip()
    if not key or len(key) > 512:
        return None
    who = ctx.api.resolve(f"Key {key}")
    if who is None:
        return None
    scopes = frozenset(s for s in who.scopes if s in SCOPES)
    if not scopes:
        return None
    digest = hash_key(key)
    if ctx.env_keys is None:
        source, digest = "env", "unauthenticated"
    else:
        source = "env" if digest in ctx.env_digests else "store"
    return Principal(who.tenant, scopes, source, digest)


def still_valid(ctx: KeyContext, p: Principal) -> Principal | None:
    """The session's principal as it stands now: None once its key was revoked or removed.

    A tenant key is looked up again among its tenant's keys, so a scope change applies too.
    """
    if p.source == "env":
        if ctx.env_keys is None:
            return p if p.digest == "unauthenticated" else None
        return p if p.digest in ctx.env_digests else None
    found = next((k for k in ctx.store.list(p.tenant) if k.digest == p.digest), None)
    if found is None or not found.scopes:
        return None
    return Principal(found.tenant, frozenset(found.scopes), "store", p.digest)


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str
    created: float
    expires: float


class Sessions:
    """Console sessions in Redis. Only the sha256 of a session id is stored, so reading Redis
    (a dump, a replica) does not give anyone a usable cookie."""

    def __init__(self, r: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.r = r
        self.keys = Keys(prefix)
        self.ttl_s = int(ttl_s)

    def _key(self, sid: str) -> str:
        return self.keys.console_session(hashlib.sha256(sid.encode()).hexdigest())

    def create(self, principal: Principal) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        now = time.time()
        sess = Session(principal, secrets.token_urlsafe(32), now, now + self.ttl_s)
        doc = {"p": principal.as_json(), "csrf": sess.csrf, "created": now, "expires": sess.expires}
        self.r.set(self._key(sid), json.dumps(doc), ex=self.ttl_s)
        return sid, sess

    def get(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 128:
            return None
        raw = self.r.get(self._key(sid))
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            return Session(Principal.from_json(doc["p"]), str(doc["csrf"]), float(doc["created"]),
                           float(doc["expires"]))
        except (ValueError, KeyError, TypeError):
            return None

    def drop(self, sid: str | None) -> None:
        if sid:
            self.r.delete(self._key(sid))


def check_csrf(expected: str, given: str | None) -> bool:
    """Whether a form's (or header's) token is the session's, compared in constant time."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def is_https(scheme: str, headers: Any) -> bool:
    """Whether the browser reached us over https: the request's scheme or a proxy's ``X-Forwarded-Proto``."""
    forwarded = str(headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower()
    return scheme == "https" or forwarded == "https"
