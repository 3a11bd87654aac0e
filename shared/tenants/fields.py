"""The rules of a tenant's settings and of a gateway API key, as pydantic models.

:func:`validate_tenant_fields` checks the settings ``falq tenants add|set`` and
``POST``/``PATCH /v1/tenants`` give, :func:`tenant_request` the shape of those bodies,
:func:`validate_tenant_name` a name and :func:`validate_key_fields` a new key's scopes and label.
Each raises :class:`~falq.shared.errors.InvalidInput` with one
:class:`~falq.shared.errors.FieldError` per broken rule (:mod:`falq.shared.validation`);
nothing here touches Redis (the admin service, :mod:`falq.producers.admin.tenants`, writes what
passes and adds the rules that need the stored tenants: a taken name, at most 200 tenants).

The rules (numbers as JSON numbers or their text; ``none``/``null`` clears a cap)::

    name              1-40 characters: lowercase letters, digits, '-' or '_', starting with a
                      letter or digit
    weight            a number above 0, at most 1000
    max_outstanding   an integer from 0 to 1000000, or null/none (no cap of its own)
    rate              submissions per second from 0 to 1000000, or null/none
    budget_usd        dollars per UTC day from 0 to 1000000000000, or null/none
    endpoints         a list of known endpoints; empty or null: every endpoint
    s3_prefix         empty or null (the tenant's name) or '/'-separated parts of letters,
                      digits, '.', '_', '-' (no '..'), at most 200 characters
    priority          normal or low, or null/none (the lane's FALQ_FAL_PRIORITY_*)
    scopes            one or more of submit, read, admin, each once
    label             at most 100 printable characters

Example::

    validate_tenant_fields({"weight": "2", "max_outstanding": "none"})
    # {'weight': 2.0, 'max_outstanding': None}
    validate_tenant_fields({"weight": 0})   # InvalidInput: weight: must be a number above 0 and at most 1000
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, StrictStr

from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.limits.fields import MAX_BUDGET_USD, MAX_OUTSTANDING, MAX_RATE
from falq.shared.tenants.store import MAX_WEIGHT, NAME_RULE, SCOPES, valid_name
from falq.shared.validation import REQUIRED_RULE, Checked, NullableInteger, NullableNumber, Number, null_text, rule

#: The settings of a tenant a change may give (``PATCH /v1/tenants/{name}``, ``falq tenants set``).
TENANT_FIELDS = ("weight", "max_outstanding", "rate", "budget_usd", "endpoints", "s3_prefix", "priority")
MAX_S3_PREFIX = 200
MAX_LABEL = 100

WEIGHT_RULE = f"must be a number above 0 and at most {MAX_WEIGHT:g}"
TENANT_CAP_RULE = f"must be an integer from 0 to {MAX_OUTSTANDING}, or null/none (no cap of its own)"
TENANT_RATE_RULE = "must be a number of submissions per second from 0 to 1000000, or null/none (no cap of its own)"
TENANT_BUDGET_RULE = f"must be a number of dollars from 0 to {MAX_BUDGET_USD:.0f}, or null/none (no budget of its own)"
ENDPOINTS_RULE = f"must be a list of known endpoints (empty: all); known: {', '.join(ENDPOINTS)}"
S3_PREFIX_RULE = ("must be empty or at most 200 characters of '/'-separated parts made of letters, digits,"
                  " '.', '_' and '-' (no '..', no empty part)")
TENANT_PRIORITY_RULE = ("must be normal or low, or null/none (the lane's setting); low waits behind every "
                        "customer's normal requests on fal's shared per-endpoint queue")
SCOPES_RULE = f"must name at least one of {', '.join(SCOPES)}, each once"
LABEL_RULE = "must be at most 100 printable characters"

_S3_PART = re.compile(r"[A-Za-z0-9._-]+")


def _name(value: Any) -> str:
    if not valid_name(value):
        raise ValueError(NAME_RULE)
    return str(value)


def _endpoints(value: Any) -> list[str]:
    """Known endpoints, each once (None: every endpoint); the rule names the unknown ones."""
    items = [] if value is None else value
    if isinstance(items, str) or not isinstance(items, list | tuple):
        bad = [items]
    else:
        bad = [e for e in items if not isinstance(e, str) or e not in ENDPOINTS]
    if bad:
        raise rule(f"{', '.join(map(repr, bad))}: {ENDPOINTS_RULE}")
    return list(dict.fromkeys(items))


def _s3_prefix(value: Any) -> str:
    text = "" if value is None else value
    if not isinstance(text, str) or len(text) > MAX_S3_PREFIX:
        raise ValueError(S3_PREFIX_RULE)
    if text and any(not _S3_PART.fullmatch(p) or p in (".", "..") for p in text.split("/")):
        raise ValueError(S3_PREFIX_RULE)
    return text


def _priority(value: Any) -> str | None:
    if null_text(value):
        return None
    if isinstance(value, str) and value.strip().lower() in ("normal", "low"):
        return value.strip().lower()
    raise ValueError(TENANT_PRIORITY_RULE)


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError(LABEL_RULE)
    return text


def _scopes(value: Any) -> tuple[str, ...]:
    """The scopes in :data:`SCOPES` order; one scope may be given as a bare text."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, Iterable) and not isinstance(value, Mapping):
        items = list(value)
    else:
        raise ValueError(SCOPES_RULE)
    if not items or any(not isinstance(s, str) or s not in SCOPES for s in items) or len(set(items)) != len(items):
        raise ValueError(SCOPES_RULE)
    return tuple(s for s in SCOPES if s in items)


#: A tenant's name (:data:`~falq.shared.tenants.store.NAME_RULE`).
TenantName = Annotated[str, BeforeValidator(_name)]


class TenantFields(Checked):
    """Some settings of a tenant (any of :data:`TENANT_FIELDS`): only those given are set."""

    RULES: ClassVar[Mapping[str, str]] = {
        "weight": WEIGHT_RULE, "max_outstanding": TENANT_CAP_RULE, "rate": TENANT_RATE_RULE,
        "budget_usd": TENANT_BUDGET_RULE, "endpoints": ENDPOINTS_RULE, "s3_prefix": S3_PREFIX_RULE,
        "priority": TENANT_PRIORITY_RULE,
    }
    INPUT_ORDER: ClassVar[bool] = True

    weight: Number = Field(1.0, gt=0, le=MAX_WEIGHT)
    max_outstanding: NullableInteger = Field(None, ge=0, le=MAX_OUTSTANDING)
    rate: NullableNumber = Field(None, ge=0, le=MAX_RATE)
    budget_usd: NullableNumber = Field(None, ge=0, le=MAX_BUDGET_USD)
    endpoints: Annotated[list[str], BeforeValidator(_endpoints)] = Field(default_factory=list)
    s3_prefix: Annotated[str, BeforeValidator(_s3_prefix)] = ""
    priority: Annotated[Literal["normal", "low"] | None, BeforeValidator(_priority)] = None


def validate_tenant_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check the given settings of a tenant; raise :class:`InvalidInput` listing every broken
    rule (in the order the fields were given). Returns them as stored (None: no cap).

    Example::

        validate_tenant_fields({"weight": "2", "max_outstanding": "none"})
        # {'weight': 2.0, 'max_outstanding': None}
    """
    return TenantFields.check(dict(fields)).model_dump(exclude_unset=True)


def _given_name(value: Any) -> Any:
    if value is None:
        raise rule(REQUIRED_RULE)
    return value


class TenantPatchDocument(Checked):
    """The body of ``PATCH /v1/tenants/{name}``: an object of :data:`TENANT_FIELDS`. Only its
    shape: the values are :class:`TenantFields`' to check (with the tenant's name, by the service)."""

    weight: Any = None
    max_outstanding: Any = None
    rate: Any = None
    budget_usd: Any = None
    endpoints: Any = None
    s3_prefix: Any = None
    priority: Any = None


class TenantCreateDocument(TenantPatchDocument):
    """The body of ``POST /v1/tenants``: :class:`TenantPatchDocument` with a ``name`` (text)."""

    RULES: ClassVar[Mapping[str, str]] = {"name": NAME_RULE}

    name: Annotated[StrictStr, BeforeValidator(_given_name)]

    @classmethod
    def field_order(cls) -> list[str]:
        return ["name", *TenantPatchDocument.model_fields]


def tenant_request(doc: Any, *, with_name: bool) -> tuple[str | None, dict[str, Any]]:
    """``(name, fields)`` from a JSON document (``POST /v1/tenants`` with ``name``,
    ``PATCH /v1/tenants/{name}`` without): the shape only; the values are checked by the service
    (:func:`validate_tenant_fields`, :func:`validate_tenant_name`)."""
    if with_name:
        name: str | None = TenantCreateDocument.check(doc).name
    else:
        TenantPatchDocument.check(doc)
        name = None
    # As given (a dict, once checked): the service reports broken values in the body's order.
    return name, {k: v for k, v in doc.items() if k != "name"}


class _NameField(Checked):
    RULES: ClassVar[Mapping[str, str]] = {"name": NAME_RULE}

    name: TenantName


def validate_tenant_name(name: Any) -> str:
    """``name`` if it is a valid tenant name; raises :class:`InvalidInput` (``name: ...``)."""
    return _NameField.check({"name": name}).name


class ApiKeyFields(Checked):
    """A new gateway API key's scopes (:data:`SCOPES`, in that order) and label."""

    RULES: ClassVar[Mapping[str, str]] = {"scopes": SCOPES_RULE, "label": LABEL_RULE}

    scopes: Annotated[tuple[str, ...], BeforeValidator(_scopes)]
    label: Annotated[StrictStr, AfterValidator(_printable)] = Field("", max_length=MAX_LABEL)


def validate_key_fields(scopes: Any, label: Any = "") -> ApiKeyFields:
    """A key's scopes and label, checked; raises :class:`InvalidInput` listing every broken rule."""
    return ApiKeyFields.check({"scopes": scopes, "label": label})


__all__ = [
    "ENDPOINTS_RULE",
    "LABEL_RULE",
    "S3_PREFIX_RULE",
    "SCOPES_RULE",
    "TENANT_BUDGET_RULE",
    "TENANT_CAP_RULE",
    "TENANT_FIELDS",
    "TENANT_PRIORITY_RULE",
    "TENANT_RATE_RULE",
    "WEIGHT_RULE",
    "ApiKeyFields",
    "TenantCreateDocument",
    "TenantFields",
    "TenantName",
    "TenantPatchDocument",
    "tenant_request",
    "validate_key_fields",
    "validate_tenant_fields",
    "validate_tenant_name",
]
