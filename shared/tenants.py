"""Tenants: the services and pipelines that share one fal account.

A tenant has a name, a weight (its share of fal's capacity while several tenants wait), optional
caps of its own (requests outstanding at fal, submissions per second, daily budget in USD), the
endpoints it may use (empty: all) and an S3 prefix (default: its name). The tenant ``default``
always exists, so a deployment that never names a tenant behaves exactly as before.

Tenants live in Redis (``{p}:tenants``, a hash name -> JSON), so ``falq tenants set`` takes
effect on every worker and gateway at once, with no restart. Every value is checked by
:func:`validate_tenant` (one :class:`~falq.shared.errors.FieldError` per broken rule); the
admin service (:mod:`falq.producers.admin`) is the only writer.

Example::

    store = TenantStore(redis_client, prefix="falq")
    store.put(Tenant(name="shop", weight=2, max_outstanding=8, budget_usd=40))
    store.get("shop").weight        # 2.0
    store.get("nope")               # None
    [t.name for t in store.list()]  # ['default', 'shop']
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from falq.shared.keys import Keys

DEFAULT_TENANT = "default"
#: Tenant names: lowercase letters, digits, ``-`` and ``_``, 1-40 characters, starting with a
#: letter or digit. They appear in Redis keys, S3 prefixes and metric labels, so they are kept
#: to a safe alphabet and short.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
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

    @property
    def prefix(self) -> str:
        return self.s3_prefix or self.name

    def allows(self, endpoint: str) -> bool:
        return not self.endpoints or endpoint in self.endpoints


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(NAME_RE.match(name))


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
