"""Per-job callbacks: when a job ends, POST its final record to the URL the producer gave.

The body is the job record as JSON (the same shape ``falq status --json`` prints). When
``FALQ_CALLBACK_SECRET`` is set, each delivery carries
``X-Falq-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`` so receivers can
verify it came from falq and is fresh (the scheme Stripe-style webhooks use;
:func:`falq.shared.outbound.verify` checks it, and is re-exported here).

Delivery goes through :func:`falq.shared.outbound.post_json`: the target must resolve to
public addresses unless ``FALQ_CALLBACK_ALLOW_PRIVATE`` (tests), the request goes to the
address that was checked, and redirects are not followed. A refused target is recorded at
once (``status: "refused"`` and a ``reason``) and never retried; other failures are
retried with backoff (5 tries within about half a minute) in the job's own greenlet. The
outcome is written to the record's ``metadata["callback"]``.

Example::

    schedule_callback(rec, settings=ctx.settings, store=ctx.store, http=ctx.callback_http)
"""

from __future__ import annotations

import json
import logging
import time

import httpx

from falq.shared.jobstore import JobStore
from falq.shared.outbound import OutboundRefused, OutboundUnresolved, post_json, sign, verify
from falq.shared.records import JobRecord
from falq.shared.settings import Settings
from falq.workers.backoff import backoff_delay

__all__ = ["TRIES", "schedule_callback", "sign", "verify"]

log = logging.getLogger("falq.callbacks")
TRIES = 5


def schedule_callback(rec: JobRecord, *, settings: Settings, store: JobStore, http: httpx.Client) -> None:
    """Deliver ``rec`` to its callback URL (no-op when the job has none); record the outcome.

    Parameters:
        rec: the finished job's record.
        settings: for ``callback_secret`` and ``callback_allow_private``.
        store: where the outcome is written (``metadata["callback"]``).
        http: the client to send with (:func:`falq.shared.outbound.make_client`).
    """
    if not rec.callback_url:
        return
    body = json.dumps(rec.public(), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "falq-callback/0.1", "X-Falq-Job-Id": rec.id}
    secret = settings.callback_secret.get_secret_value() if settings.callback_secret is not None else None
    outcome: dict[str, object] = {"url_host": _host(rec.callback_url), "delivered": False}
    for attempt in range(TRIES):
        try:
            done = post_json(http, rec.callback_url, body, headers, allow_private=settings.callback_allow_private,
                             timeout=10.0, secret=secret)
        except OutboundRefused as exc:
            outcome["status"] = "refused"
            outcome["reason"] = str(exc)
            break  # the target is not allowed; it will not be next time either
        except OutboundUnresolved:
            outcome["status"] = "unresolved"
        except httpx.HTTPError as exc:
            outcome["status"] = type(exc).__name__
        else:
            outcome["status"] = done.status_code
            if done.delivered:
                outcome["delivered"] = True
                break
            if done.final:
                break  # the receiver refuses this body (or redirects): trying again will not help
        if attempt < TRIES - 1:
            time.sleep(backoff_delay(attempt, base_s=0.5, max_s=8.0))
    outcome["tries"] = attempt + 1
    outcome["at"] = time.time()
    if outcome["status"] == "refused":
        log.warning("callback for job %s refused: %s", rec.id, outcome["reason"])
    elif not outcome["delivered"]:
        log.warning("callback for job %s not delivered after %s tries (%s)", rec.id, attempt + 1, outcome["status"])
    try:
        store.update(rec.id, lambda r: r.metadata.__setitem__("callback", outcome))
    except Exception as exc:  # the record may have expired or been deleted; the job is done anyway
        log.warning("could not record callback outcome for %s: %s", rec.id, type(exc).__name__)


def _host(url: str) -> str | None:
    try:
        return httpx.URL(url).host or None
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
