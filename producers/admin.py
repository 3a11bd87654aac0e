"""falq's administration service: limits, budget, retries, cancels, dead letters and callbacks.

The ``falq`` CLI (``falq limits``, ``falq budget``, ``falq retry``, ``falq cancel``,
``falq jobs --state failed --errors``, ``falq callbacks``) and the HTTP gateway (``/v1/limits``, ``/v1/budget``,
``/v1/jobs/{id}/retry``, ``/v1/retry-failed``, ``/v1/jobs/{id}/cancel`` and fal's cancel) are
thin layers over :class:`Admin`: they parse arguments or JSON, call it, and render the answer.
Every value is checked here, once; a bad one raises
:class:`~falq.shared.errors.InvalidInput` with one :class:`~falq.shared.errors.FieldError`
per broken rule (the CLI prints ``error: field: rule`` and exits 2, the gateway answers 422
with the same field and text in ``detail``). Nothing is written unless every value is valid.

The rules (numbers may be given as JSON numbers or as their decimal text, as the CLI passes
them; ``true``/``false`` are never numbers; ``nan`` and ``inf`` never pass)::

    rate                          0 (unlimited) or 0.001 to 1000000 submissions per second per fal key
    burst                         an integer from 1 to 1000000
    max_outstanding               an integer from 0 to 1000000 (0: unlimited)
    max_outstanding_per_endpoint  known endpoint -> an integer from 0 to 1000000, or null/none
                                  (removes that endpoint's cap); as text: ENDPOINT=N|none
    resume, reset                 true or false
    (a change)                    must change something
    budget_usd                    a number of dollars from 0 to 1000000000000, or null (no budget)
    since                         a duration (30s, 10m, 2h, 1d), an ISO date/time or epoch
                                  seconds; a finite time, never blank
    state                         one of falq's job states
    limit                         an integer from 1 to 100000
    job ids                       at least one
    (a callback redelivery)       each job must exist, have a callback_url and have ended;
                                  ``since`` only with the failed ones
    tenant name                   1-40 characters: lowercase letters, digits, '-' or '_', starting
                                  with a letter or digit; at most 200 tenants; ``default`` always
                                  exists and cannot be removed
    weight                        a number above 0, at most 1000
    max_outstanding (tenant)      an integer from 0 to 1000000, or null/none (no cap of its own)
    rate (tenant)                 submissions per second from 0 to 1000000, or null/none
    budget_usd (tenant)           dollars per UTC day from 0 to 1000000000000, or null/none
    endpoints                     a list of known endpoints; empty: every endpoint
    priority (tenant)             normal or low, or null/none (the lane's FALQ_FAL_PRIORITY_*)
    s3_prefix                     empty (the tenant's name) or '/'-separated parts of letters,
                                  digits, '.', '_', '-' (no '..'), at most 200 characters
    (a tenant removal)            refused while the tenant has unfinished jobs (cancel them or
                                  let them end); its finished records stay, its API keys go
    scopes                        one or more of submit, read, admin
    label                         at most 100 printable characters

The configuration lives in Redis (``{prefix}:limits:config``, :mod:`falq.shared.limits.store`);
every worker applies a change on its next admission, with no restart.

Example::

    admin = Admin(Falq())
    admin.limits_set(rate=20, burst=1, endpoint_caps={"fal-ai/qwen-image-2/pro/edit": 4})
    admin.limits_set(rate=-1)      # InvalidInput: rate: must be 0 (unlimited) or a number from 0.001 to 1000000
    admin.budget_set(50)           # BudgetView(day=..., spent_usd=..., budget_usd=50.0, ...)
    [out] = admin.retry(["8f3e..."]); out.retried   # also for a job only the catalogue holds
    out.reason                       # when not retried, e.g. 'it completed: a completed job is not run again ...'
    admin.cancel("8f3e...").outcome  # 'cancelled' | 'requested' | 'final' (an archived job: 'final')
    admin.callbacks_pending()        # [CallbackView(job_id=..., tries=2, next_at=..., ...)]
    admin.redeliver_failed()         # every failed callback queued again (same delivery ids)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from falq.producers.client import Falq
from falq.shared.callbacks.outbox import CallbackView, Outbox
from falq.shared.errors import FieldError, InvalidInput, JobNotFound, TenantNotFound
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.jobs.records import STATES, TERMINAL, JobRecord
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
from falq.shared.settings import Settings
from falq.shared.since import parse_since
from falq.shared.tenants.store import (
    DEFAULT_TENANT,
    MAX_TENANTS,
    MAX_WEIGHT,
    NAME_RULE,
    SCOPES,
    ApiKey,
    ApiKeyStore,
    Tenant,
    TenantStore,
    valid_name,
)

MAX_BURST = 1_000_000
MAX_OUTSTANDING = 1_000_000
MAX_ENDPOINT_CAP = 1_000_000
MAX_BUDGET_USD = 1e12
MAX_LIMIT = 100_000
#: Where a stored field came from, as ``falq limits show`` says it.
SOURCE_REDIS = "redis"
SOURCE_DEFAULT = "unseeded (this shell's FALQ_* default)"

#: The fields of a limits change (what ``PUT /v1/limits`` takes).
LIMITS_FIELDS = ("rate", "burst", "max_outstanding", "max_outstanding_per_endpoint", "resume", "reset")
BUDGET_FIELDS = ("budget_usd",)

# --- the rules, in words (the one place they are written) ------------------------------------------
#: Below this a token takes hours and the limiter's wait arithmetic loses meaning.
MIN_RATE = 0.001
RATE_RULE = f"must be 0 (unlimited) or a number from {MIN_RATE} to 1000000"
BURST_RULE = f"must be an integer from 1 to {MAX_BURST}"
OUTSTANDING_RULE = f"must be an integer from 0 to {MAX_OUTSTANDING}"
CAPS_RULE = "must be an object of endpoint -> cap (null removes a cap)"
CAP_RULE = f"cap must be an integer from 0 to {MAX_ENDPOINT_CAP}, or null/none to remove it"
CAP_TEXT_RULE = "use ENDPOINT=N or ENDPOINT=none"
FLAG_RULE = "must be true or false"
NOTHING_RULE = "nothing to change: give rate, burst, max_outstanding, max_outstanding_per_endpoint, resume or reset"
BUDGET_RULE = f"must be a number of dollars from 0 to {MAX_BUDGET_USD:.0f}"
SINCE_RULE = "must be a duration (30s, 10m, 2h, 1d), an ISO date/time or epoch seconds"
STATE_RULE = f"must be one of {', '.join(STATES)}"
LIMIT_RULE = f"must be an integer from 1 to {MAX_LIMIT}"
JOB_IDS_RULE = "must name at least one job"
OBJECT_RULE = "must be a JSON object"
NO_CALLBACK_RULE = "has no callback_url"
NOT_ENDED_RULE = "has not ended yet (its callback is sent when it does)"
ONLY_FAILED_RULE = "only with the failed callbacks"
REQUIRED_RULE = "is required"
WEIGHT_RULE = f"must be a number above 0 and at most {MAX_WEIGHT:g}"
TENANT_CAP_RULE = f"must be an integer from 0 to {MAX_OUTSTANDING}, or null/none (no cap of its own)"
TENANT_RATE_RULE = "must be a number of submissions per second from 0 to 1000000, or null/none (no cap of its own)"
TENANT_BUDGET_RULE = f"must be a number of dollars from 0 to {MAX_BUDGET_USD:.0f}, or null/none (no budget of its own)"
ENDPOINTS_RULE = f"must be a list of known endpoints (empty: all); known: {', '.join(ENDPOINTS)}"
S3_PREFIX_RULE = ("must be empty or at most 200 characters of '/'-separated parts made of letters, digits,"
                  " '.', '_' and '-' (no '..', no empty part)")
TENANT_EXISTS_RULE = "a tenant of this name exists already (change it with falq tenants set)"
MAX_TENANTS_RULE = f"at most {MAX_TENANTS} tenants (the tenant is a metric label; labels must stay bounded)"
DEFAULT_RULE = "the tenant 'default' cannot be removed"
LIVE_JOBS_RULE = "has unfinished jobs (e.g. {job}); cancel them or let them end, then remove the tenant"
TENANT_NOTHING_RULE = ("nothing to change: give weight, max_outstanding, rate, budget_usd, endpoints, s3_prefix "
                       "or priority")
SCOPES_RULE = f"must name at least one of {', '.join(SCOPES)}, each once"
LABEL_RULE = "must be at most 100 printable characters"
KEY_ID_RULE = "no API key with this id for the tenant (see falq tenants key list)"
# Why a retry left a job as it was (RetryOutcome.reason): the CLI prints it, the gateway's 409 says it.
#: The states the live retry (:meth:`Falq.retry`) runs again; moderated jobs are failed ones.
RETRIED_STATES = ("failed",)
COMPLETED_REASON = ("it completed: a completed job is not run again (fal made and billed its images; "
                    "submit a new job for new ones)")
NOT_FAILED_REASON = "it is {state}: only failed jobs are run again"
LOST_INPUT_REASON = ("its input is not kept whole in the catalogue ({path}: {what}); "
                     "submit it again as a new job with its full input")
GONE_TENANT_REASON = "its tenant {tenant!r} no longer exists"
DENIED_ENDPOINT_REASON = "its tenant {tenant!r} may no longer use {endpoint}"
GONE_ENDPOINT_REASON = "its endpoint {endpoint} is no longer one falq runs"
GONE_BATCH_REASON = "its batch {batch} is no longer kept (its counts could not follow the job)"
GONE_PARENT_REASON = "its parent job {parent} is no longer kept (neither in Redis nor in the catalogue)"
NO_CALLBACK_WARNING = ("its callback URL is not kept in the catalogue (only its host, {host}): "
                       "this run sends no callback")
#: How long a record brought back from the catalogue stays in Redis if nothing moves it on (a
#: parent revived for its child's release; a retry cut off between the revive and the retry).
REVIVE_TTL_MIN_S = 3600
#: The settings of a tenant a change may give (``PATCH /v1/tenants/{name}``, ``falq tenants set``).
TENANT_FIELDS = ("weight", "max_outstanding", "rate", "budget_usd", "endpoints", "s3_prefix", "priority")
TENANT_PRIORITY_RULE = ("must be normal or low, or null/none (the lane's setting); low waits behind every "
                        "customer's normal requests on fal's shared per-endpoint queue")
_S3_PART = re.compile(r"[A-Za-z0-9._-]+")
_NULL_TEXT = ("none", "null")

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _number(value: Any) -> float | None:
    """A finite number from a JSON number or its decimal text; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            f = float(value)
        except OverflowError:
            return None
    elif isinstance(value, float):
        f = value
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        f = float(value)
    else:
        return None
    return f if math.isfinite(f) else None


def _integer(value: Any, lo: int, hi: int) -> int | None:
    """An integer in ``lo..hi`` (an integral number or its text); None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        f = _number(value)
        if f is None or not f.is_integer():
            return None
        n = int(f)
    return n if lo <= n <= hi else None


# --- validated changes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LimitsChange:
    """A validated change of the runtime limits (``None``: leave the field as it is).

    ``endpoint_caps`` maps an endpoint to its new cap, ``None`` removing the cap.
    """

    rate: float | None = None
    burst: int | None = None
    max_outstanding: int | None = None
    endpoint_caps: dict[str, int | None] | None = None
    resume: bool = False
    reset: bool = False


def validate_limits(*, rate: Any = None, burst: Any = None, max_outstanding: Any = None,
                    endpoint_caps: Mapping[str, Any] | Iterable[str] | None = None, resume: Any = False,
                    reset: Any = False, errors: Iterable[FieldError] = ()) -> LimitsChange:
    """Check a limits change; raise :class:`InvalidInput` listing every broken rule.

    ``endpoint_caps`` is a mapping endpoint -> cap (JSON) or ``ENDPOINT=N|none`` texts (CLI).
    ``errors`` are problems the caller already found (unknown JSON fields); they are
    reported first, with the rest.
    """
    errs = list(errors)
    checked: dict[str, Any] = {}
    if rate is not None:
        checked["rate"] = r = _number(rate)
        if r is None or r < 0 or 0 < r < MIN_RATE or r > 1_000_000:
            errs.append(FieldError("rate", RATE_RULE))
    if burst is not None:
        checked["burst"] = _integer(burst, 1, MAX_BURST)
        if checked["burst"] is None:
            errs.append(FieldError("burst", BURST_RULE))
    if max_outstanding is not None:
        checked["max_outstanding"] = _integer(max_outstanding, 0, MAX_OUTSTANDING)
        if checked["max_outstanding"] is None:
            errs.append(FieldError("max_outstanding", OUTSTANDING_RULE))
    caps = None if endpoint_caps is None else _caps(endpoint_caps, errs)
    for name, flag in (("resume", resume), ("reset", reset)):
        if not isinstance(flag, bool):
            errs.append(FieldError(name, FLAG_RULE))
    if errs:
        raise InvalidInput(errs)
    change = LimitsChange(rate=checked.get("rate"), burst=checked.get("burst"),
                          max_outstanding=checked.get("max_outstanding"), endpoint_caps=caps,
                          resume=bool(resume), reset=bool(reset))
    if change == LimitsChange():
        raise InvalidInput([FieldError("", NOTHING_RULE)])
    return change


def _caps(raw: Mapping[str, Any] | Iterable[str], errs: list[FieldError]) -> dict[str, int | None]:
    name = "max_outstanding_per_endpoint"
    pairs: list[tuple[Any, Any]] = []
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, str) or not isinstance(raw, Iterable):
        errs.append(FieldError(name, CAPS_RULE))
    else:
        for item in raw:
            ep, sep, n = str(item).partition("=")
            if not sep or not ep.strip():
                errs.append(FieldError(name, f"{item!r}: {CAP_TEXT_RULE}"))
                continue
            pairs.append((ep.strip(), None if n.strip().lower() in ("none", "null") else n))
    caps: dict[str, int | None] = {}
    for ep, n in pairs:
        if not isinstance(ep, str) or ep not in ENDPOINTS:
            errs.append(FieldError(name, f"{ep!r}: unknown endpoint; known: {', '.join(ENDPOINTS)}"))
            continue
        cap = None if n is None else _integer(n, 0, MAX_ENDPOINT_CAP)
        if n is not None and cap is None:
            errs.append(FieldError(name, f"{ep!r}: {CAP_RULE}"))
            continue
        caps[ep] = cap
    return caps


def _object(doc: Any, allowed: tuple[str, ...]) -> tuple[dict[str, Any], list[FieldError]]:
    if not isinstance(doc, dict):
        raise InvalidInput([FieldError("", OBJECT_RULE)])
    unknown = [FieldError(str(k), f"unknown field; known: {', '.join(allowed)}") for k in doc if k not in allowed]
    return doc, unknown


def limits_request(doc: Any) -> LimitsChange:
    """A limits change from a JSON document (``PUT /v1/limits``): :func:`validate_limits` plus
    the document's shape (an object of the :data:`LIMITS_FIELDS`; ``null`` leaves a field as it is)."""
    body, errors = _object(doc, LIMITS_FIELDS)
    caps = body.get("max_outstanding_per_endpoint")
    if caps is not None and not isinstance(caps, dict):
        errors.append(FieldError("max_outstanding_per_endpoint", CAPS_RULE))
        caps = None
    flags = {k: False if body.get(k) is None else body[k] for k in ("resume", "reset")}
    return validate_limits(rate=body.get("rate"), burst=body.get("burst"), max_outstanding=body.get("max_outstanding"),
                           endpoint_caps=caps, errors=errors, **flags)


def validate_budget(usd: Any) -> float | None:
    """The daily budget in dollars (``None``: no budget); raise :class:`InvalidInput` if invalid."""
    if usd is None:
        return None
    value = _number(usd)
    if value is None or not 0 <= value <= MAX_BUDGET_USD:
        raise InvalidInput([FieldError("budget_usd", BUDGET_RULE)])
    return value


def budget_request(doc: Any) -> float | None:
    """The budget from a JSON document (``PUT /v1/budget``): ``{"budget_usd": dollars | null}``."""
    body, errors = _object(doc, BUDGET_FIELDS)
    value = None
    if "budget_usd" not in body:
        errors.append(FieldError("budget_usd", REQUIRED_RULE))
    else:
        try:
            value = validate_budget(body["budget_usd"])
        except InvalidInput as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidInput(errors)
    return value


def validate_since(since: Any) -> float | None:
    """Epoch seconds from a ``since`` (text, or a number of epoch seconds); ``None`` stays ``None``."""
    if since is None:
        return None
    value: float | None
    if isinstance(since, str):
        try:
            value = parse_since(since) if since.strip() else None
        except (InvalidInput, OverflowError, ValueError):
            value = None
    else:
        value = _number(since)
    if value is None or not math.isfinite(value):
        raise InvalidInput([FieldError("since", SINCE_RULE)])
    return value


# --- what the service answers ---------------------------------------------------------------------------


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


@dataclass(frozen=True)
class RetryOutcome:
    """One job of a retry: its record now, whether this call queued it again, why not
    (``reason``, when ``retried`` is false) and what the new run lacks (``warning``: a job
    brought back from the catalogue has no callback URL, see :meth:`Admin.retry`)."""

    record: JobRecord
    retried: bool
    reason: str = ""
    warning: str = ""


@dataclass(frozen=True)
class CancelOutcome:
    """A cancel: ``cancelled`` (at once), ``requested`` (its worker cancels it at fal) or
    ``final`` (it had already ended; nothing was changed)."""

    record: JobRecord
    outcome: Literal["cancelled", "requested", "final"]


def _nullable(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NULL_TEXT)


def validate_tenant_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check the given settings of a tenant (any of :data:`TENANT_FIELDS`); raise
    :class:`InvalidInput` listing every broken rule. Returns them as stored (None: no cap).

    Numbers may be JSON numbers or their text (the CLI); ``none``/``null`` clear a cap;
    ``endpoints`` is a list (``None``: every endpoint).

    Example::

        validate_tenant_fields({"weight": "2", "max_outstanding": "none"})
        # {'weight': 2.0, 'max_outstanding': None}
    """
    errs: list[FieldError] = []
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "weight":
            w = _number(value)
            if w is None or not 0 < w <= MAX_WEIGHT:
                errs.append(FieldError("weight", WEIGHT_RULE))
            out[name] = w
        elif name == "max_outstanding":
            n = None if _nullable(value) else _integer(value, 0, MAX_OUTSTANDING)
            if n is None and not _nullable(value):
                errs.append(FieldError(name, TENANT_CAP_RULE))
            out[name] = n
        elif name in ("rate", "budget_usd"):
            hi, rule = (1_000_000.0, TENANT_RATE_RULE) if name == "rate" else (MAX_BUDGET_USD, TENANT_BUDGET_RULE)
            f = None if _nullable(value) else _number(value)
            if not _nullable(value) and (f is None or not 0 <= f <= hi):
                errs.append(FieldError(name, rule))
            out[name] = f
        elif name == "endpoints":
            items = [] if value is None else value
            if isinstance(items, str) or not isinstance(items, list | tuple) \
                    or any(not isinstance(e, str) or e not in ENDPOINTS for e in items):
                bad = [e for e in items if not isinstance(e, str) or e not in ENDPOINTS] \
                    if isinstance(items, list | tuple) else [items]
                errs.append(FieldError("endpoints", f"{', '.join(map(repr, bad))}: {ENDPOINTS_RULE}"))
            else:
                out[name] = list(dict.fromkeys(items))
        elif name == "s3_prefix":
            text = "" if value is None else value
            parts = text.split("/") if isinstance(text, str) and text else []
            if not isinstance(text, str) or len(text) > 200 or \
                    any(not _S3_PART.fullmatch(p) or p in (".", "..") for p in parts):
                errs.append(FieldError("s3_prefix", S3_PREFIX_RULE))
            out[name] = text
        elif name == "priority":
            if _nullable(value):
                out[name] = None
            elif isinstance(value, str) and value.strip().lower() in ("normal", "low"):
                out[name] = value.strip().lower()
            else:
                errs.append(FieldError("priority", TENANT_PRIORITY_RULE))
        else:
            errs.append(FieldError(str(name), f"unknown field; known: {', '.join(TENANT_FIELDS)}"))
    if errs:
        raise InvalidInput(errs)
    return out


def tenant_request(doc: Any, *, with_name: bool) -> tuple[str | None, dict[str, Any]]:
    """``(name, fields)`` from a JSON document (``POST /v1/tenants`` with ``name``,
    ``PATCH /v1/tenants/{name}`` without): the shape only; values are checked by the service."""
    allowed = ("name", *TENANT_FIELDS) if with_name else TENANT_FIELDS
    body, errors = _object(doc, allowed)
    if errors:
        raise InvalidInput(errors)
    name = body.get("name")
    if with_name and name is None:
        raise InvalidInput([FieldError("name", REQUIRED_RULE)])
    if with_name and not isinstance(name, str):
        raise InvalidInput([FieldError("name", NAME_RULE)])
    return name, {k: v for k, v in body.items() if k != "name"}


def _scopes(scopes: Iterable[Any]) -> tuple[str, ...]:
    items = list(scopes) if not isinstance(scopes, str) else [scopes]
    if not items or any(not isinstance(s, str) or s not in SCOPES for s in items) or len(set(items)) != len(items):
        raise InvalidInput([FieldError("scopes", SCOPES_RULE)])
    return tuple(s for s in SCOPES if s in items)


class TenantAdmin:
    """Tenants and their gateway API keys (the :class:`Admin` methods ``tenant_*`` / ``key_*``).

    Kept as a mixin of :class:`Admin`, so the CLI (``falq tenants``) and the gateway
    (``/v1/tenants``) go through the same rules.
    """

    falq: Falq

    @property
    def redis(self) -> Any:  # Admin's
        raise NotImplementedError

    @property
    def prefix(self) -> str:  # Admin's
        raise NotImplementedError

    @property
    def tenant_store(self) -> TenantStore:
        return TenantStore(self.redis, prefix=self.prefix)

    @property
    def key_store(self) -> ApiKeyStore:
        return ApiKeyStore(self.redis, prefix=self.prefix)

    def _name(self, name: Any) -> str:
        if not valid_name(name):
            raise InvalidInput([FieldError("name", NAME_RULE)])
        return str(name)

    def tenants_list(self) -> list[Tenant]:
        """Every tenant, ``default`` included, by name."""
        return self.tenant_store.list()

    def tenant_get(self, name: str) -> Tenant:
        """One tenant; raises :class:`TenantNotFound`."""
        found = self.tenant_store.get(self._name(name))
        if found is None:
            raise TenantNotFound(f"no tenant named {name!r}")
        return found

    def tenant_add(self, name: str, **fields: Any) -> Tenant:
        """Create a tenant (fields as in :func:`validate_tenant_fields`; unset ones default)."""
        errors: list[FieldError] = []
        try:
            self._name(name)
        except InvalidInput as exc:
            errors.extend(exc.errors)
        try:
            checked = validate_tenant_fields(fields)
        except InvalidInput as exc:
            errors.extend(exc.errors)
            checked = {}
        if errors:
            raise InvalidInput(errors)
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
        errors: list[FieldError] = []
        try:
            checked = _scopes(scopes)
        except InvalidInput as exc:
            errors.extend(exc.errors)
        if not isinstance(label, str) or len(label) > 100 or not label.isprintable():
            errors.append(FieldError("label", LABEL_RULE))
        if errors:
            raise InvalidInput(errors)
        self.tenant_get(tenant)
        token, made = self.key_store.create(tenant, checked, label)
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


class Admin(TenantAdmin):
    """The administration of one falq deployment (its Redis, its settings).

    Parameters:
        falq: the producer client (its Redis connection, job store and Celery app).
        settings: settings to read the key prefix, the fal key and the defaults from
            (default: ``falq.settings``).

    Every method validates its arguments first (see the module's rules) and raises
    :class:`InvalidInput` before touching Redis; unknown job ids raise ``JobNotFound``.
    """

    def __init__(self, falq: Falq, settings: Settings | None = None) -> None:
        self.falq = falq
        self.settings = settings or falq.settings

    @property
    def redis(self) -> Any:
        return self.falq.redis

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    # --- limits -------------------------------------------------------------------------------------
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
        """Validate and apply a change (see :func:`validate_limits`); every worker applies it at once.

        ``reset`` forgets the stored configuration first (workers re-seed it from ``FALQ_*``);
        the other fields are then written on top; ``resume`` lifts every key's pause.
        """
        return self.apply_limits(validate_limits(rate=rate, burst=burst, max_outstanding=max_outstanding,
                                                 endpoint_caps=endpoint_caps, resume=resume, reset=reset))

    def apply_limits(self, change: LimitsChange) -> LimitsResult:
        """Apply an already validated :class:`LimitsChange`."""
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

    # --- budget -------------------------------------------------------------------------------------
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

    # --- dead letters ---------------------------------------------------------------------------------
    def retry(self, job_ids: Iterable[str]) -> list[RetryOutcome]:
        """Run failed jobs again as new attempts of the same jobs (their error history is kept).

        Jobs that are not ``failed`` are returned unchanged (``retried`` false, ``reason`` says
        why: a completed job is never run again). A failed job only the catalogue still holds
        (its Redis record expired after archiving) runs again too, from its row (see
        :meth:`_retry`). Raises ``JobNotFound`` for an unknown id before anything is changed.
        """
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            raise InvalidInput([FieldError("job_ids", JOB_IDS_RULE)])
        return self._retry(ids)

    def retry_failed(self, since: float | str | None = None, *, tenant: str | None = None) -> list[RetryOutcome]:
        """:meth:`retry` every failed job (that failed after ``since``; only ``tenant``'s when given)."""
        ts = validate_since(since)
        ids = self.falq.store.ids_in_state("failed", limit=MAX_LIMIT, since=ts)
        if tenant is not None and ids:
            ids = [r.id for r in self.falq.store.get_many(ids) if r is not None and r.tenant == tenant]
        return self._retry(ids)

    def _retry(self, ids: list[str]) -> list[RetryOutcome]:
        """Retry ``ids``: live jobs as they are, jobs only the catalogue holds once revived.

        A job whose Redis record expired after archiving is written back first, as archived
        (:func:`falq.shared.catalogue.revive.revive`), and then goes through the very same live
        retry (:meth:`Falq.retry`, whose hand-off is ``FairShare.make_ready``): the same rules
        (only failed jobs; a completed one never, so no second fal submission for a request fal
        finished), the same compare-and-set (two retries at once make one new attempt; each may
        answer ``retried``, as for a live job), and its next end
        is archived again over the same row (the row's version is the record's). An archived
        job is refused, left as it is, when it cannot run as it was: its input not kept whole
        (a data URI, a signed URL), its tenant, endpoint, batch or a parent no longer there."""
        if not ids:
            return []
        try:
            found = self.falq.store.get_many(ids)
        except ValidationError:  # a corrupt record: read one by one (store.get calls it not found)
            found = [self._find(job_id) for job_id in ids]
        live = {job_id: rec for job_id, rec in zip(ids, found, strict=True) if rec is not None}
        # Every id is found (Redis or catalogue) before anything is changed: else JobNotFound.
        archived = self._archived([job_id for job_id in ids if job_id not in live])
        refused: dict[str, RetryOutcome] = {}
        warnings: dict[str, str] = {}
        for job_id, (rec, row) in archived.items():
            reason = self._revive(rec)
            if reason:
                refused[job_id] = RetryOutcome(rec, False, reason)
                continue
            if row.get("callback_host"):
                warnings[job_id] = NO_CALLBACK_WARNING.format(host=row["callback_host"])
            try:  # the revived record, or the one another retry revived first
                live[job_id] = self.falq.store.get(job_id)
            except JobNotFound:  # revived, then gone at once (a tiny revive TTL): say what the row says
                refused[job_id] = RetryOutcome(rec, False, NOT_FAILED_REASON.format(state=rec.state))
        before = {job_id: rec.state for job_id, rec in live.items()}
        runnable = [job_id for job_id in ids if job_id not in refused]
        recs = {r.id: r for r in self.falq.retry(runnable)} if runnable else {}
        out = []
        for job_id in ids:
            if job_id in refused:
                out.append(refused[job_id])
                continue
            r = recs[job_id]
            # A chained job retried goes back to waiting for its parents (falq.shared.batches.chains).
            # A job holding an output fal billed is run on from it (mirroring, or completed at once).
            retried = (before.get(job_id) in ("failed", "cancelled") and r.state != before.get(job_id)
                       and r.state in ("queued", "waiting", "mirroring", "completed"))
            out.append(RetryOutcome(r, retried, "" if retried else _not_retried(r), warnings.get(job_id, "")))
        return out

    def _archived(self, ids: list[str]) -> dict[str, tuple[JobRecord, dict[str, Any]]]:
        """``id -> (record, row)`` from the catalogue for jobs Redis no longer has; raises
        ``JobNotFound`` (the text of an unknown id) for one the catalogue lacks too."""
        if not ids:
            return {}
        from falq.shared.catalogue.rows import record_from_row

        cat = self.falq.catalogue
        out: dict[str, tuple[JobRecord, dict[str, Any]]] = {}
        for job_id in ids:
            row = cat.get_row(job_id) if cat is not None else None
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r} (never enqueued, or its record expired)")
            out[job_id] = (record_from_row(row), row)
        return out

    def _revive(self, rec: JobRecord) -> str:
        """Write the archived ``rec`` (and its archived parents) back into Redis so the live
        retry can run it; returns why it cannot run again (nothing written), else ''."""
        from falq.shared.catalogue.revive import refs_from_parents, revive
        from falq.shared.catalogue.rows import lost_in

        if rec.state == "completed":
            return COMPLETED_REASON
        if rec.state not in RETRIED_STATES:
            return NOT_FAILED_REASON.format(state=rec.state)
        if rec.endpoint not in ENDPOINTS:
            return GONE_ENDPOINT_REASON.format(endpoint=rec.endpoint)
        owner = self.tenant_store.get(rec.tenant)
        if owner is None:
            return GONE_TENANT_REASON.format(tenant=rec.tenant)
        if not owner.allows(rec.endpoint):
            return DENIED_ENDPOINT_REASON.format(tenant=rec.tenant, endpoint=rec.endpoint)
        if rec.batch_id and not self.redis.exists(self.falq.store.keys.batch(rec.batch_id)):
            return GONE_BATCH_REASON.format(batch=rec.batch_id)
        cat = self.falq.catalogue
        parents: dict[str, JobRecord] = {}
        revive_parents: list[JobRecord] = []
        for pid in rec.parents:  # a chained job: its parents must be readable when it is released
            p = self._find(pid)
            if p is None and cat is not None:
                p = cat.get(pid, tenant=rec.tenant)
                if p is not None:
                    revive_parents.append(p)
            if p is None:
                return GONE_PARENT_REASON.format(parent=pid)
            parents[pid] = p
        given = rec.input.get("image_urls")
        checked = rec.input
        if rec.parents and isinstance(given, list):
            # A released child ran with presigned URLs of its parents' outputs (archived without
            # their signatures); its references are rebuilt and resolved again at its release.
            refs = refs_from_parents(given, parents)
            if refs is not None and refs != given:
                rec.input_refs = [str(x) for x in refs]
                checked = {**rec.input, "image_urls": refs}
        lost = lost_in(checked)
        if lost:
            path, what = lost[0]
            return LOST_INPUT_REASON.format(path=path, what=what)
        ttl = max(self.settings.archived_ttl_s, REVIVE_TTL_MIN_S)
        for p in revive_parents:
            revive(self.falq.store, p, ttl_s=ttl)
        revive(self.falq.store, rec, ttl_s=ttl)  # False: another retry revived it first (it then runs once)
        return ""

    def _find(self, job_id: str) -> JobRecord | None:
        try:
            return self.falq.store.get(job_id)
        except JobNotFound:
            return None

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job: at once if no worker has it yet, else its worker cancels it at fal.

        A job that already ended is left as it is (``final``), also one only the catalogue
        still holds (its Redis record expired after archiving; it has ended). Raises ``JobNotFound``.
        """
        try:
            rec = self.falq.store.get(job_id)
        except JobNotFound:
            archived, _row = self._archived([job_id])[job_id]  # JobNotFound when the catalogue lacks it too
            return CancelOutcome(archived, "final")
        if rec.terminal:
            return CancelOutcome(rec, "final")
        after = self.falq.cancel(job_id)
        if after.state == "cancelled":
            return CancelOutcome(after, "cancelled")
        return CancelOutcome(after, "final" if after.terminal else "requested")

    def jobs(self, state: str | None = None, *, since: float | str | None = None,
             limit: int | str = 50, text: str | None = None, endpoint: str | None = None,
             tenant: str | None = None, batch_id: str | None = None,
             metadata: dict[str, str] | None = None) -> list[JobRecord]:
        """Job records (in ``state``, newer than ``since``, matching the filters), newest first,
        each with its error history: live ones from Redis and history from the catalogue."""
        errors: list[FieldError] = []
        if state is not None and state not in STATES:
            errors.append(FieldError("state", STATE_RULE))
        try:
            ts = validate_since(since)
        except InvalidInput as exc:
            errors.extend(exc.errors)
        n = _integer(limit, 1, MAX_LIMIT)
        if n is None:
            errors.append(FieldError("limit", LIMIT_RULE))
        if text is not None and not 1 <= len(text.strip()) <= 500:
            errors.append(FieldError("text", "must be 1 to 500 characters"))
        if errors or n is None:
            raise InvalidInput(errors)
        return self.falq.jobs(state, limit=n, since=ts, text=text, endpoint=endpoint, tenant=tenant,
                              batch_id=batch_id, metadata=metadata)

    def dead_letters(self, since: float | str | None = None, limit: int | str = 50) -> list[JobRecord]:
        """The failed jobs (newer than ``since``), newest first, with why they failed (``errors``)."""
        return self.jobs("failed", since=since, limit=limit)

    # --- per-job callbacks (the outbox, falq.shared.callbacks.outbox) ---------------------------------------------
    @property
    def outbox(self) -> Outbox:
        return Outbox(self.falq.store)

    def callbacks_pending(self, *, failed: bool = False, since: float | str | None = None,
                          limit: int | str = 100) -> list[CallbackView]:
        """Callbacks still to be delivered, soonest next try first, with their tries and last try;
        with ``failed``, those that gave up (after ``since``), newest first."""
        errors: list[FieldError] = []
        n = _integer(limit, 1, MAX_LIMIT)
        if n is None:
            errors.append(FieldError("limit", LIMIT_RULE))
        ts = None
        if since is not None and not failed:
            errors.append(FieldError("since", ONLY_FAILED_RULE))
        else:
            try:
                ts = validate_since(since)
            except InvalidInput as exc:
                errors.extend(exc.errors)
        if errors or n is None:
            raise InvalidInput(errors)
        return self.outbox.failed(limit=n, since=ts) if failed else self.outbox.pending(limit=n)

    def callback_log(self, job_id: str) -> list[dict[str, Any]]:
        """Every try of the job's callback, oldest first (time, status code or error, final).

        Raises ``JobNotFound``.
        """
        self.falq.store.get(job_id)
        return self.outbox.log(job_id)

    def redeliver(self, job_ids: Iterable[str]) -> list[CallbackView]:
        """Queue these jobs' callbacks again, due now, with a fresh retry window.

        The delivery id stays the same (receivers deduplicate on it), even for a callback that
        was delivered. Raises ``JobNotFound`` for an unknown id and :class:`InvalidInput` for a
        job without a ``callback_url`` or not ended, before anything is changed.
        """
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            raise InvalidInput([FieldError("job_ids", JOB_IDS_RULE)])
        recs = [self.falq.store.get(job_id) for job_id in ids]
        errors = [FieldError("job_ids", f"{r.id}: {NO_CALLBACK_RULE}") for r in recs if not r.callback_url]
        errors += [FieldError("job_ids", f"{r.id}: {NOT_ENDED_RULE}") for r in recs
                   if r.callback_url and not r.terminal]
        if errors:
            raise InvalidInput(errors)
        return self._redeliver(ids)

    def redeliver_failed(self, since: float | str | None = None) -> list[CallbackView]:
        """:meth:`redeliver` every callback that gave up (after ``since``)."""
        ts = validate_since(since)
        return self._redeliver([v.job_id for v in self.outbox.failed(limit=MAX_LIMIT, since=ts)])

    def _redeliver(self, ids: list[str]) -> list[CallbackView]:
        outbox = self.outbox
        done = [job_id for job_id in ids if outbox.redeliver(job_id)]
        return outbox.pending_of(done)


def _not_retried(rec: JobRecord) -> str:
    """Why the live retry left ``rec`` as it is."""
    return COMPLETED_REASON if rec.state == "completed" else NOT_FAILED_REASON.format(state=rec.state)


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


__all__ = [
    "Admin",
    "BudgetView",
    "CallbackView",
    "CancelOutcome",
    "LimitsChange",
    "LimitsResult",
    "LimitsView",
    "RetryOutcome",
    "TenantAdmin",
    "budget_request",
    "limits_request",
    "tenant_request",
    "validate_budget",
    "validate_limits",
    "validate_since",
    "validate_tenant_fields",
]
