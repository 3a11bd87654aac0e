"""Tenants and their gateway API keys (``falq tenants``, ``/v1/tenants``).

The rules of a tenant's settings, its name and a key's scopes and label are
:mod:`falq.shared.tenants.fields`' (pydantic models); this part adds the rules that need the
stored tenants and jobs, and writes what passes:

    (a new tenant)       its name is not taken; at most 200 tenants; ``default`` always exists
    (a change)           must change something
    (a tenant removal)   never ``default``; refused while the tenant has unfinished jobs (cancel
                         them or let them end); its finished records stay, its API keys go
    key_id               one of the tenant's keys

Example::

    admin.tenant_add("shop", weight=2, max_outstanding="8")
    token, key = admin.key_create("shop", ["submit", "read"], label="ci")
    admin.tenant_remove("default")   # InvalidInput: name: the tenant 'default' cannot be removed
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from falq.producers.admin.base import AdminBase
from falq.shared.errors import FieldError, InvalidInput, TenantNotFound
from falq.shared.jobs.records import STATES, TERMINAL
from falq.shared.tenants.fields import validate_key_fields, validate_tenant_fields, validate_tenant_name
from falq.shared.tenants.store import DEFAULT_TENANT, MAX_TENANTS, ApiKey, ApiKeyStore, Tenant

TENANT_EXISTS_RULE = "a tenant of this name exists already (change it with falq tenants set)"
MAX_TENANTS_RULE = f"at most {MAX_TENANTS} tenants (the tenant is a metric label; labels must stay bounded)"
DEFAULT_RULE = "the tenant 'default' cannot be removed"
LIVE_JOBS_RULE = "has unfinished jobs (e.g. {job}); cancel them or let them end, then remove the tenant"
TENANT_NOTHING_RULE = ("nothing to change: give weight, max_outstanding, rate, budget_usd, endpoints, s3_prefix "
                       "or priority")
KEY_ID_RULE = "no API key with this id for the tenant (see falq tenants key list)"


def _errors(exc: InvalidInput | None) -> list[FieldError]:
    return [] if exc is None else exc.errors


class TenantAdmin(AdminBase):
    """The :class:`~falq.producers.admin.Admin` methods ``tenant_*`` / ``key_*``: the CLI
    (``falq tenants``) and the gateway (``/v1/tenants``) go through the same rules."""

    @property
    def key_store(self) -> ApiKeyStore:
        return ApiKeyStore(self.redis, prefix=self.prefix)

    def tenants_list(self) -> list[Tenant]:
        """Every tenant, ``default`` included, by name."""
        return self.tenant_store.list()

    def tenant_get(self, name: str) -> Tenant:
        """One tenant; raises :class:`TenantNotFound`."""
        found = self.tenant_store.get(validate_tenant_name(name))
        if found is None:
            raise TenantNotFound(f"no tenant named {name!r}")
        return found

    def tenant_add(self, name: str, **fields: Any) -> Tenant:
        """Create a tenant (fields as in :func:`~falq.shared.tenants.fields.validate_tenant_fields`;
        unset ones default). Every broken rule of the name and the fields is reported at once."""
        bad_name = bad_fields = None
        try:
            validate_tenant_name(name)
        except InvalidInput as exc:
            bad_name = exc
        try:
            checked = validate_tenant_fields(fields)
        except InvalidInput as exc:
            bad_fields, checked = exc, {}
        if bad_name or bad_fields:
            raise InvalidInput(_errors(bad_name) + _errors(bad_fields))
        store = self.tenant_store
        if name == DEFAULT_TENANT or self.redis.hexists(store.keys.tenants, name):
            raise InvalidInput([FieldError("name", TENANT_EXISTS_RULE)])
        if len(store.list()) >= MAX_TENANTS:
            raise InvalidInput([FieldError("name", MAX_TENANTS_RULE)])
        tenant = Tenant(name=name, **checked)
        if not self.redis.hsetnx(store.keys.tenants, name, tenant.model_dump_json()):  # a concurrent add won
            raise InvalidInput([FieldError("name", TENANT_EXISTS_RULE)])
        return tenant

    def tenant_set(self, name: str, **fields: Any) -> Tenant:
        """Change some settings of an existing tenant; the rest stay. Every worker and gateway
        reads the new values on their next look (no restart)."""
        current = self.tenant_get(name)
        if not fields:
            raise InvalidInput([FieldError("", TENANT_NOTHING_RULE)])
        checked = validate_tenant_fields(fields)
        tenant = current.model_copy(update=checked)
        self.tenant_store.put(tenant)
        return tenant

    def tenant_remove(self, name: str) -> Tenant:
        """Remove a tenant and its API keys. Refused for ``default`` and while the tenant has
        unfinished jobs (they would lose their weight, caps and S3 prefix mid-run); its finished
        records stay until they expire, visible to no gateway key (the tenant's keys are gone)."""
        if name == DEFAULT_TENANT:
            raise InvalidInput([FieldError("name", DEFAULT_RULE)])
        tenant = self.tenant_get(name)
        live = self._live_job(name)
        if live is not None:
            raise InvalidInput([FieldError("name", LIVE_JOBS_RULE.format(job=live))])
        keys = self.key_store
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(keys.keys.tenants, name)
        keys.revoke_all(name, pipe)
        pipe.execute()
        return tenant

    def _live_job(self, tenant: str) -> str | None:
        """An unfinished job of ``tenant`` (None: it has none). Walks the unfinished states'
        indexes in pages; stops at the first one found."""
        store = self.falq.store
        for state in (s for s in STATES if s not in TERMINAL):
            offset = 0
            while True:
                ids = [m.decode() if isinstance(m, bytes) else str(m)
                       for m in self.redis.zrange(store.keys.state(state), offset, offset + 999)]
                if not ids:
                    break
                for job_id, rec in zip(ids, store.get_many(ids), strict=True):
                    if rec is not None and rec.tenant == tenant and not rec.terminal:
                        return job_id
                offset += len(ids)
        return None

    # --- API keys ---------------------------------------------------------------------------------
    def key_create(self, tenant: str, scopes: Iterable[str], label: str = "") -> tuple[str, ApiKey]:
        """A new gateway API key of ``tenant``: ``(the key, shown once; its stored record)``."""
        checked = validate_key_fields(scopes, label)
        self.tenant_get(tenant)
        token, made = self.key_store.create(tenant, checked.scopes, checked.label)
        if self.tenant_store.get(tenant) is None:  # removed meanwhile: no key may outlive its tenant
            self.key_store.revoke(tenant, made.id)
            raise TenantNotFound(f"no tenant named {tenant!r}")
        return token, made

    def key_list(self, tenant: str) -> list[ApiKey]:
        """The tenant's keys (id, label, scopes, created, last 4 characters; never the key)."""
        self.tenant_get(tenant)
        return self.key_store.list(tenant)

    def key_revoke(self, tenant: str, key_id: str) -> None:
        """Revoke a key by its id (``falq tenants key list``): the next request with it gets 401."""
        self.tenant_get(tenant)
        if not self.key_store.revoke(tenant, key_id.strip()):
            raise InvalidInput([FieldError("key_id", KEY_ID_RULE)])


__all__ = [
    "DEFAULT_RULE",
    "KEY_ID_RULE",
    "LIVE_JOBS_RULE",
    "MAX_TENANTS_RULE",
    "TENANT_EXISTS_RULE",
    "TENANT_NOTHING_RULE",
    "TenantAdmin",
]
