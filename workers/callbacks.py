"""Per-job callbacks: when a job ends, POST its final record to the URL the producer gave.

The body is the job record as JSON (the same shape ``falq status --json`` prints). When
``FALQ_CALLBACK_SECRET`` is set, each delivery carries
``X-Falq-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`` so receivers can
verify it came from falq and is fresh (the scheme Stripe-style webhooks use).

Delivery is retried with backoff (5 tries within about half a minute) in the job's
own greenlet; the outcome is written to the record's ``metadata["callback"]``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import TYPE_CHECKING

import httpx

from falq.shared.records import JobRecord
from falq.workers.backoff import backoff_delay

if TYPE_CHECKING:
    from falq.workers.context import WorkerContext

log = logging.getLogger("falq.callbacks")
TRIES = 5


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Falq-Signature`` header value for ``body``.

    Example::

        >>> sign("s3cret", b"{}", 1700000000)[:13]
        't=1700000000,'
    """
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, max_age_s: int = 300) -> bool:
    """Check an ``X-Falq-Signature`` header (for receivers written in Python)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - ts) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), header)


def schedule_callback(ctx: WorkerContext, rec: JobRecord) -> None:
    """Deliver ``rec`` to its callback URL (no-op when the job has none)."""
    if not rec.callback_url:
        return
    body = json.dumps(rec.public(), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "falq-callback/0.1", "X-Falq-Job-Id": rec.id}
    secret = ctx.settings.callback_secret
    outcome: dict[str, object] = {"url_host": httpx.URL(rec.callback_url).host, "delivered": False}
    for attempt in range(TRIES):
        if secret is not None:
            headers["X-Falq-Signature"] = sign(secret.get_secret_value(), body)
        try:
            resp = ctx.media_http.post(rec.callback_url, content=body, headers=headers, timeout=10.0)
            outcome["status"] = resp.status_code
            if resp.status_code < 300:
                outcome["delivered"] = True
                break
            if 400 <= resp.status_code < 500 and resp.status_code not in (408, 409, 425, 429):
                break  # the receiver refuses this body; trying again will not help
        except httpx.HTTPError as exc:
            outcome["status"] = type(exc).__name__
        time.sleep(backoff_delay(attempt, base_s=0.5, max_s=8.0))
    outcome["tries"] = attempt + 1
    outcome["at"] = time.time()
    if not outcome["delivered"]:
        log.warning("callback for job %s not delivered after %s tries (%s)", rec.id, attempt + 1, outcome["status"])
    try:
        ctx.store.update(rec.id, lambda r: r.metadata.__setitem__("callback", outcome))
    except Exception as exc:  # the record may have expired or been deleted; the job is done anyway
        log.warning("could not record callback outcome for %s: %s", rec.id, type(exc).__name__)
