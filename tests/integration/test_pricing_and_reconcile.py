"""Units of cost truth: reading fal's pricing API (pages, bad answers, the fallback), the batch
cap's input rule, the priority header, and reconcile's comparison. Only ``httpx.MockTransport``
stands in for fal; the Redis ones use this module's own redis-server."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import httpx
import pytest
import redis

from falq.shared.errors import InvalidInput
from falq.shared.fal.client import submit_headers
from falq.shared.settings import Settings
from falq.shared.spend.batch_cap import BatchCaps, parse_cap
from falq.shared.spend.pricing import Pricing, PricingUnavailable, fetch_prices
from falq.shared.spend.reconcile import BillingUnavailable, FalqCost, compare, fetch_billing_events

T2I = "fal-ai/qwen-image-2/text-to-image"
PRO = "fal-ai/qwen-image-2/pro/edit"


def _settings(**kw: Any) -> Settings:
    return Settings(fal_key="unit-test-key-123456", fal_platform_url="https://platform.test/v1", **kw)


def _paged(prices: dict[str, float], page: int = 1) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        ids = request.url.params["endpoint_id"].split(",")
        start = int(request.url.params.get("cursor", "0"))
        known = [e for e in ids if e in prices]
        chunk = known[start:start + page]
        more = start + page < len(known)
        return httpx.Response(200, json={"prices": [{"endpoint_id": e, "unit_price": prices[e], "unit": "image",
                                                     "currency": "USD"} for e in chunk],
                                         "has_more": more, "next_cursor": str(start + page) if more else None})

    return httpx.MockTransport(handler), seen


def test_fetch_prices_follows_every_page_and_sends_the_key_only_in_the_header() -> None:
    transport, seen = _paged({T2I: 0.03, PRO: 0.065, "fal-ai/qwen-image-2/edit": 0.031}, page=1)
    got = fetch_prices(_settings(), [T2I, PRO, "fal-ai/qwen-image-2/edit"], transport=transport)
    assert got == {T2I: (0.03, "image"), PRO: (0.065, "image"), "fal-ai/qwen-image-2/edit": (0.031, "image")}
    assert len(seen) == 3  # one page per price: the cursor was followed to the end
    assert all(r.headers["authorization"] == "Key unit-test-key-123456" for r in seen)
    assert all("unit-test-key" not in str(r.url) for r in seen)
    assert seen[0].url.path == "/v1/models/pricing"


@pytest.mark.parametrize("answer", [
    httpx.Response(500, text="oops"), httpx.Response(200, text="<html>nginx</html>"),
    httpx.Response(200, json={"no": "prices"}), httpx.Response(401, json={"detail": "bad key"}),
])
def test_unusable_pricing_answers_raise_a_typed_error_without_the_key(answer: httpx.Response) -> None:
    transport = httpx.MockTransport(lambda request: answer)
    with pytest.raises(PricingUnavailable) as info:
        fetch_prices(_settings(), [T2I], transport=transport)
    assert "unit-test-key" not in str(info.value)


def test_negative_nan_or_foreign_currency_prices_are_ignored() -> None:
    body = json.dumps({"prices": [
        {"endpoint_id": T2I, "unit_price": -1, "currency": "USD"},
        {"endpoint_id": PRO, "unit_price": 0.05, "currency": "EUR"},
        {"endpoint_id": "fal-ai/qwen-image-2/edit", "unit_price": 0.02, "currency": "USD"},
        {"endpoint_id": "fal-ai/qwen-image-2/pro/text-to-image", "unit_price": float("nan"), "currency": "USD"},
    ], "has_more": False, "next_cursor": None})
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    got = fetch_prices(_settings(), [T2I, PRO, "fal-ai/qwen-image-2/edit"], transport=transport)
    assert got == {"fal-ai/qwen-image-2/edit": (0.02, "image")}


def test_pricing_caches_in_redis_and_falls_back_to_list_prices_with_a_warning(
        r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    s = _settings(redis_url="redis://unused/0")
    transport, seen = _paged({T2I: 0.03, PRO: 0.065}, page=50)
    p = Pricing(r, s, transport=transport)
    q = p.quote(T2I)
    assert (q.unit_price, q.source) == (0.03, "fal_pricing_api")
    assert q.cost(3) == 0.09
    # Another process reads Redis, not fal.
    other = Pricing(r, s, transport=httpx.MockTransport(lambda req: pytest.fail("asked fal again")))
    assert other.quote(PRO).unit_price == 0.065
    assert len(seen) == 1
    # fal unreachable: list prices, a warning, and the source says so.
    p.invalidate()

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with caplog.at_level(logging.WARNING, logger="falq.pricing"):
        fb = Pricing(r, s, transport=httpx.MockTransport(down)).quote(T2I)
    assert (fb.unit_price, fb.source) == (0.035, "list_price_fallback")
    assert any("list prices" in rec.getMessage() for rec in caplog.records)
    assert "unit-test-key" not in caplog.text


def test_a_process_without_the_fal_key_reads_the_workers_prices_and_never_overwrites_them(r: redis.Redis) -> None:
    transport, _ = _paged({T2I: 0.03}, page=50)
    Pricing(r, _settings(), transport=transport).quote(T2I)
    keyless = Pricing(r, Settings(fal_key=None), transport=httpx.MockTransport(lambda req: pytest.fail("asked")))
    assert keyless.quote(T2I).unit_price == 0.03
    r.flushall()
    fresh = Pricing(r, Settings(fal_key=None))
    assert fresh.quote(T2I).source == "list_price_fallback" and r.get("falq:pricing") is None


@pytest.mark.parametrize("bad", [-1, "-0.5", "nan", float("nan"), math.inf, "abc", True, 2e9, [], {}])
def test_a_cap_refuses_negative_nan_infinite_or_non_numbers_naming_the_field(bad: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_cap(bad)
    assert info.value.errors[0].field == "max_spend"
    assert "USD" in info.value.errors[0].message


def test_cap_values_and_none() -> None:
    assert parse_cap("25.00") == 25.0 and parse_cap(0) == 0.0 and parse_cap("none") is None and parse_cap(None) is None


def test_cap_reserves_once_per_job_settles_to_what_fal_billed_and_refunds(r: redis.Redis) -> None:
    caps = BatchCaps(r, prefix="falq")
    caps.set_cap("b1", 0.09)
    assert caps.reserve("b1", "j1", 30_000) and caps.reserve("b1", "j1", 30_000)  # idempotent
    assert caps.reserve("b1", "j2", 30_000) and caps.reserve("b1", "j3", 30_000)
    assert not caps.reserve("b1", "j4", 30_000)  # 0.12 > 0.09: nothing past the cap
    st = caps.state("b1")
    assert (st.reserved_usd, st.billed_usd, st.waiting) == (0.09, 0.0, 1)
    caps.settle("b1", "j1", 0.03)
    caps.settle("b1", "j1", 0.03)  # once per job
    caps.refund("b1", "j2")
    st = caps.state("b1")
    assert (round(st.reserved_usd, 6), st.billed_usd) == (0.03, 0.03)
    assert caps.reserve("b1", "j4", 30_000)  # room again
    assert caps.state("b1").waiting == 0
    caps.set_cap("b1", None)
    assert caps.reserve("b1", "j5", 10**9) and caps.state("b1").max_spend_usd is None


def test_priority_header_is_normal_for_both_lanes_by_default_and_low_only_when_chosen() -> None:
    s = Settings(fal_media_expiry_s=None)
    assert submit_headers(s, "bulk")["X-Fal-Queue-Priority"] == "normal"
    assert submit_headers(s, "interactive")["X-Fal-Queue-Priority"] == "normal"
    assert submit_headers(s, "bulk", "low")["X-Fal-Queue-Priority"] == "low"
    assert submit_headers(Settings(fal_priority_bulk="low"), "bulk")["X-Fal-Queue-Priority"] == "low"
    assert submit_headers(Settings(fal_priority_bulk="low"), "bulk", "normal")["X-Fal-Queue-Priority"] == "normal"
    assert "low" in (Settings.model_fields["fal_priority_bulk"].description or "")


def test_compare_reports_every_kind_of_difference() -> None:
    costs = {"r1": FalqCost("j1", T2I, 0.03, 1), "r2": FalqCost("j2", T2I, 0.06, 2),
             "r3": FalqCost("j3", T2I, 0.03, 1)}
    events = [{"request_id": "r1", "cost_total": 0.03, "output_units": 1, "endpoint_id": T2I},
              {"request_id": "r2", "cost_total": 0.09, "output_units": 3, "endpoint_id": T2I},
              {"request_id": "r0", "cost_total": 0.03, "output_units": 1, "endpoint_id": T2I}]
    diffs = {d.request_id: d for d in compare(costs, {"r0": "j0"}, events)}
    assert set(diffs) == {"r0", "r2", "r3"}
    assert diffs["r0"].kind == "only_at_fal" and diffs["r0"].job_id == "j0"
    assert diffs["r2"].kind == "cost" and diffs["r2"].fal_usd == 0.09
    assert diffs["r3"].kind == "only_in_falq"


def test_billing_events_need_the_admin_key_and_follow_pages() -> None:
    with pytest.raises(BillingUnavailable) as info:
        fetch_billing_events(_settings(), 0.0)
    assert "FAL_ADMIN_KEY" in str(info.value)
    pages = {None: {"billing_events": [{"request_id": "a", "cost_total": 0.03}], "has_more": True,
                    "next_cursor": "2"},
             "2": {"billing_events": [{"request_id": "b", "cost_total": 0.03}], "has_more": False,
                   "next_cursor": None}}
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    got = fetch_billing_events(_settings(fal_admin_key="admin-secret-999"), 0.0,
                               transport=httpx.MockTransport(handler))
    assert [e["request_id"] for e in got] == ["a", "b"]
    assert all(r.headers["authorization"] == "Key admin-secret-999" for r in seen)
    refused = httpx.MockTransport(lambda req: httpx.Response(403, json={"detail": "admin only"}))
    with pytest.raises(BillingUnavailable) as info:
        fetch_billing_events(_settings(fal_admin_key="admin-secret-999"), 0.0, transport=refused)
    assert "admin-secret" not in str(info.value)
