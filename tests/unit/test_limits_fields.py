"""The rules of a limits change and of the budget (:mod:`falq.shared.limits.fields`), without Redis."""

from __future__ import annotations

import math
from typing import Any

import pytest

from falq.shared.errors import InvalidInput
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.limits.fields import (
    BUDGET_RULE,
    BURST_RULE,
    CAP_RULE,
    CAP_TEXT_RULE,
    CAPS_RULE,
    FLAG_RULE,
    NOTHING_RULE,
    OUTSTANDING_RULE,
    RATE_RULE,
    LimitsChange,
    budget_request,
    limits_request,
    validate_budget,
    validate_limits,
)
from falq.shared.validation import OBJECT_RULE, REQUIRED_RULE

EDIT = "fal-ai/qwen-image-2/edit"
PRO_EDIT = "fal-ai/qwen-image-2/pro/edit"
KNOWN = ", ".join(ENDPOINTS)


def messages(call: Any, *args: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        call(*args, **kwargs)
    return [str(e) for e in exc.value.errors]


def test_a_valid_change_is_converted() -> None:
    change = validate_limits(rate=" 7.5 ", burst="2", max_outstanding=9.0,
                             endpoint_caps=[f"{PRO_EDIT}=4", f"{EDIT}=none"], resume=True)
    assert change == LimitsChange(rate=7.5, burst=2, max_outstanding=9,
                                  endpoint_caps={PRO_EDIT: 4, EDIT: None}, resume=True)
    assert validate_limits(rate=0) == LimitsChange(rate=0.0)
    assert validate_limits(endpoint_caps={EDIT: "3", PRO_EDIT: None}).endpoint_caps == {EDIT: 3, PRO_EDIT: None}
    assert validate_limits(reset=True) == LimitsChange(reset=True)


def test_a_later_cap_of_the_same_endpoint_wins() -> None:
    assert validate_limits(endpoint_caps=[f"{EDIT}=1", f"{EDIT}=2"]).endpoint_caps == {EDIT: 2}


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"rate": -1}, [f"rate: {RATE_RULE}"]),
    ({"rate": 0.0005}, [f"rate: {RATE_RULE}"]),
    ({"rate": 1e7}, [f"rate: {RATE_RULE}"]),
    ({"rate": math.nan}, [f"rate: {RATE_RULE}"]),
    ({"rate": "fast"}, [f"rate: {RATE_RULE}"]),
    ({"rate": True}, [f"rate: {RATE_RULE}"]),
    ({"burst": 0}, [f"burst: {BURST_RULE}"]),
    ({"burst": "1.5"}, [f"burst: {BURST_RULE}"]),
    ({"burst": 1_000_001}, [f"burst: {BURST_RULE}"]),
    ({"max_outstanding": -1}, [f"max_outstanding: {OUTSTANDING_RULE}"]),
    ({"max_outstanding": "many"}, [f"max_outstanding: {OUTSTANDING_RULE}"]),
    ({"endpoint_caps": 4}, [f"max_outstanding_per_endpoint: {CAPS_RULE}"]),
    ({"endpoint_caps": "x=1"}, [f"max_outstanding_per_endpoint: {CAPS_RULE}"]),
    ({"endpoint_caps": {"nope": 1}}, [f"max_outstanding_per_endpoint: 'nope': unknown endpoint; known: {KNOWN}"]),
    ({"endpoint_caps": {EDIT: -1}}, [f"max_outstanding_per_endpoint: '{EDIT}': {CAP_RULE}"]),
    ({"endpoint_caps": {EDIT: "none"}}, [f"max_outstanding_per_endpoint: '{EDIT}': {CAP_RULE}"]),
    ({"endpoint_caps": [f"{EDIT}=²"]}, [f"max_outstanding_per_endpoint: '{EDIT}': {CAP_RULE}"]),
    ({"endpoint_caps": ["nope", "=3"]}, [f"max_outstanding_per_endpoint: 'nope': {CAP_TEXT_RULE}",
                                         f"max_outstanding_per_endpoint: '=3': {CAP_TEXT_RULE}"]),
    ({"resume": "yes"}, [f"resume: {FLAG_RULE}"]),
    ({"reset": 1}, [f"reset: {FLAG_RULE}"]),
    ({"resume": None}, [f"resume: {FLAG_RULE}"]),
    ({}, [NOTHING_RULE]),
    ({"rate": None, "resume": False}, [NOTHING_RULE]),
    ({"reset": 1, "rate": -1, "endpoint_caps": {"x": 1, EDIT: 1.5}},
     [f"rate: {RATE_RULE}", f"max_outstanding_per_endpoint: 'x': unknown endpoint; known: {KNOWN}",
      f"max_outstanding_per_endpoint: '{EDIT}': {CAP_RULE}", f"reset: {FLAG_RULE}"]),
])
def test_each_limits_rule_names_its_field(kwargs: dict[str, Any], expected: list[str]) -> None:
    assert messages(validate_limits, **kwargs) == expected


def test_a_limits_document_is_converted() -> None:
    assert limits_request({"rate": "20", "max_outstanding_per_endpoint": {EDIT: None}, "resume": None}) == \
        LimitsChange(rate=20.0, endpoint_caps={EDIT: None})


@pytest.mark.parametrize(("doc", "expected"), [
    ([1], [OBJECT_RULE]),
    ("rate=1", [OBJECT_RULE]),
    ({"colour": "red", "rate": -1},
     ["colour: unknown field; known: rate, burst, max_outstanding, max_outstanding_per_endpoint, resume, reset",
      f"rate: {RATE_RULE}"]),
    ({"max_outstanding_per_endpoint": [f"{EDIT}=1"]}, [f"max_outstanding_per_endpoint: {CAPS_RULE}"]),
    ({"rate": None, "resume": None}, [NOTHING_RULE]),
    ({"burst": 0, "rate": -1}, [f"rate: {RATE_RULE}", f"burst: {BURST_RULE}"]),
])
def test_each_limits_document_rule_names_its_field(doc: Any, expected: list[str]) -> None:
    assert messages(limits_request, doc) == expected


@pytest.mark.parametrize(("given", "expected"), [(None, None), (0, 0.0), ("50", 50.0), (1e12, 1e12)])
def test_a_valid_budget(given: Any, expected: float | None) -> None:
    assert validate_budget(given) == expected
    assert budget_request({"budget_usd": given}) == expected


@pytest.mark.parametrize("given", [-1, 1e13, "lots", "none", True, math.inf])
def test_a_budget_out_of_bounds_names_its_rule(given: Any) -> None:
    assert messages(validate_budget, given) == [f"budget_usd: {BUDGET_RULE}"]


@pytest.mark.parametrize(("doc", "expected"), [
    ({}, [f"budget_usd: {REQUIRED_RULE}"]),
    ({"budget_usd": -1, "cap": 3}, ["cap: unknown field; known: budget_usd", f"budget_usd: {BUDGET_RULE}"]),
    ([50], [OBJECT_RULE]),
])
def test_each_budget_document_rule_names_its_field(doc: Any, expected: list[str]) -> None:
    assert messages(budget_request, doc) == expected
