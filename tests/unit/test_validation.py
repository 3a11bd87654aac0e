"""pydantic's errors as falq's (:mod:`falq.shared.validation`) and the ``since`` rule (:mod:`falq.shared.since`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from pydantic import Field

from falq.shared.errors import InvalidInput
from falq.shared.since import SINCE_RULE, validate_since
from falq.shared.validation import (
    OBJECT_RULE,
    REQUIRED_RULE,
    Checked,
    Integer,
    NullableInteger,
    NullableNumber,
    Number,
    integer,
    number,
    rule,
)

LEVEL_RULE = "must be an integer from 0 to 9"
GAIN_RULE = "must be a number from 0 to 1"


class Knob(Checked):
    RULES: ClassVar[Mapping[str, str]] = {"level": LEVEL_RULE, "gain": GAIN_RULE}

    level: Integer = Field(ge=0, le=9)
    gain: Number = Field(0.5, ge=0, le=1)
    cap: NullableInteger = None
    scale: NullableNumber = None


class Ordered(Knob):
    INPUT_ORDER: ClassVar[bool] = True


def errors(model: type[Checked], data: Any) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        model.check(data)
    return [str(e) for e in exc.value.errors]


@pytest.mark.parametrize(("given", "expected"), [
    (3, 3.0), (2.5, 2.5), (" -4 ", -4.0), ("1e3", 1000.0), (".5", 0.5), ("7.", 7.0),
    (True, None), (None, None), ("nan", None), (math.inf, None), (10**400, None), ("1e400", None),
    ("1_000", None), ("²", None), ("", None), ([1], None),
])
def test_number_takes_a_finite_json_number_or_its_decimal_text(given: Any, expected: float | None) -> None:
    assert number(given) == expected


@pytest.mark.parametrize(("given", "expected"), [
    (3, 3), (10**30, 10**30), (4.0, 4), ("5", 5), ("6.0", 6), (1.5, None), ("1.5", None), (False, None), ("x", None),
])
def test_integer_takes_an_integral_number_or_its_text(given: Any, expected: int | None) -> None:
    assert integer(given) == expected


def test_a_valid_document_is_converted() -> None:
    knob = Knob.check({"level": "3", "gain": "0.25", "cap": "None", "scale": " null "})
    assert (knob.level, knob.gain, knob.cap, knob.scale) == (3, 0.25, None, None)
    assert Knob.check({"level": 0, "cap": "4", "scale": 2}).cap == 4


def test_each_field_reports_its_own_rule_whichever_check_failed() -> None:
    assert errors(Knob, {"level": 10}) == [f"level: {LEVEL_RULE}"]
    assert errors(Knob, {"level": "x"}) == [f"level: {LEVEL_RULE}"]
    assert errors(Knob, {"level": True}) == [f"level: {LEVEL_RULE}"]
    assert errors(Knob, {"level": 1, "gain": 2}) == [f"gain: {GAIN_RULE}"]


def test_unknown_missing_and_non_object_documents() -> None:
    assert errors(Knob, {"gain": 1}) == [f"level: {REQUIRED_RULE}"]
    assert errors(Knob, {"level": 1, "colour": "red"}) == ["colour: unknown field; known: level, gain, cap, scale"]
    assert errors(Knob, [1]) == [OBJECT_RULE]
    assert errors(Knob, None) == [OBJECT_RULE]


def test_every_broken_rule_is_reported_unknown_fields_first_then_in_field_order() -> None:
    assert errors(Knob, {"gain": -1, "level": -1, "x": 0}) == [
        "x: unknown field; known: level, gain, cap, scale", f"level: {LEVEL_RULE}", f"gain: {GAIN_RULE}"]


def test_input_order_reports_in_the_order_given() -> None:
    assert errors(Ordered, {"gain": -1, "x": 0, "level": -1}) == [
        f"gain: {GAIN_RULE}", "x: unknown field; known: level, gain, cap, scale", f"level: {LEVEL_RULE}"]


def test_a_rule_raised_by_a_validator_keeps_its_own_words() -> None:
    from pydantic import field_validator

    class Named(Checked):
        RULES: ClassVar[Mapping[str, str]] = {"item": "the generic rule"}
        item: str

        @field_validator("item")
        @classmethod
        def _item(cls, value: str) -> str:
            if value == "bad":
                raise rule(f"{value!r}: not this one")
            return value

    assert Named.check({"item": "good"}).item == "good"
    assert errors(Named, {"item": "bad"}) == ["item: 'bad': not this one"]
    assert errors(Named, {"item": 3}) == ["item: the generic rule"]


@pytest.mark.parametrize("given", [None, "2h", "30s", "2026-01-01", "2026-01-01T10:00:00+02:00", "1700000000", 5, 5.5])
def test_validate_since_accepts_durations_dates_and_epoch_seconds(given: Any) -> None:
    value = validate_since(given)
    assert value is None if given is None else math.isfinite(value or math.nan)


def test_validate_since_gives_epoch_seconds() -> None:
    assert validate_since("2026-01-01") == 1767225600.0
    assert validate_since("1700000000") == 1700000000.0


@pytest.mark.parametrize("given", ["", " ", "yesterday-ish", "1e400", "nan", "inf", True, math.nan, [1]])
def test_validate_since_refuses_anything_else_naming_the_field(given: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_since(given)
    assert [str(e) for e in exc.value.errors] == [f"since: {SINCE_RULE}"]
