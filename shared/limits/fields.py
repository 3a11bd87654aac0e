"""The rules of a change of the global limits and of the daily budget, as pydantic models.

:func:`validate_limits` checks a change as the CLI gives it (``falq limits set``),
:func:`limits_request` as the gateway gets it (``PUT /v1/limits``); :func:`validate_budget`
and :func:`budget_request` likewise for the budget. Each raises
:class:`~falq.shared.errors.InvalidInput` with one :class:`~falq.shared.errors.FieldError` per
broken rule (see :mod:`falq.shared.validation`); nothing here touches Redis (the admin service,
:mod:`falq.producers.admin.limits`, writes what passes).

The rules (numbers as JSON numbers or their decimal text; never ``true``/``false``, ``nan``, ``inf``)::

    rate                          0 (unlimited) or 0.001 to 1000000 submissions per second per fal key
    burst                         an integer from 1 to 1000000
    max_outstanding               an integer from 0 to 1000000 (0: unlimited)
    max_outstanding_per_endpoint  known endpoint -> an integer from 0 to 1000000, or null/none
                                  (removes that endpoint's cap); as text: ENDPOINT=N|none
    resume, reset                 true or false
    (a change)                    must change something
    budget_usd                    a number of dollars from 0 to 1000000000000, or null (no budget)

Example::

    validate_limits(rate="20", endpoint_caps=["fal-ai/qwen-image-2/pro/edit=4"])
    # LimitsChange(rate=20.0, ..., endpoint_caps={'fal-ai/qwen-image-2/pro/edit': 4})
    limits_request({"rate": -1})   # InvalidInput: rate: must be 0 (unlimited) or a number from 0.001 to 1000000
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, field_validator

from falq.shared.errors import FieldError, InvalidInput
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.validation import Checked, Integer, Number, integer, rule

MAX_RATE = 1_000_000.0
#: Below this a token takes hours and the limiter's wait arithmetic loses meaning.
MIN_RATE = 0.001
MAX_BURST = 1_000_000
MAX_OUTSTANDING = 1_000_000
MAX_ENDPOINT_CAP = 1_000_000
MAX_BUDGET_USD = 1e12

#: The fields of a limits change (what ``PUT /v1/limits`` takes).
LIMITS_FIELDS = ("rate", "burst", "max_outstanding", "max_outstanding_per_endpoint", "resume", "reset")
BUDGET_FIELDS = ("budget_usd",)

RATE_RULE = f"must be 0 (unlimited) or a number from {MIN_RATE} to 1000000"
BURST_RULE = f"must be an integer from 1 to {MAX_BURST}"
OUTSTANDING_RULE = f"must be an integer from 0 to {MAX_OUTSTANDING}"
CAPS_RULE = "must be an object of endpoint -> cap (null removes a cap)"
CAP_RULE = f"cap must be an integer from 0 to {MAX_ENDPOINT_CAP}, or null/none to remove it"
CAP_TEXT_RULE = "use ENDPOINT=N or ENDPOINT=none"
FLAG_RULE = "must be true or false"
NOTHING_RULE = "nothing to change: give rate, burst, max_outstanding, max_outstanding_per_endpoint, resume or reset"
BUDGET_RULE = f"must be a number of dollars from 0 to {MAX_BUDGET_USD:.0f}"


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


def _rate(value: float) -> float:
    if 0 < value < MIN_RATE:  # 0 means unlimited; a tiny positive rate is no rate at all
        raise ValueError(RATE_RULE)
    return value


def _cap_pairs(raw: Any) -> list[Any]:
    """The per-endpoint caps as a list: a mapping's ``(endpoint, cap)`` pairs, or the CLI's
    ``ENDPOINT=N|none`` texts (each checked on its own, so every bad one is reported)."""
    if isinstance(raw, Mapping):
        return list(raw.items())
    if isinstance(raw, str) or not isinstance(raw, Iterable):
        raise rule(CAPS_RULE)
    return [str(item) for item in raw]


def _cap_pair(item: Any) -> tuple[str, int | None]:
    """One endpoint's cap, from a pair or from ``ENDPOINT=N|none``; the rule names the endpoint."""
    if isinstance(item, str):
        ep, sep, n = item.partition("=")
        if not sep or not ep.strip():
            raise rule(f"{item!r}: {CAP_TEXT_RULE}")
        pair: tuple[Any, Any] = (ep.strip(), None if n.strip().lower() in ("none", "null") else n)
    else:
        pair = item
    ep, n = pair
    if not isinstance(ep, str) or ep not in ENDPOINTS:
        raise rule(f"{ep!r}: unknown endpoint; known: {', '.join(ENDPOINTS)}")
    if n is None:
        return ep, None
    cap = integer(n)
    if cap is None or not 0 <= cap <= MAX_ENDPOINT_CAP:
        raise rule(f"{ep!r}: {CAP_RULE}")
    return ep, cap


CapPair = Annotated[tuple[str, int | None], BeforeValidator(_cap_pair)]


class LimitsFields(Checked):
    """A change of the global limits; ``None`` leaves a field as it is.

    ``max_outstanding_per_endpoint`` is a mapping endpoint -> cap (``None`` removes the cap) or
    the CLI's ``ENDPOINT=N|none`` texts; a later cap of the same endpoint wins.
    """

    RULES: ClassVar[Mapping[str, str]] = {
        "rate": RATE_RULE, "burst": BURST_RULE, "max_outstanding": OUTSTANDING_RULE,
        "max_outstanding_per_endpoint": CAPS_RULE, "resume": FLAG_RULE, "reset": FLAG_RULE,
    }

    rate: Annotated[Number, AfterValidator(_rate)] | None = Field(None, ge=0, le=MAX_RATE)
    burst: Integer | None = Field(None, ge=1, le=MAX_BURST)
    max_outstanding: Integer | None = Field(None, ge=0, le=MAX_OUTSTANDING)
    max_outstanding_per_endpoint: Annotated[list[CapPair], BeforeValidator(_cap_pairs)] | None = None
    resume: StrictBool = False
    reset: StrictBool = False

    def change(self) -> LimitsChange:
        """The validated change; raises :class:`InvalidInput` when it changes nothing."""
        caps = self.max_outstanding_per_endpoint
        change = LimitsChange(rate=self.rate, burst=self.burst, max_outstanding=self.max_outstanding,
                              endpoint_caps=None if caps is None else dict(caps),
                              resume=self.resume, reset=self.reset)
        if change == LimitsChange():
            raise InvalidInput([FieldError("", NOTHING_RULE)])
        return change


class LimitsDocument(LimitsFields):
    """The body of ``PUT /v1/limits``: :class:`LimitsFields` as JSON (an object of the
    :data:`LIMITS_FIELDS`; ``null`` leaves a field as it is, also ``resume`` and ``reset``;
    the per-endpoint caps only as an object)."""

    @field_validator("max_outstanding_per_endpoint", mode="before")
    @classmethod
    def _caps_object(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise rule(CAPS_RULE)
        return value

    @field_validator("resume", "reset", mode="before")
    @classmethod
    def _null_is_false(cls, value: Any) -> Any:
        return False if value is None else value


def validate_limits(*, rate: Any = None, burst: Any = None, max_outstanding: Any = None,
                    endpoint_caps: Mapping[str, Any] | Iterable[str] | None = None, resume: Any = False,
                    reset: Any = False) -> LimitsChange:
    """Check a limits change; raise :class:`InvalidInput` listing every broken rule.

    ``endpoint_caps`` is a mapping endpoint -> cap (JSON) or ``ENDPOINT=N|none`` texts (CLI).
    """
    return LimitsFields.check({"rate": rate, "burst": burst, "max_outstanding": max_outstanding,
                               "max_outstanding_per_endpoint": endpoint_caps,
                               "resume": resume, "reset": reset}).change()


def limits_request(doc: Any) -> LimitsChange:
    """A limits change from a JSON document (``PUT /v1/limits``): the rules of
    :func:`validate_limits` plus the document's shape (:class:`LimitsDocument`)."""
    return LimitsDocument.check(doc).change()


class BudgetFields(Checked):
    """The daily budget: dollars per UTC day, or ``None`` for no budget. As a JSON body
    (``PUT /v1/budget``), ``budget_usd`` must be given (``null`` removes the budget)."""

    RULES: ClassVar[Mapping[str, str]] = {"budget_usd": BUDGET_RULE}

    budget_usd: Number | None = Field(..., ge=0, le=MAX_BUDGET_USD)


def validate_budget(usd: Any) -> float | None:
    """The daily budget in dollars (``None``: no budget); raise :class:`InvalidInput` if invalid."""
    return BudgetFields.check({"budget_usd": usd}).budget_usd


def budget_request(doc: Any) -> float | None:
    """The budget from a JSON document (``PUT /v1/budget``): ``{"budget_usd": dollars | null}``."""
    return BudgetFields.check(doc).budget_usd


__all__ = [
    "BUDGET_FIELDS",
    "LIMITS_FIELDS",
    "MAX_BUDGET_USD",
    "MAX_BURST",
    "MAX_ENDPOINT_CAP",
    "MAX_OUTSTANDING",
    "BudgetFields",
    "LimitsChange",
    "LimitsDocument",
    "LimitsFields",
    "budget_request",
    "limits_request",
    "validate_budget",
    "validate_limits",
]
