"""Who is looking at the console, and what they may see: sign-in, sessions, CSRF, visibility.

A person signs in with a falq API key (a form POST). The key is checked once, turned into a
:class:`Principal` (tenant, scopes) by :func:`principal_for_key` -- the one place that knows
how keys map to tenants and scopes -- and forgotten: Redis keeps a *session* under the
sha256 of a random id (``{p}:console:session:{sha256}``, TTL ``FALQ_CONSOLE_SESSION_TTL_S``),
the browser keeps only that id in a cookie that is HttpOnly, SameSite=Strict, Secure over
https and expires with the session. Every request re-checks that the key behind the session
still exists (a revoked key ends its sessions at once).

Failed sign-ins are limited (:class:`SignInLimiter`): per client address (an IPv6 address
counts as its /64) and per key prefix (the first :data:`KEY_PREFIX_CHARS` characters of the key
tried), counted in Redis so every gateway process shares the count. Once either count reaches
its limit, sign-ins from that address or with that prefix answer 429 with ``Retry-After``
until the window ends -- right keys too, so the limit is no oracle. Redis holds the address and
a digest of the prefix, never a key; nothing here logs a key.

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
import ipaddress
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from falq.gateway.auth import Principal as AuthPrincipal
from falq.shared.jobs.records import JobRecord
from falq.shared.keys import Keys
from falq.shared.scripts import register
from falq.shared.tenants.store import KEY_ID_LEN, SCOPES, ApiKeyStore, hash_key

COOKIE = "falq_session"
#: The sign-in form's double-submit cookie (no session exists yet to hold a token).
LOGIN_COOKIE = "falq_login_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
#: How much of a tried key names its per-key count (16: enough that only someone who knows that
#: much of a key can make its holder wait, while variations of one known prefix share a count).
KEY_PREFIX_CHARS = 16

log = logging.getLogger("falq.gateway.console")


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


# --- sign-in limits --------------------------------------------------------------------------------


def client_address(client_host: str | None) -> str:
    """The address failed sign-ins are counted by: the peer's address as uvicorn reports it,
    an IPv6 one as its /64 network (one host holds a whole /64), ``unknown`` if none.

    Behind a reverse proxy uvicorn takes the address from ``X-Forwarded-For`` only when the
    proxy is one of ``FORWARDED_ALLOW_IPS`` (uvicorn's setting, default ``127.0.0.1``); a
    client elsewhere cannot pick its own address by sending that header.
    """
    try:
        ip = ipaddress.ip_address((client_host or "").strip())
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True)
class Refused:
    """A sign-in refused by the limit: which count is full and how long until it clears."""

    by: str  # "address" or "key"
    retry_after_s: int

    @property
    def message(self) -> str:
        minutes = max(1, -(-self.retry_after_s // 60))
        what = "from this address" if self.by == "address" else "with this key"
        return (f"Too many failed sign-in attempts {what}. Try again in {minutes} minute"
                f"{'s' if minutes != 1 else ''}.")


class SignInLimiter:
    """Failed console sign-ins per client address and per key prefix, counted in Redis.

    Each attempt first *takes* one from both counts (:meth:`attempt`, one atomic script); a
    sign-in that succeeds gives it back (:meth:`succeeded`), so the counts are the failures
    within the window, and many guesses racing in at once cannot exceed the limit. A count
    starts its window (``window_s``) at its first failure and is dropped by Redis when that
    ends (a fixed window: a full count clears at once, after at most ``window_s``).

    Example::

        lim = SignInLimiter(r, "falq", per_address=20, per_key=10, window_s=900)
        refused = lim.attempt("203.0.113.7", key)   # None: go on and check the key
        ...; lim.succeeded("203.0.113.7", key)      # only when the key was accepted
    """

    def __init__(self, r: redis.Redis, prefix: str, *, per_address: int, per_key: int, window_s: int) -> None:
        if min(per_address, per_key, window_s) < 1:
            raise ValueError("sign-in limits and window must be at least 1")
        self.r = r
        self.keys = Keys(prefix)
        self.per_address, self.per_key, self.window_s = int(per_address), int(per_key), int(window_s)
        self._acquire = register(r, "signin.acquire")
        self._release = register(r, "signin.release")

    def _counts(self, address: str, key: str) -> tuple[list[str], list[int]]:
        names, limits = [self.keys.console_signin_addr(address[:64])], [self.per_address]
        prefix = key.strip()[:KEY_PREFIX_CHARS]
        if prefix:  # an empty key counts against the address only
            digest = hashlib.sha256(f"falq-console-signin:{prefix}".encode()).hexdigest()[:32]
            names.append(self.keys.console_signin_key(digest))
            limits.append(self.per_key)
        return names, limits

    def attempt(self, address: str, key: str) -> Refused | None:
        """Count one sign-in attempt; a :class:`Refused` when a count is already full (blocking)."""
        names, limits = self._counts(address, key)
        which, ttl, count = (int(v) for v in self._acquire(keys=names, args=[self.window_s, *limits]))
        if not which:
            return None
        by = "address" if which == 1 else "key"
        refused = Refused(by, max(1, ttl))
        if count == limits[which - 1] + 1:  # the first refusal of this window: one line, not a flood
            # The address is fine to log; a key (or its prefix, or its digest) never is.
            where = f"from {address}" if by == "address" else "with one key prefix"
            log.warning("console sign-in limit reached: %d failures %s; refused for %d s", limits[which - 1],
                        where, refused.retry_after_s)
        return refused

    def succeeded(self, address: str, key: str) -> None:
        """The attempt signed in: give back what :meth:`attempt` took (blocking)."""
        names, _ = self._counts(address, key)
        self._release(keys=names, args=[])

    def failures(self, address: str, key: str = "") -> list[int]:
        """The current counts (address, then key prefix if any): tests and operators read them."""
        names, _ = self._counts(address, key)
        return [int(v or 0) for v in self.r.mget(names)]
