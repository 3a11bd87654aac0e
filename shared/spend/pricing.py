"""The one place falq learns what a unit of an endpoint costs this fal account.

fal's price can differ per account ("Custom pricing or discounts may be applied based on account
status", https://fal.ai/docs/platform-apis/v1/models/pricing). So the unit prices come from fal's
platform API::

    GET {FALQ_FAL_PLATFORM_URL}/models/pricing?endpoint_id=A,B     Authorization: Key $FAL_KEY
    -> {"prices": [{"endpoint_id", "unit_price", "unit", "currency"}], "has_more", "next_cursor"}

(paginated: ``cursor=next_cursor`` while ``has_more``). The answer is cached in Redis
(``{p}:pricing``, one JSON document shared by every worker, producer and gateway) and read again
every ``FALQ_PRICING_REFRESH_S`` (1 h). When the API cannot be read, falq uses the configured list
prices (``FALQ_PRICE_STANDARD`` / ``FALQ_PRICE_PRO``), logs a warning, and asks again after
``FALQ_PRICING_RETRY_S``. Each :class:`Quote` says where its price came from
(``fal_pricing_api`` or ``list_price_fallback``); job records carry it.

A job's billed cost is fal's ``x-fal-billable-units`` x the quote's unit price; budget admission,
batch caps and ``--dry-run`` quotes use the same price.

Example::

    pricing = Pricing(redis_client, settings)
    q = pricing.quote("fal-ai/qwen-image-2/edit")
    q.unit_price, q.source          # (0.03, 'fal_pricing_api')
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import redis

from falq.shared.errors import RetryableError
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.keys import Keys
from falq.shared.settings import Settings
from falq.shared.spend.platform import pages

log = logging.getLogger("falq.pricing")

PriceSource = Literal["fal_pricing_api", "list_price_fallback"]
#: Most endpoint ids fal takes in one pricing call (its docs: 1-50).
MAX_IDS_PER_CALL = 50
#: Pages read at most (a guard against a cursor that never ends).
MAX_PAGES = 100
#: How long a process trusts its own copy before it reads Redis again (seconds).
LOCAL_TTL_S = 5.0


class PricingUnavailable(RetryableError):
    """fal's pricing API could not be read (unreachable, refused, or an unusable answer)."""

    kind = "pricing_unavailable"


@dataclass(frozen=True)
class Quote:
    """The unit price of one endpoint for this account, and where it came from."""

    endpoint: str
    unit_price: float
    source: PriceSource
    unit: str = "image"
    fetched_at: float = 0.0

    def cost(self, units: float) -> float:
        """USD for ``units`` billed units, rounded to the micro-dollar."""
        return round(units * self.unit_price, 6)


def list_price(endpoint: str, settings: Settings) -> float:
    """The configured list price of ``endpoint`` (0 for an unknown endpoint)."""
    spec = ENDPOINTS.get(endpoint)
    return settings.price_for(spec.tier) if spec is not None else 0.0


def fetch_prices(settings: Settings, endpoints: Iterable[str], *,
                 transport: httpx.BaseTransport | None = None) -> dict[str, tuple[float, str]]:
    """``endpoint -> (unit_price, unit)`` from fal's pricing API, every page followed.

    Raises :class:`PricingUnavailable` when the API cannot be read or answers something that is
    not a price list. The key is sent only in the Authorization header and never appears in the
    error text.
    """
    ids = sorted(set(endpoints))
    key = settings.fal_key_value()
    if not key:
        raise PricingUnavailable("no FAL_KEY: fal's pricing API needs the account's key")
    out: dict[str, tuple[float, str]] = {}
    url = f"{settings.fal_platform_url}/models/pricing"
    timeout = httpx.Timeout(min(10.0, settings.fal_http_timeout_s))
    with httpx.Client(timeout=timeout, transport=transport) as client:
        for start in range(0, len(ids), MAX_IDS_PER_CALL):
            params: dict[str, str] = {"endpoint_id": ",".join(ids[start:start + MAX_IDS_PER_CALL])}
            for doc in pages(client, url, params, key=key, what="fal's pricing API", error=PricingUnavailable,
                             max_pages=MAX_PAGES):
                prices = doc.get("prices")
                if not isinstance(prices, list):
                    raise PricingUnavailable("fal's pricing answer has no 'prices' list")
                for p in prices:
                    if not isinstance(p, dict):
                        continue
                    ep, price = p.get("endpoint_id"), p.get("unit_price")
                    currency = str(p.get("currency") or "USD").upper()
                    if not isinstance(ep, str) or isinstance(price, bool) or not isinstance(price, int | float):
                        continue
                    if not math.isfinite(price) or price < 0 or currency != "USD":
                        log.warning("ignoring fal's price for %s: %r %s", ep, price, currency)
                        continue
                    out[ep] = (float(price), str(p.get("unit") or "image"))
    return out


class Pricing:
    """The account's unit prices, cached in Redis and refreshed every ``FALQ_PRICING_REFRESH_S``.

    Parameters:
        client: Redis (the cache every process shares).
        settings: platform URL, key, list prices, refresh and retry intervals.
        transport: an httpx transport (unit tests).
    """

    def __init__(self, client: redis.Redis, settings: Settings, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.r = client
        self.s = settings
        self.key = Keys(settings.key_prefix).pricing
        self.transport = transport
        self._local: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._missing: set[str] = set()

    def quote(self, endpoint: str) -> Quote:
        """The unit price of ``endpoint`` now (read from fal when the cache is stale)."""
        doc = self._doc()
        entry = doc.get("prices", {}).get(endpoint)
        if doc.get("source") == "fal_pricing_api" and isinstance(entry, dict):
            return Quote(endpoint, float(entry["unit_price"]), "fal_pricing_api", str(entry.get("unit", "image")),
                         float(doc.get("fetched_at", 0.0)))
        if doc.get("source") == "fal_pricing_api" and endpoint not in self._missing:
            self._missing.add(endpoint)  # once per process and endpoint, not once per job
            log.warning("fal's pricing API has no price for %s; using the list price $%.4f", endpoint,
                        list_price(endpoint, self.s))
        return Quote(endpoint, list_price(endpoint, self.s), "list_price_fallback", "image",
                     float(doc.get("fetched_at", 0.0)))

    def quotes(self, endpoints: Iterable[str]) -> dict[str, Quote]:
        return {ep: self.quote(ep) for ep in set(endpoints)}

    def refresh(self) -> dict[str, Any]:
        """Read fal's prices now and store them (or the fallback marker) in Redis."""
        now = time.time()
        try:
            found = fetch_prices(self.s, ENDPOINTS, transport=self.transport)
            doc: dict[str, Any] = {
                "source": "fal_pricing_api", "fetched_at": now, "expires_at": now + self.s.pricing_refresh_s,
                "prices": {ep: {"unit_price": p, "unit": u} for ep, (p, u) in found.items()},
            }
        except PricingUnavailable as exc:
            log.warning("%s; using the configured list prices (FALQ_PRICE_STANDARD=%s, FALQ_PRICE_PRO=%s) "
                        "until fal answers again (in %.0fs)", exc, self.s.price_standard, self.s.price_pro,
                        self.s.pricing_retry_s)
            doc = {"source": "list_price_fallback", "fetched_at": now, "expires_at": now + self.s.pricing_retry_s,
                   "error": str(exc)[:300], "prices": {}}
        try:
            self.r.set(self.key, json.dumps(doc), ex=int(max(self.s.pricing_refresh_s, self.s.pricing_retry_s)) + 60)
        except redis.RedisError as exc:
            log.warning("could not cache the prices in Redis (%s)", type(exc).__name__)
        self._local = (time.monotonic(), doc)
        return doc

    def invalidate(self) -> None:
        """Forget the cached prices (the next quote reads fal again)."""
        self._local = None
        self.r.delete(self.key)

    def _doc(self) -> dict[str, Any]:
        local = self._local
        now = time.time()
        if local is not None and time.monotonic() - local[0] < LOCAL_TTL_S and local[1].get("expires_at", 0) > now:
            return local[1]
        with self._lock:
            raw = self.r.get(self.key)
            if not self.s.fal_key_value():
                # A process without the account's key (a producer, the gateway) cannot ask fal: it
                # reads what the workers cached, stale or not, and never overwrites it.
                try:
                    doc = json.loads(raw) if raw else None
                except ValueError:
                    doc = None
                if isinstance(doc, dict) and doc.get("source") == "fal_pricing_api":
                    self._local = (time.monotonic(), doc)
                    return doc
                return {"source": "list_price_fallback", "fetched_at": now, "expires_at": now + LOCAL_TTL_S,
                        "prices": {}}
            if raw:
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = {}
                if isinstance(doc, dict) and float(doc.get("expires_at", 0)) > now:
                    self._local = (time.monotonic(), doc)
                    return doc
            # Stale or absent: one process refreshes, the others use the stale copy meanwhile.
            try:
                mine = bool(self.r.set(f"{self.key}:refreshing", "1", nx=True, ex=30))
            except redis.RedisError as exc:
                # Redis refusing writes (maxmemory) must not fail a quote: read fal without the
                # lock; refresh() keeps the answer in this process when Redis cannot.
                log.warning("could not take the price-refresh lock in Redis (%s)", type(exc).__name__)
                return self.refresh()
            if mine:
                try:
                    return self.refresh()
                finally:
                    with contextlib.suppress(redis.RedisError):  # else it expires in 30 s
                        self.r.delete(f"{self.key}:refreshing")
            if raw:
                try:
                    return dict(json.loads(raw))
                except ValueError:
                    pass
            return self.refresh()


__all__ = ["MAX_IDS_PER_CALL", "PriceSource", "Pricing", "PricingUnavailable", "Quote", "fetch_prices",
           "list_price"]
