"""The rules of a tenant's settings, its name and an API key (:mod:`falq.shared.tenants.fields`), without Redis."""

from __future__ import annotations

import math
from typing import Any

import pytest

from falq.shared.errors import InvalidInput
from falq.shared.tenants.fields import (
    ENDPOINTS_RULE,
    LABEL_RULE,
    S3_PREFIX_RULE,
    SCOPES_RULE,
    TENANT_BUDGET_RULE,
    TENANT_CAP_RULE,
    TENANT_PRIORITY_RULE,
    TENANT_RATE_RULE,
    WEIGHT_RULE,
    tenant_request,
    validate_key_fields,
    validate_tenant_fields,
    validate_tenant_name,
)
from falq.shared.tenants.store import NAME_RULE
from falq.shared.validation import OBJECT_RULE, REQUIRED_RULE

EDIT = "fal-ai/qwen-image-2/edit"
UNKNOWN = "unknown field; known: weight, max_outstanding, rate, budget_usd, endpoints, s3_prefix, priority"


def errors(call: Any, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidInput) as exc:
        call(*args, **kwargs)
    return [(e.field, e.message) for e in exc.value.errors]


def test_valid_settings_come_back_as_stored_only_those_given() -> None:
    assert validate_tenant_fields({"weight": "2", "max_outstanding": "none"}) == {"weight": 2.0,
                                                                                  "max_outstanding": None}
    assert validate_tenant_fields({
        "max_outstanding": "8", "rate": 1e6, "budget_usd": " NULL ", "endpoints": [EDIT, EDIT],
        "s3_prefix": "a/b.c_d-e", "priority": " Low ",
    }) == {"max_outstanding": 8, "rate": 1e6, "budget_usd": None, "endpoints": [EDIT], "s3_prefix": "a/b.c_d-e",
           "priority": "low"}
    assert validate_tenant_fields({"endpoints": None, "s3_prefix": None, "priority": None}) == {
        "endpoints": [], "s3_prefix": "", "priority": None}
    assert validate_tenant_fields({}) == {}


@pytest.mark.parametrize(("fields", "expected"), [
    ({"weight": 0}, [("weight", WEIGHT_RULE)]),
    ({"weight": "1001"}, [("weight", WEIGHT_RULE)]),
    ({"weight": None}, [("weight", WEIGHT_RULE)]),
    ({"weight": True}, [("weight", WEIGHT_RULE)]),
    ({"max_outstanding": -1}, [("max_outstanding", TENANT_CAP_RULE)]),
    ({"max_outstanding": "1.5"}, [("max_outstanding", TENANT_CAP_RULE)]),
    ({"rate": 1_000_001}, [("rate", TENANT_RATE_RULE)]),
    ({"rate": "fast"}, [("rate", TENANT_RATE_RULE)]),
    ({"budget_usd": -1}, [("budget_usd", TENANT_BUDGET_RULE)]),
    ({"budget_usd": math.inf}, [("budget_usd", TENANT_BUDGET_RULE)]),
    ({"endpoints": ["fal-ai/nope", 3]}, [("endpoints", f"'fal-ai/nope', 3: {ENDPOINTS_RULE}")]),
    ({"endpoints": EDIT}, [("endpoints", f"'{EDIT}': {ENDPOINTS_RULE}")]),
    ({"s3_prefix": "../up"}, [("s3_prefix", S3_PREFIX_RULE)]),
    ({"s3_prefix": "a//b"}, [("s3_prefix", S3_PREFIX_RULE)]),
    ({"s3_prefix": "a" * 201}, [("s3_prefix", S3_PREFIX_RULE)]),
    ({"s3_prefix": 5}, [("s3_prefix", S3_PREFIX_RULE)]),
    ({"priority": "urgent"}, [("priority", TENANT_PRIORITY_RULE)]),
    ({"bogus": 1}, [("bogus", UNKNOWN)]),
    # in the order given, unknown fields among them
    ({"max_outstanding": -1, "bogus": 1, "weight": "nan"},
     [("max_outstanding", TENANT_CAP_RULE), ("bogus", UNKNOWN), ("weight", WEIGHT_RULE)]),
])
def test_each_tenant_rule_names_its_field(fields: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors(validate_tenant_fields, fields) == expected


@pytest.mark.parametrize("name", ["shop", "a", "0-x_y", "a" * 40])
def test_a_valid_tenant_name(name: str) -> None:
    assert validate_tenant_name(name) == name


@pytest.mark.parametrize("name", ["Shop", "-x", "_x", "a" * 41, "", None, 3, "a b", "shop\n"])
def test_a_bad_tenant_name_names_the_rule(name: Any) -> None:
    assert errors(validate_tenant_name, name) == [("name", NAME_RULE)]


def test_a_tenant_document_keeps_its_fields_in_the_order_given() -> None:
    assert tenant_request({"rate": 1, "name": "shop", "weight": "x"}, with_name=True) == (
        "shop", {"rate": 1, "weight": "x"})
    assert tenant_request({"weight": 2}, with_name=False) == (None, {"weight": 2})


@pytest.mark.parametrize(("doc", "with_name", "expected"), [
    ([], True, [("", OBJECT_RULE)]),
    ({}, True, [("name", REQUIRED_RULE)]),
    ({"name": None}, True, [("name", REQUIRED_RULE)]),
    ({"name": 3}, True, [("name", NAME_RULE)]),
    ({"name": "shop", "bogus": 1}, True, [("bogus", f"unknown field; known: name, {UNKNOWN.split('known: ')[1]}")]),
    ({"name": "shop"}, False, [("name", UNKNOWN)]),
])
def test_each_tenant_document_rule_names_its_field(doc: Any, with_name: bool,
                                                   expected: list[tuple[str, str]]) -> None:
    assert errors(tenant_request, doc, with_name=with_name) == expected


def test_a_valid_key_request() -> None:
    key = validate_key_fields(["read", "submit"], "ci runner")
    assert (key.scopes, key.label) == (("submit", "read"), "ci runner")
    assert validate_key_fields("admin").scopes == ("admin",)


@pytest.mark.parametrize(("scopes", "label", "expected"), [
    ([], "", [("scopes", SCOPES_RULE)]),
    (["read", "read"], "", [("scopes", SCOPES_RULE)]),
    (["root"], "", [("scopes", SCOPES_RULE)]),
    (5, "", [("scopes", SCOPES_RULE)]),
    (["read"], "x" * 101, [("label", LABEL_RULE)]),
    (["read"], "a\nb", [("label", LABEL_RULE)]),
    (["read"], None, [("label", LABEL_RULE)]),
    ([], 7, [("scopes", SCOPES_RULE), ("label", LABEL_RULE)]),
])
def test_each_key_rule_names_its_field(scopes: Any, label: Any, expected: list[tuple[str, str]]) -> None:
    assert errors(validate_key_fields, scopes, label) == expected
