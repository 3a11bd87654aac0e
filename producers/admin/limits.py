"""The global limits and the daily budget of the fal account (``falq limits``, ``falq budget``,
``/v1/limits``, ``/v1/budget``).

The rules of a change are :mod:`falq.shared.limits.fields`' (pydantic models); this part reads
and writes the configuration in Redis (``{prefix}:limits:config``,
:mod:`falq.shared.limits.store`), which every worker applies on its next admission, with no restart.

Example::

    admin.limits_set(rate=20, burst=1, endpoint_caps={"fal-ai/qwen-image-2/pro/edit": 4})
    admin.limits_set(rate=-1)      # InvalidInput: rate: must be 0 (unlimited) or a number from 0.001 to 1000000
    admin.budget_set(50)           # BudgetView(day=..., spent_usd=..., budget_usd=50.0, ...)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from falq.producers.admin.base import AdminBase
from falq.shared.limits.fields import LimitsChange, validate_budget, validate_limits
from falq.shared.limits.store import (
    CONFIG_FIELDS,
    NO_BUDGET,
    KeyState,
    Limiter,
    config_defaults,
    config_key,
    key_id,
    known_keys,
    read_config,
    spend_today,
    write_config,
)

#: Where a stored field came from, as ``falq limits show`` says it.
SOURCE_REDIS = "redis"
SOURCE_DEFAULT = "unseeded (this shell's FALQ_* default)"


@dataclass(frozen=True)
class LimitsView:
    """The runtime configuration (each field's value and where it came from) and every key's state."""

    config: dict[str, Any]
    sources: dict[str, str]
    keys: list[KeyState]

    def as_json(self) -> dict[str, Any]:
        """``{"config": {field: value}, "keys": [...]}`` (what ``GET /v1/limits`` answers)."""
        return {"config": dict(self.config), "keys": [dict(k.__dict__) for k in self.keys]}


@dataclass(frozen=True)
class LimitsResult:
    """What a change did: the fields written (as stored), whether it reset, the keys resumed."""

    view: LimitsView
    written: dict[str, str]
    reset: bool
    resume: bool
    resumed: list[str]

    def as_json(self) -> dict[str, Any]:
        return {**self.view.as_json(), "resumed": list(self.resumed)}


@dataclass(frozen=True)
class BudgetView:
    """Spend reserved today (UTC, by Redis' clock) against the daily budget."""

    day: str
    spent_usd: float
    budget_usd: float | None
    remaining_usd: float | None
    jobs_paused: int

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LimitsAdmin(AdminBase):
    """The :class:`~falq.producers.admin.Admin` methods ``limits_*``, ``budget_*`` and ``config``."""

    def limiters(self) -> list[tuple[Limiter, str]]:
        """A limiter per fal key a worker registered (and this process's own key), with its suffix."""
        keys = known_keys(self.redis, self.prefix)
        if self.settings.fal_key_value():
            keys.setdefault(key_id(self.settings.fal_key_value()), self.settings.key_suffix())
        return [(Limiter(self.redis, self.settings, kid=kid), suffix) for kid, suffix in sorted(keys.items())]

    def config(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The runtime configuration, parsed, and each field's source (Redis or this process's default)."""
        stored = read_config(self.redis, self.prefix)
        defaults = config_defaults(self.settings)
        values = {f: _parse(f, stored.get(f, defaults[f])) for f in CONFIG_FIELDS}
        sources = {f: SOURCE_REDIS if f in stored else SOURCE_DEFAULT for f in CONFIG_FIELDS}
        return values, sources

    def limits_show(self) -> LimitsView:
        """The configuration and, per fal key (its id and suffix, never the key), its live state."""
        values, sources = self.config()
        return LimitsView(values, sources, [lim.state(suffix) for lim, suffix in self.limiters()])

    def limits_set(self, *, rate: float | str | None = None, burst: int | str | None = None,
                   max_outstanding: int | str | None = None,
                   endpoint_caps: Mapping[str, int | str | None] | Iterable[str] | None = None,
                   resume: bool = False, reset: bool = False) -> LimitsResult:
        """Validate and apply a change (see :func:`~falq.shared.limits.fields.validate_limits`);
        every worker applies it at once.

        ``reset`` forgets the stored configuration first (workers re-seed it from ``FALQ_*``);
        the other fields are then written on top; ``resume`` lifts every key's pause.
        """
        return self.apply_limits(validate_limits(rate=rate, burst=burst, max_outstanding=max_outstanding,
                                                 endpoint_caps=endpoint_caps, resume=resume, reset=reset))

    def apply_limits(self, change: LimitsChange) -> LimitsResult:
        """Apply an already validated :class:`~falq.shared.limits.fields.LimitsChange`."""
        written: dict[str, str] = {}
        if change.rate is not None:
            written["rate"] = repr(float(change.rate))
        if change.burst is not None:
            written["burst"] = str(change.burst)
        if change.max_outstanding is not None:
            written["max_outstanding"] = str(change.max_outstanding)
        if change.reset:
            self.redis.delete(config_key(self.prefix))
        if change.endpoint_caps is not None:
            current = self.config()[0]["max_outstanding_per_endpoint"]
            caps = dict(current) if isinstance(current, dict) else {}
            for ep, n in change.endpoint_caps.items():
                if n is None:
                    caps.pop(ep, None)
                else:
                    caps[ep] = n
            written["max_outstanding_per_endpoint"] = json.dumps(caps, sort_keys=True)
        write_config(self.redis, self.prefix, written)
        resumed = [suffix for lim, suffix in self.limiters() if change.resume and lim.resume()]
        return LimitsResult(self.limits_show(), written, change.reset, change.resume, resumed)

    def budget_show(self) -> BudgetView:
        """Spend reserved today, the daily budget, what remains, and how many jobs wait for it."""
        day, spent = spend_today(self.redis, self.prefix)
        cap = self.config()[0]["budget_daily"]
        paused = sum(lim.state().waiting["budget"] for lim, _ in self.limiters())
        remaining = None if cap is None else round(max(0.0, cap - spent), 6)
        return BudgetView(day=day, spent_usd=round(spent, 6), budget_usd=cap, remaining_usd=remaining,
                          jobs_paused=paused)

    def budget_set(self, usd: float | str | None) -> BudgetView:
        """Set the daily budget (dollars per UTC day), or remove it with ``None``."""
        self.apply_budget(validate_budget(usd))
        return self.budget_show()

    def apply_budget(self, usd: float | None) -> None:
        """Write an already validated budget (``None``: no budget)."""
        write_config(self.redis, self.prefix, {"budget_daily": NO_BUDGET if usd is None else repr(float(usd))})


def _parse(name: str, raw: str) -> Any:
    """A stored configuration field as a value; ``None`` (``{}`` for the caps) when it does not parse."""
    try:
        if name == "max_outstanding_per_endpoint":
            value = json.loads(raw)
            return value if isinstance(value, dict) else {}
        if name == "budget_daily":
            return None if raw == NO_BUDGET else float(raw)
        return float(raw) if name == "rate" else int(float(raw))
    except (ValueError, OverflowError):
        return {} if name == "max_outstanding_per_endpoint" else None


__all__ = ["SOURCE_DEFAULT", "SOURCE_REDIS", "BudgetView", "LimitsAdmin", "LimitsResult", "LimitsView"]
