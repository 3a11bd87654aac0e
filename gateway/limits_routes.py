"""``GET/PUT /v1/limits`` and ``GET/PUT /v1/budget``: the fal account's guard rails over HTTP.

A thin layer over :class:`falq.producers.admin.Admin`, the service ``falq limits`` and
``falq budget`` use too: the body is read as JSON, handed to the service, which checks it
(one set of rules for both; a bad value raises ``InvalidInput``, answered 422 with one
``detail`` entry per broken rule, ``loc`` naming the field), and its answer is returned.
The runtime configuration is the Redis hash ``{prefix}:limits:config`` (see
:mod:`falq.shared.limits`): every worker applies a change on its next admission, with no restart.

Example::

    curl -X PUT -H "Authorization: Key $K" -d '{"rate": 20, "max_outstanding_per_endpoint":
         {"fal-ai/qwen-image-2/pro/edit": 4}}' http://gw/v1/limits
    curl -X PUT -H "Authorization: Key $K" -d '{"budget_usd": 50}' http://gw/v1/budget
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from falq.gateway.core import Gateway, blocking, json_response, read_json
from falq.producers.admin import (
    MAX_BUDGET_USD,
    MAX_BURST,
    MAX_ENDPOINT_CAP,
    MAX_OUTSTANDING,
    Admin,
    budget_request,
    limits_request,
)


class LimitsIn(BaseModel):
    """Body of ``PUT /v1/limits``: every field optional, but a change must change something;
    ``null`` in the per-endpoint map removes a cap.

    The OpenAPI document's picture of the body; the body itself is checked by
    :func:`falq.producers.admin.limits_request` (same bounds).
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
    :func:`falq.producers.admin.budget_request`)."""

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
    return json_response(200, await blocking(limits_doc, admin(request)))


async def put_limits(request: Request) -> Response:
    change = limits_request(await read_json(request))  # InvalidInput -> 422 (gateway.app)
    done = await blocking(admin(request).apply_limits, change)
    return json_response(200, done.as_json())


async def get_budget(request: Request) -> Response:
    return json_response(200, await blocking(budget_doc, admin(request)))


async def put_budget(request: Request) -> Response:
    usd = budget_request(await read_json(request))
    service = admin(request)
    await blocking(service.apply_budget, usd)
    return json_response(200, await blocking(budget_doc, service))
