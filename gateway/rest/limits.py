"""``/v1/limits``, ``/v1/budget`` and ``/v1/tenants``: the fal account's guard rails over HTTP.

* ``GET/PUT /v1/limits``, ``GET/PUT /v1/budget`` -- the global limits and the daily budget
* ``GET /v1/tenants`` (the operator: every tenant; any other ``read`` key: its own),
  ``POST /v1/tenants`` (``{name, weight?, max_outstanding?, rate?, budget_usd?, endpoints?, s3_prefix?}``)
* ``GET/PATCH/DELETE /v1/tenants/{name}`` (another tenant's name answers 404 to a non-operator,
  as an unknown one); DELETE is refused (422) for ``default`` and while the tenant has unfinished jobs
* ``GET/POST /v1/tenants/{name}/keys`` (POST ``{scopes, label?}`` answers the key, once) and
  ``DELETE /v1/tenants/{name}/keys/{key_id}``

Limits, budget and changes of tenants and keys concern every tenant, so they need the
*operator*: an ``admin`` key of the ``default`` tenant (every ``FALQ_API_KEYS`` key); others get 403.

A thin layer over :class:`falq.producers.admin.Admin`, the service ``falq limits`` and
``falq budget`` use too: the body is read as JSON, handed to the service, which checks it
(one set of rules for both; a bad value raises ``InvalidInput``, answered 422 with one
``detail`` entry per broken rule, ``loc`` naming the field), and its answer is returned.
The runtime configuration is the Redis hash ``{prefix}:limits:config`` (see
:mod:`falq.shared.limits.store`): every worker applies a change on its next admission, with no restart.

Example::

    curl -X PUT -H "Authorization: Key $K" -d '{"rate": 20, "max_outstanding_per_endpoint":
         {"fal-ai/qwen-image-2/pro/edit": 4}}' http://gw/v1/limits
    curl -X PUT -H "Authorization: Key $K" -d '{"budget_usd": 50}' http://gw/v1/budget
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from falq.gateway.auth import require
from falq.gateway.core import Gateway, blocking, json_response, read_json
from falq.producers.admin import Admin
from falq.shared.errors import FieldError, InvalidInput, TenantNotFound
from falq.shared.limits.fields import (
    MAX_BUDGET_USD,
    MAX_BURST,
    MAX_ENDPOINT_CAP,
    MAX_OUTSTANDING,
    budget_request,
    limits_request,
)
from falq.shared.tenants.fields import tenant_request
from falq.shared.tenants.store import MAX_WEIGHT


class LimitsIn(BaseModel):
    """Body of ``PUT /v1/limits``: every field optional, but a change must change something;
    ``null`` in the per-endpoint map removes a cap.

    The OpenAPI document's picture of the body; the body itself is checked by
    :func:`falq.shared.limits.fields.limits_request` (same bounds).
    """

    model_config = ConfigDict(extra="forbid")

    rate: float | None = Field(None, ge=0, allow_inf_nan=False)
    burst: int | None = Field(None, ge=1, le=MAX_BURST)
    max_outstanding: int | None = Field(None, ge=0, le=MAX_OUTSTANDING)
    max_outstanding_per_endpoint: dict[str, int | None] | None = Field(
        None, description=f"endpoint -> cap from 0 to {MAX_ENDPOINT_CAP} (null removes the cap)")
    resume: bool = False
    reset: bool = False


class BudgetIn(BaseModel):
    """Body of ``PUT /v1/budget``: dollars per UTC day, or ``null`` for no budget (checked by
    :func:`falq.shared.limits.fields.budget_request`)."""

    model_config = ConfigDict(extra="forbid")

    budget_usd: float | None = Field(..., ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)


def admin(request: Request) -> Admin:
    """The administration service over this gateway's Redis and settings."""
    gw: Gateway = request.app.state.gateway
    return Admin(gw.falq, gw.settings)


def limits_doc(service: Admin) -> dict[str, Any]:
    """The configuration and, per fal key (by its id and suffix, never the key), its live state."""
    return service.limits_show().as_json()


def budget_doc(service: Admin) -> dict[str, Any]:
    return service.budget_show().as_json()


async def get_limits(request: Request) -> Response:
    require(request, "operator")
    return json_response(200, await blocking(limits_doc, admin(request)))


async def put_limits(request: Request) -> Response:
    require(request, "operator")
    change = limits_request(await read_json(request))  # InvalidInput -> 422 (gateway.app)
    done = await blocking(admin(request).apply_limits, change)
    return json_response(200, done.as_json())


async def get_budget(request: Request) -> Response:
    require(request, "operator")
    return json_response(200, await blocking(budget_doc, admin(request)))


async def put_budget(request: Request) -> Response:
    require(request, "operator")
    usd = budget_request(await read_json(request))
    service = admin(request)
    await blocking(service.apply_budget, usd)
    return json_response(200, await blocking(budget_doc, service))


# --- tenants ----------------------------------------------------------------------------------------


class TenantIn(BaseModel):
    """Body of ``POST /v1/tenants`` (``PATCH`` takes the same fields but ``name``, all optional).

    The OpenAPI document's picture; the body is checked by
    :func:`falq.shared.tenants.fields.validate_tenant_fields` (same rules as ``falq tenants``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT)
    max_outstanding: int | None = Field(None, ge=0, le=MAX_OUTSTANDING)
    rate: float | None = Field(None, ge=0)
    budget_usd: float | None = Field(None, ge=0, le=MAX_BUDGET_USD)
    endpoints: list[str] = Field(default_factory=list, description="empty: every endpoint")
    s3_prefix: str = ""
    priority: Literal["normal", "low"] | None = Field(
        None, description="X-Fal-Queue-Priority of its jobs (null: the lane's setting); low waits behind every "
                          "customer's normal requests on fal's shared per-endpoint queue")


async def list_tenants(request: Request) -> Response:
    who = require(request, "read")
    found = await blocking(admin(request).tenants_list)
    return json_response(200, {"tenants": [t.model_dump(mode="json") for t in found
                                           if who.operator or t.name == who.tenant]})


async def create_tenant(request: Request) -> Response:
    require(request, "operator")
    name, fields = tenant_request(await read_json(request), with_name=True)
    tenant = await blocking(admin(request).tenant_add, str(name), **fields)  # a str: tenant_request checked it
    return json_response(201, tenant.model_dump(mode="json"))


async def get_tenant(request: Request) -> Response:
    who = require(request, "read")
    name = request.path_params["name"]
    if not who.operator and name != who.tenant:  # another tenant's name: as an unknown one
        raise TenantNotFound(f"no tenant named {name!r}")
    tenant = await blocking(admin(request).tenant_get, name)
    return json_response(200, tenant.model_dump(mode="json"))


async def patch_tenant(request: Request) -> Response:
    require(request, "operator")
    _, fields = tenant_request(await read_json(request), with_name=False)
    tenant = await blocking(admin(request).tenant_set, request.path_params["name"], **fields)
    return json_response(200, tenant.model_dump(mode="json"))


async def delete_tenant(request: Request) -> Response:
    require(request, "operator")
    tenant = await blocking(admin(request).tenant_remove, request.path_params["name"])
    return json_response(200, {"removed": tenant.name})


async def list_keys(request: Request) -> Response:
    require(request, "operator")
    found = await blocking(admin(request).key_list, request.path_params["name"])
    return json_response(200, {"keys": [k.as_json() for k in found]})


async def create_key(request: Request) -> Response:
    require(request, "operator")
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"scopes", "label"}:
        raise InvalidInput([FieldError("", "must be a JSON object with scopes (a list) and optionally label")])
    scopes = body.get("scopes")
    if not isinstance(scopes, list):
        raise InvalidInput([FieldError("scopes", "must be a list of submit, read, admin")])
    token, made = await blocking(admin(request).key_create, request.path_params["name"], scopes,
                                 body.get("label", ""))
    return json_response(201, {**made.as_json(), "key": token}, headers={"cache-control": "no-store"})


async def revoke_key(request: Request) -> Response:
    require(request, "operator")
    await blocking(admin(request).key_revoke, request.path_params["name"], request.path_params["key_id"])
    return json_response(200, {"revoked": request.path_params["key_id"]})
