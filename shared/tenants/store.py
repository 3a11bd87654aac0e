"""Tenants: the services and pipelines that share one fal account.

A tenant has a name, a weight (its share of fal's capacity while several tenants wait), optional
caps of its own (requests outstanding at fal, submissions per second, daily budget in USD), the
endpoints it may use (empty: all) and an S3 prefix (default: its name). The tenant ``default``
always exists, so a deployment that never names a tenant behaves exactly as before.

Tenants live in Redis (``{p}:tenants``, a hash name -> JSON), so ``falq tenants set`` takes
effect on every worker and gateway at once, with no restart. Every value is checked by
:func:`falq.shared.tenants.fields.validate_tenant_fields` (one :class:`~falq.shared.errors.FieldError`
per broken rule); the admin service (:mod:`falq.producers.admin.tenants`) is the only writer.

Gateway API keys (:class:`ApiKeyStore`) belong to a tenant and carry scopes (:data:`SCOPES`).
A key is a random 256-bit token shown once; Redis keeps only its sha256 (``{p}:apikey:{sha256}``).
A fast hash is the right one here: the key is not a password a person chose but 32 random
bytes, so there is nothing to brute-force, and the gateway can look a key up in one HGETALL
by its digest on every request (no cache: a revoked key fails on the very next request).

Example::

    store = TenantStore(redis_client, prefix="falq")
    store.put(Tenant(name="shop", weight=2, max_outstanding=8, budget_usd=40))
    store.get("shop").weight        # 2.0
    store.get("nope")               # None
    [t.name for t in store.list()]  # ['default', 'shop']
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from falq.shared.keys import Keys

DEFAULT_TENANT = "default"
#: Tenant names: lowercase letters, digits, ``-`` and ``_``, 1-40 characters, starting with a
#: letter or digit. They appear in Redis keys, S3 prefixes and metric labels, so they are kept
#: to a safe alphabet and short.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
NAME_RULE = "must be 1-40 characters: lowercase letters, digits, '-' or '_', starting with a letter or digit"
MAX_WEIGHT = 1000.0
#: At most this many tenants: the tenant is a metric label, and labels must stay bounded.
MAX_TENANTS = 200


class Tenant(BaseModel):
    """One tenant. ``None`` caps mean "no cap of its own" (the global limits still hold)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    weight: float = 1.0
    #: Requests of this tenant outstanding at fal at once.
    max_outstanding: int | None = None
    #: Submissions per second of this tenant.
    rate: float | None = None
    #: This tenant's own daily budget (USD, UTC day); over it only this tenant pauses.
    budget_usd: float | None = None
    #: Endpoints this tenant may use; empty means every endpoint falq knows.
    endpoints: list[str] = Field(default_factory=list)
    #: Where its images go under ``FALQ_S3_PREFIX``; empty means the tenant's name.
    s3_prefix: str = ""
    #: ``X-Fal-Queue-Priority`` of its jobs (None: the lane's setting). ``low`` waits behind every
    #: customer's ``normal`` requests on fal's shared per-endpoint queue; no discount is documented.
    priority: Literal["normal", "low"] | None = None

    @property
    def prefix(self) -> str:
        return self.s3_prefix or self.name

    def allows(self, endpoint: str) -> bool:
        return not self.endpoints or endpoint in self.endpoints


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(NAME_RE.fullmatch(name))


class TenantStore:
    """Reads and writes tenants in ``{p}:tenants``. ``default`` is always there (implicitly,
    with weight 1 and no caps, until someone sets it)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "falq") -> None:
        self.r = client
        self.keys = Keys(prefix)

    def get(self, name: str) -> Tenant | None:
        raw = self.r.hget(self.keys.tenants, name)
        if raw is None:
            return Tenant(name=DEFAULT_TENANT) if name == DEFAULT_TENANT else None
        return Tenant.model_validate_json(raw)

    def list(self) -> list[Tenant]:
        raw = self.r.hgetall(self.keys.tenants)
        out = {k.decode(): Tenant.model_validate_json(v) for k, v in raw.items()}
        out.setdefault(DEFAULT_TENANT, Tenant(name=DEFAULT_TENANT))
        return [out[k] for k in sorted(out)]

    def put(self, tenant: Tenant) -> None:
        self.r.hset(self.keys.tenants, tenant.name, tenant.model_dump_json())

    def remove(self, name: str) -> bool:
        return bool(self.r.hdel(self.keys.tenants, name))

    def weights(self) -> dict[str, float]:
        """name -> weight for every tenant (one round trip; the dispatcher's hot path)."""
        return {t.name: t.weight for t in self.list()}


def dumps(tenants: list[Tenant]) -> str:
    return json.dumps([t.model_dump(mode="json") for t in tenants])


def s3_prefix_of(store: TenantStore, tenant: str) -> str:
    """The folder a tenant's images go to under ``FALQ_S3_PREFIX`` ("" keeps the old layout),
    read now (:func:`folder_of` the tenant as stored)."""
    return folder_of(store.get(tenant), tenant)


def folder_of(found: Tenant | None, tenant: str) -> str:
    """The folder of ``tenant`` given its settings ``found`` (None: no such tenant, or removed).

    ``default`` keeps the layout falq always had (no extra folder) unless someone gave it an
    ``s3_prefix``; every other tenant gets its ``s3_prefix`` (default: its name). A tenant
    removed while its job ran still gets its name, so its images never land among another's.
    """
    if tenant == DEFAULT_TENANT:
        return found.s3_prefix if found is not None else ""
    return found.prefix if found is not None else tenant


# --- API keys of the gateway ------------------------------------------------------------------

#: ``submit``: create jobs, cancel and retry them; ``read``: every GET of jobs; ``admin``:
#: everything (both others included) plus the administration routes (see the README's scope matrix).
SCOPES = ("submit", "read", "admin")
KEY_TOKEN_PREFIX = "falq_"
#: How much of a key's digest names it in listings and ``falq tenants key revoke`` (not secret).
KEY_ID_LEN = 12


def hash_key(key: str) -> str:
    """The stored form of an API key: its sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A stored API key: never the key itself, only its digest and what it may do."""

    digest: str
    tenant: str
    scopes: tuple[str, ...]
    label: str
    created: float
    last4: str

    @property
    def id(self) -> str:
        return self.digest[:KEY_ID_LEN]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "scopes": list(self.scopes), "label": self.label,
                "created": self.created, "last4": self.last4}


class ApiKeyStore:
    """The gateway's tenant keys in Redis (see the module docs; validation is in the admin service).

    Example::

        keys = ApiKeyStore(redis_client, prefix="falq")
        token, key = keys.create("shop", ("submit", "read"), label="checkout")
        keys.lookup(token).tenant   # 'shop'
        keys.revoke("shop", key.id) # True; lookup(token) is None from now on
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "falq") -> None:
        self.r = client
        self.keys = Keys(prefix)

    def create(self, tenant: str, scopes: tuple[str, ...], label: str = "") -> tuple[str, ApiKey]:
        """A new key for ``tenant``: returns the key (shown once, never stored) and its record."""
        token = KEY_TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(hash_key(token), tenant, tuple(scopes), label, round(time.time(), 3), token[-4:])
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.apikey(key.digest), mapping={
            "tenant": tenant, "scopes": ",".join(key.scopes), "label": label, "created": repr(key.created),
            "last4": key.last4})
        pipe.sadd(self.keys.apikeys(tenant), key.digest)
        pipe.execute()
        return token, key

    def lookup(self, token: str) -> ApiKey | None:
        """The key a caller presented, or None (one HGETALL by digest; no cache)."""
        if not token.startswith(KEY_TOKEN_PREFIX):
            return None
        digest = hash_key(token)
        return self._load(digest, self.r.hgetall(self.keys.apikey(digest)))

    def _load(self, digest: str, raw: dict[Any, Any]) -> ApiKey | None:
        if not raw:
            return None
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
        scopes = tuple(s for s in f.get("scopes", "").split(",") if s in SCOPES)
        return ApiKey(digest, f.get("tenant", ""), scopes, f.get("label", ""), float(f.get("created") or 0),
                      f.get("last4", ""))

    def any_key(self) -> bool:
        """Whether at least one tenant key exists (a SCAN that stops at the first)."""
        return next(iter(self.r.scan_iter(match=self.keys.apikey("*"), count=1000)), None) is not None

    def list(self, tenant: str) -> list[ApiKey]:
        """The tenant's keys, oldest first."""
        digests = sorted(d.decode() if isinstance(d, bytes) else d for d in self.r.smembers(self.keys.apikeys(tenant)))
        pipe = self.r.pipeline(transaction=False)
        for d in digests:
            pipe.hgetall(self.keys.apikey(d))
        found = [self._load(d, raw) for d, raw in zip(digests, pipe.execute(), strict=True)]
        return sorted((k for k in found if k is not None), key=lambda k: (k.created, k.digest))

    def revoke(self, tenant: str, key_id: str) -> bool:
        """Delete the tenant's key whose id (digest prefix) is ``key_id``; at once, everywhere."""
        for digest in (d.decode() if isinstance(d, bytes) else d for d in self.r.smembers(self.keys.apikeys(tenant))):
            if digest[:KEY_ID_LEN] == key_id:
                pipe = self.r.pipeline(transaction=True)
                pipe.delete(self.keys.apikey(digest))
                pipe.srem(self.keys.apikeys(tenant), digest)
                pipe.execute()
                return True
        return False

    def revoke_all(self, tenant: str, pipe: Any = None) -> None:
        """Delete every key of ``tenant`` (on ``pipe`` when given, to go with the tenant's removal)."""
        digests = [d.decode() if isinstance(d, bytes) else d for d in self.r.smembers(self.keys.apikeys(tenant))]
        target = pipe if pipe is not None else self.r.pipeline(transaction=True)
        for d in digests:
            target.delete(self.keys.apikey(d))
        target.delete(self.keys.apikeys(tenant))
        if pipe is None:
            target.execute()
