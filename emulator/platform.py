"""fal's platform API on the emulator: account prices, billing events, usage, and what was billed.

* ``GET /v1/models/pricing?endpoint_id=A,B`` (any valid key): ``{"prices": [{endpoint_id,
  unit_price, unit, currency}], "has_more", "next_cursor"}``. The prices are the ACCOUNT's
  (``account_prices``: 0.03 standard, 0.065 pro by default), deliberately unlike the list prices
  (0.035 / 0.075), so a client billing at list prices shows. At most ``PRICING_PAGE`` prices per
  page: a client must follow ``next_cursor`` (``cursor=``) as it must on fal.
* ``GET /v1/models/billing-events?start=&end=&endpoint_id=&limit=&cursor=`` and
  ``GET /v1/models/usage?start=&end=&endpoint_id=`` need an ADMIN key (``admin_keys``; another
  key: 403, none: 401). Events are what this emulator billed: one per request that answered its
  result with 200, ``output_units`` = ``x-fal-billable-units`` (1 per image x ``num_images``),
  ``cost_total`` = units x the account price. They appear ``billing_delay_s`` after completion.
* ``GET /_emulator/billing``: the billed total to the micro-dollar and the events (introspection,
  no auth, as the other ``/_emulator`` routes), so a benchmark can compare a client's spend with it.
* ``platform_down``: every platform route answers 503 with an nginx page (a pricing outage).

Field names of billing events follow fal's docs page and third-party clients mirroring it
(``request_id, endpoint_id, timestamp, output_units, unit_price, cost_total``); the evidence for the
exact envelope (``billing_events``) is thin.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from falq.emulator.config import EmulatorConfig
from falq.shared.fal.endpoints import ENDPOINTS

if TYPE_CHECKING:
    from falq.emulator.state import RequestRecord

#: Prices per page of ``/v1/models/pricing`` (small, so clients must follow the cursor).
PRICING_PAGE = 2
#: Most billing events per page.
MAX_EVENTS_PAGE = 10_000
NGINX_503 = "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 " \
            "Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>"


def account_price(config: EmulatorConfig, endpoint: str) -> float:
    """The account's unit price of ``endpoint`` (the list price when none is configured)."""
    if endpoint in config.account_prices:
        return float(config.account_prices[endpoint])
    spec = ENDPOINTS.get(endpoint)
    return 0.075 if spec is not None and spec.tier == "pro" else 0.035


class Ledger:
    """Every billed request, in completion order (thread-safe; amounts in micro-dollars)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self.total_micro = 0

    def bill(self, rec: RequestRecord, units: int, config: EmulatorConfig) -> None:
        """Bill a request that completed with a result (once per request id)."""
        price = account_price(config, rec.endpoint)
        cost_micro = round(units * price * 1_000_000)
        with self._lock:
            if rec.id in self._seen:
                return
            self._seen.add(rec.id)
            self.total_micro += cost_micro
            self.events.append({
                "request_id": rec.id, "endpoint_id": rec.endpoint, "key": rec.key_hash,
                "timestamp": time.time(), "output_units": units, "unit_price": price,
                "cost_micro": cost_micro,
            })

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str | None, default: float) -> float:
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _json(code: int, body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), code, media_type="application/json")


def _emu(request: Request) -> Any:
    """The :class:`falq.emulator.core.Emulator` behind the app (not imported: core imports this module)."""
    return request.app.state.emulator


def _key(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "key" and key.strip() else None


def _guard(request: Request, *, admin: bool) -> Response | None:
    """The answer that refuses the call (outage, no key, not an admin key), or None."""
    emu = _emu(request)
    if emu.config.platform_down:
        return Response(NGINX_503, 503, media_type="text/html")
    key = _key(request)
    if key is None:
        return _json(401, {"detail": "Missing or invalid Authorization header (expected 'Key ...')"})
    if admin and key not in emu.config.admin_keys:
        return _json(403, {"detail": "This endpoint requires an ADMIN API key"})
    if not admin and emu.config.accepted_keys is not None and key not in emu.config.accepted_keys \
            and key not in emu.config.admin_keys:
        return _json(401, {"detail": "Invalid API key"})
    return None


def _endpoint_ids(request: Request) -> list[str]:
    out: list[str] = []
    for value in request.query_params.getlist("endpoint_id"):
        out.extend(p.strip() for p in value.split(",") if p.strip())
    return list(dict.fromkeys(out))


def _cursor(request: Request) -> int:
    raw = request.query_params.get("cursor")
    if not raw:
        return 0
    try:
        return max(0, int(base64.b64decode(raw).decode()))
    except (ValueError, UnicodeDecodeError):
        return -1


def _next(offset: int, total: int) -> str | None:
    return base64.b64encode(str(offset).encode()).decode() if offset < total else None


async def pricing(request: Request) -> Response:
    refused = _guard(request, admin=False)
    if refused is not None:
        return refused
    ids = _endpoint_ids(request)
    if not 1 <= len(ids) <= 50:
        return _json(422, {"detail": "endpoint_id: give 1 to 50 endpoint ids"})
    start = _cursor(request)
    if start < 0:
        return _json(422, {"detail": "cursor: invalid"})
    cfg = _emu(request).config
    known = [e for e in ids if e in ENDPOINTS or e in cfg.account_prices]
    page = known[start:start + PRICING_PAGE]
    cursor = _next(start + len(page), len(known))
    return _json(200, {"prices": [{"endpoint_id": e, "unit_price": account_price(cfg, e), "unit": "image",
                                   "currency": "USD"} for e in page],
                       "next_cursor": cursor, "has_more": cursor is not None})


def _window(request: Request) -> tuple[float, float]:
    now = time.time()
    return (_parse_time(request.query_params.get("start"), now - 86400),
            _parse_time(request.query_params.get("end"), now))


def _visible(request: Request) -> list[dict[str, Any]]:
    """Billed events in the query's window and endpoints, as fal would show them by now."""
    emu = _emu(request)
    start, end = _window(request)
    ids = set(_endpoint_ids(request))
    shown_until = time.time() - emu.config.billing_delay_s
    return [e for e in emu.ledger.snapshot()
            if start <= e["timestamp"] < end and e["timestamp"] <= shown_until
            and (not ids or e["endpoint_id"] in ids)]


async def billing_events(request: Request) -> Response:
    refused = _guard(request, admin=True)
    if refused is not None:
        return refused
    try:
        events = _visible(request)
        limit = int(request.query_params.get("limit") or 1000)
    except ValueError:
        return _json(422, {"detail": "start/end must be ISO 8601 dates; limit an integer"})
    if not 1 <= limit <= MAX_EVENTS_PAGE:
        return _json(422, {"detail": f"limit: 1 to {MAX_EVENTS_PAGE}"})
    start = _cursor(request)
    if start < 0:
        return _json(422, {"detail": "cursor: invalid"})
    page = events[start:start + limit]
    cursor = _next(start + len(page), len(events))
    return _json(200, {
        "billing_events": [{
            "request_id": e["request_id"], "endpoint_id": e["endpoint_id"], "timestamp": _iso(e["timestamp"]),
            "output_units": e["output_units"], "unit_price": e["unit_price"],
            "cost_subtotal": e["cost_micro"] / 1e6, "cost_discount": 0.0, "cost_total": e["cost_micro"] / 1e6,
            "cost_estimate_nano_usd": e["cost_micro"] * 1000, "currency": "USD"} for e in page],
        "next_cursor": cursor, "has_more": cursor is not None})


async def usage(request: Request) -> Response:
    refused = _guard(request, admin=True)
    if refused is not None:
        return refused
    try:
        events = _visible(request)
    except ValueError:
        return _json(422, {"detail": "start/end must be ISO 8601 dates"})
    by: dict[str, dict[str, Any]] = {}
    for e in events:
        row = by.setdefault(e["endpoint_id"], {"endpoint_id": e["endpoint_id"], "unit": "image", "quantity": 0,
                                               "unit_price": e["unit_price"], "cost_micro": 0})
        row["quantity"] += e["output_units"]
        row["cost_micro"] += e["cost_micro"]
    summary = [{**{k: v for k, v in r.items() if k != "cost_micro"}, "cost": r["cost_micro"] / 1e6,
                "currency": "USD"} for r in by.values()]
    return _json(200, {"summary": summary, "time_series": [], "next_cursor": None, "has_more": False})


async def billed(request: Request) -> Response:
    """``/_emulator/billing``: the billed total (to the micro-dollar) and every billing event."""
    ledger = _emu(request).ledger
    events = ledger.snapshot()
    return _json(200, {"billed_total_usd": ledger.total_micro / 1e6, "billed_total_micro": ledger.total_micro,
                       "requests_billed": len(events), "events": events})


__all__ = ["PRICING_PAGE", "Ledger", "account_price", "billed", "billing_events", "pricing", "usage"]
