"""Request documents checked by pydantic, rejected as :class:`~falq.shared.errors.InvalidInput`.

The administration rules (limits, budget, tenants, API keys, listings) are pydantic models
(:class:`Checked`) next to the domain they guard. Each model names the one rule of each field
(:attr:`Checked.RULES`), in words a person can act on; :meth:`Checked.check` turns pydantic's
:class:`~pydantic.ValidationError` into one :class:`~falq.shared.errors.FieldError` per broken
rule: the field's own rule whatever check failed, a rule a validator raised with
:func:`rule` (it names the item at fault), ``unknown field; known: ...`` for an extra field and
``is required`` for a missing one. The CLI prints them as ``error: field: rule``; the gateway
answers them in a 422's ``detail``.

The numbers operators type are lenient on purpose: a JSON number or its decimal text (the CLI
passes text), never ``true``/``false``, never ``nan`` or ``inf`` (:data:`Number`,
:data:`Integer`); ``none``/``null`` text clears a nullable setting (:func:`null_text`).

Example::

    class Knob(Checked):
        RULES = {"level": "must be an integer from 0 to 9"}
        level: Integer = Field(ge=0, le=9)

    Knob.check({"level": "3"}).level   # 3
    Knob.check({"level": "x"})         # InvalidInput: level: must be an integer from 0 to 9
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from falq.shared.errors import FieldError, InvalidInput

OBJECT_RULE = "must be a JSON object"
REQUIRED_RULE = "is required"
#: The error type of a rule a validator words itself (:func:`rule`).
RULE_ERROR = "falq_rule"

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NULL_TEXT = ("none", "null")


def rule(text: str) -> PydanticCustomError:
    """An error whose message is ``text`` as it stands (raise it from a validator): for a rule
    that names the item at fault, e.g. ``'fal-ai/x': unknown endpoint``."""
    return PydanticCustomError(RULE_ERROR, "{rule}", {"rule": text})


def number(value: Any) -> float | None:
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


def integer(value: Any) -> int | None:
    """An integer from an int, an integral number or its text; None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    f = number(value)
    return int(f) if f is not None and f.is_integer() else None


def null_text(value: Any) -> bool:
    """``None`` or the text ``none``/``null`` (any case): "no value" as the CLI spells it."""
    return value is None or (isinstance(value, str) and value.strip().lower() in _NULL_TEXT)


def _as_number(value: Any) -> float:
    f = number(value)
    if f is None:
        raise ValueError("not a finite number")
    return f


def _as_integer(value: Any) -> int:
    n = integer(value)
    if n is None:
        raise ValueError("not an integer")
    return n


def _or_null(check: Any) -> Any:
    def check_or_null(value: Any) -> Any:
        return None if null_text(value) else check(value)
    return check_or_null


#: A finite number, given as a JSON number or its decimal text (bounds: ``Field(ge=..., le=...)``).
Number = Annotated[float, BeforeValidator(_as_number)]
#: An integer, given as an int, an integral number or its text.
Integer = Annotated[int, BeforeValidator(_as_integer)]
#: :data:`Number`, or ``None`` for null or the text ``none``/``null``.
NullableNumber = Annotated[float | None, BeforeValidator(_or_null(_as_number))]
#: :data:`Integer`, or ``None`` for null or the text ``none``/``null``.
NullableInteger = Annotated[int | None, BeforeValidator(_or_null(_as_integer))]


class Checked(BaseModel):
    """A request checked as a whole: unknown fields refused, every broken rule reported.

    Subclasses give :attr:`RULES` (field -> its rule in words) and validate with :meth:`check`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Each field's rule, reported whichever of its checks failed.
    RULES: ClassVar[Mapping[str, str]] = {}
    #: Report broken rules in the order the fields were given (else in the model's field order,
    #: unknown fields first).
    INPUT_ORDER: ClassVar[bool] = False

    @classmethod
    def field_order(cls) -> list[str]:
        """The fields in the order messages list them (a subclass that adds a field may put it first)."""
        return list(cls.model_fields)

    @classmethod
    def check(cls, data: Any) -> Self:
        """The validated model; raises :class:`InvalidInput` listing every broken rule."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(cls.field_errors(exc, data)) from None

    @classmethod
    def field_errors(cls, exc: ValidationError, data: Any = None) -> list[FieldError]:
        """pydantic's errors as falq's: the field named, the rule stated; one per broken rule."""
        known = ", ".join(cls.field_order())
        given: list[Any] = list(data) if cls.INPUT_ORDER and isinstance(data, Mapping) else cls.field_order()
        ranked: list[tuple[int, int, FieldError]] = []
        seen: set[tuple[str, str]] = set()
        for err in exc.errors():
            loc = err["loc"]
            if not loc:  # the document itself is not an object
                return [FieldError("", OBJECT_RULE)]
            name = str(loc[0])
            if err["type"] == "extra_forbidden":
                found = FieldError(name, f"unknown field; known: {known}")
            elif err["type"] == RULE_ERROR:
                found = FieldError(name, err["msg"])
            elif err["type"] == "missing":
                found = FieldError(name, REQUIRED_RULE)
            else:
                found = FieldError(name, cls.RULES.get(name, err["msg"]))
            # A union tried member by member reports each: the field's rule is said once.
            if (found.field, found.message) in seen and err["type"] != RULE_ERROR:
                continue
            seen.add((found.field, found.message))
            where = given.index(loc[0]) if loc[0] in given else len(given)
            first = err["type"] == "extra_forbidden" and not cls.INPUT_ORDER
            ranked.append((0 if first else 1, where, found))
        return [e for _, _, e in sorted(ranked, key=lambda r: (r[0], r[1]))]


__all__ = [
    "OBJECT_RULE",
    "REQUIRED_RULE",
    "Checked",
    "Integer",
    "NullableInteger",
    "NullableNumber",
    "Number",
    "integer",
    "null_text",
    "number",
    "rule",
]
