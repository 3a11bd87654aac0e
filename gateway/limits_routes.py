"""``GET/PUT /v1/limits`` and ``GET/PUT /v1/budget``: the fal account's guard rails over HTTP.

The same runtime configuration ``falq limits`` and ``falq budget`` change (the Redis hash
``{prefix}:limits:config``, see :mod:`falq.shared.limits`): every worker applies a change on
its next admission, with no restart.

Example::

    curl -X PUT -H "Authorization: Key $K" -d '{"rate": 20, "max_outstanding_per_endpoint":
         {"fal-ai/qwen-image-2/pro/edit": 4}}' http://gw/v1/limits
    curl -X PUT -H "Authorization: Key $K" -d '{"budget_usd": 50}' http://gw/v1/budget
"""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from falq.gateway.core import Gateway, Unprocessable, blocking, json_response, pydantic_detail, read_json
from falq.shared.endpoints import ENDPOINTS
from falq.shared.limits import (
    CONFIG_FIELDS,
    NO_BUDGET,
    Limiter,
    config_defaults,
    config_key,
    key_id,
    known_keys,
    read_config,
    spend_today,
    write_config,
)


class LimitsIn(BaseModel):
    """Body of ``PUT /v1/limits``: every field optional; ``null`` in the per-endpoint map removes a cap."""

    model_config = ConfigDict(extra="forbid")

    rate: float | None = Field(None, ge=0, allow_inf_nan=False)
    burst: int | None = Field(None, ge=1, le=1_000_000)
    max_outstanding: int | None = Field(None, ge=0, le=1_000_000)
    max_outstanding_per_endpoint: dict[str, int | None] | None = None
    resume: bool = False
    reset: bool = False

    @field_validator("max_outstanding_per_endpoint")
    @classmethod
    def _known(cls, caps: dict[str, int | None] | None) -> dict[str, int | None] | None:
        for ep, n in (caps or {}).items():
            if ep not in ENDPOINTS:
                raise ValueError(f"unknown endpoint {ep!r}; known: {', '.join(ENDPOINTS)}")
            if n is not None and not 0 <= n <= 1_000_000:
                raise ValueError(f"cap of {ep} must be from 0 to 1000000, or null to remove it")
        return caps


class BudgetIn(BaseModel):
    """Body of ``PUT /v1/budget``: dollars per UTC day, or ``null`` for no budget."""

    model_config = ConfigDict(extra="forbid")

    budget_usd: float | None = Field(..., ge=0, le=1e12, allow_inf_nan=False)


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _parse(field: str, raw: str) -> Any:
    try:
        if field == "max_outstanding_per_endpoint":
            value = json.loads(raw)
            return value if isinstance(value, dict) else {}
        if field == "budget_daily":
            return None if raw == NO_BUDGET else float(raw)
        return float(raw) if field == "rate" else int(float(raw))
    except ValueError:
        return None


def _config(gw: Gateway) -> dict[str, Any]:
    stored = read_config(gw.store.r, gw.prefix)
    defaults = config_defaults(gw.settings)
    return {f: _parse(f, stored.get(f, defaults[f])) for f in CONFIG_FIELDS}


def _limiters(gw: Gateway) -> list[tuple[Limiter, str]]:
    keys = known_keys(gw.store.r, gw.prefix)
    if gw.settings.fal_key_value():
        keys.setdefault(key_id(gw.settings.fal_key_value()), gw.settings.key_suffix())
    return [(Limiter(gw.store.r, gw.settings, kid=kid), suffix) for kid, suffix in sorted(keys.items())]


def limits_doc(gw: Gateway) -> dict[str, Any]:
    """The configuration and, per fal key (by its id and suffix, never the key), its live state."""
    return {"config": _config(gw), "keys": [lim.state(suffix).__dict__ for lim, suffix in _limiters(gw)]}


def apply_limits(gw: Gateway, change: LimitsIn) -> dict[str, Any]:
    changes: dict[str, str] = {}
    if change.rate is not None:
        changes["rate"] = repr(float(change.rate))
    if change.burst is not None:
        changes["burst"] = str(change.burst)
    if change.max_outstanding is not None:
        changes["max_outstanding"] = str(change.max_outstanding)
    if change.reset:
        gw.store.r.delete(config_key(gw.prefix))
    if change.max_outstanding_per_endpoint is not None:
        caps = dict(_config(gw)["max_outstanding_per_endpoint"] or {})
        for ep, n in change.max_outstanding_per_endpoint.items():
            if n is None:
                caps.pop(ep, None)
            else:
                caps[ep] = n
        changes["max_outstanding_per_endpoint"] = json.dumps(caps, sort_keys=True)
    write_config(gw.store.r, gw.prefix, changes)
    resumed = [suffix for lim, suffix in _limiters(gw) if change.resume and lim.resume()]
    return {**limits_doc(gw), "resumed": resumed}


def budget_doc(gw: Gateway) -> dict[str, Any]:
    day, spent = spend_today(gw.store.r, gw.prefix)
    cap = _config(gw)["budget_daily"]
    paused = sum(lim.state().waiting["budget"] for lim, _ in _limiters(gw))
    remaining = None if cap is None else round(max(0.0, cap - spent), 6)
    return {"day": day, "spent_usd": round(spent, 6), "budget_usd": cap, "remaining_usd": remaining,
            "jobs_paused": paused}


def set_budget(gw: Gateway, change: BudgetIn) -> dict[str, Any]:
    value = NO_BUDGET if change.budget_usd is None else repr(float(change.budget_usd))
    write_config(gw.store.r, gw.prefix, {"budget_daily": value})
    return budget_doc(gw)


async def get_limits(request: Request) -> Response:
    return json_response(200, await blocking(limits_doc, _gw(request)))


async def put_limits(request: Request) -> Response:
    try:
        change = LimitsIn.model_validate(await read_json(request))
    except pydantic.ValidationError as exc:
        raise Unprocessable(pydantic_detail(exc)) from None
    return json_response(200, await blocking(apply_limits, _gw(request), change))


async def get_budget(request: Request) -> Response:
    return json_response(200, await blocking(budget_doc, _gw(request)))


async def put_budget(request: Request) -> Response:
    try:
        change = BudgetIn.model_validate(await read_json(request))
    except pydantic.ValidationError as exc:
        raise Unprocessable(pydantic_detail(exc)) from None
    if change.budget_usd is not None and not math.isfinite(change.budget_usd):
        raise Unprocessable.field(["body", "budget_usd"], "must be a finite number")
    return json_response(200, await blocking(set_budget, _gw(request), change))
