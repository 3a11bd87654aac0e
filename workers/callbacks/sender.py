"""Per-job callbacks: when a job ends, POST its final record to the URL the producer gave.

The body is the job record as JSON (the same shape ``falq status --json`` prints). When
``FALQ_CALLBACK_SECRET`` is set, each delivery carries
``X-Falq-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`` so receivers can
verify it came from falq and is fresh (the scheme Stripe-style webhooks use;
:func:`falq.shared.egress.verify` checks it, and is re-exported here).

Every delivery also carries ``X-Falq-Job-Id`` and **``X-Falq-Delivery-Id``**:
``<job id>:<version>``, where the version is the one of the save that made the job terminal.
It is the same on every try and every redelivery (``falq callbacks redeliver``) of one
outcome, so a receiver that stores the ids it handled processes each outcome once; a job
retried by hand and finished again gets a new one. Callbacks are delivered *at least once*:
a receiver may see the same id more than once (a worker died after POSTing but before
recording it) and must deduplicate on it.

**Never lost.** The save that makes a job with a ``callback_url`` terminal also appends its
end-of-job entry (:mod:`falq.shared.jobs.ended`), in the same Lua script, so a worker killed
right after finishing the job loses nothing. Every worker runs a delivery loop
(:func:`start_callbacks`, a part of the worker's consumer loop, :mod:`falq.workers.consumers`)
that enters each such job in the outbox (:mod:`falq.shared.callbacks.outbox`) before it
acknowledges the entry (group ``callbacks``; a consumer killed in between leaves the entry to
be taken over after :data:`CLAIM_IDLE_S`), then claims due entries atomically for
:data:`LEASE_S` (two workers never deliver the same try; a claim of a killed worker lapses and
another worker delivers), POSTs them, and on success removes them.
A failed try is retried with exponential backoff and full jitter (:data:`BASE_S` doubling up
to :data:`MAX_S`) for ``FALQ_CALLBACK_RETRY_FOR_S`` (7200 s, about fal's own webhook window)
from the first try; then the callback is marked failed (``{p}:outbox:failed``,
``falq callbacks pending --failed``, ``falq callbacks redeliver --failed``). Every try is
appended to the job's delivery log (``falq callbacks log ID``: time, status code or error,
whether it was final), kept as long as the record.

Delivery goes through :func:`falq.shared.egress.post_json`: the target must resolve to
public addresses unless ``FALQ_CALLBACK_ALLOW_PRIVATE`` (tests), the request goes to the
address that was checked, and redirects are not followed. A refused target is final at once
(``status: "refused"`` and a ``reason``), as is an answer trying again will not change (a
3xx, most 4xx). The summary outcome is written to the record's ``metadata["callback"]``
(``delivered``, ``status``, ``tries``, ``at``, ``url_host``, ``delivery_id``).

Example::

    start_callbacks(ctx.store, ctx.settings, ctx.callback_http)   # once per worker
    wake()                                                        # a job just ended: look now
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from falq.shared.callbacks.outbox import Action, Claim, Outbox
from falq.shared.egress import OutboundRefused, OutboundUnresolved, post_json, sign, verify
from falq.shared.errors import FalqError
from falq.shared.fal.shapes import fal_payload
from falq.shared.fal.webhook_sign import FalWebhookSigner
from falq.shared.jobs.ended import GroupReader
from falq.shared.jobs.records import TERMINAL, JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.settings import Settings
from falq.workers.backoff import backoff_delay
from falq.workers.consumers import Consumers, Part
from falq.workers.loops import forever

__all__ = ["DELIVERY_ID_HEADER", "Attempt", "CallbackSender", "Target", "post_callback", "post_fal_webhook", "sign",
           "start_callbacks", "targets_of", "verify", "wake"]

log = logging.getLogger("falq.callbacks")
DELIVERY_ID_HEADER = "X-Falq-Delivery-Id"
#: Seconds one POST may take.
TIMEOUT_S = 10.0
#: How long a claim keeps an entry from other workers: one try (its timeout, DNS included)
#: with room for the writes around it. A killed worker's entry is due again after this.
LEASE_S = 30.0
#: Retry delays: full jitter below ``BASE_S * 2**tries``, capped at ``MAX_S``.
BASE_S = 1.0
MAX_S = 900.0
#: Deliveries in flight per worker; the loop claims no more than it has room for.
INFLIGHT = 32
#: How often an idle loop looks at the outbox (a job ending in this worker wakes it at once).
POLL_S = 1.0
#: An end-of-job entry read by a consumer that did not acknowledge it this long (killed) is
#: taken over by another sender.
CLAIM_IDLE_S = 30.0


@dataclass(frozen=True)
class Attempt:
    """One try: ``status`` is the HTTP code, ``"refused"``, ``"unresolved"`` or httpx's error name.

    ``final``: not delivered and trying again will not help (a refused target, a 3xx, most 4xx).
    """

    delivered: bool
    final: bool
    status: int | str
    reason: str | None = None

    @property
    def status_code(self) -> int | None:
        return self.status if isinstance(self.status, int) else None


@dataclass(frozen=True)
class Target:
    """Where a finished job is reported: ``callback`` (falq's record, to ``callback_url``) or
    ``fal_webhook`` (fal's webhook shape, to the ``fal_webhook`` the gateway was given)."""

    kind: Literal["callback", "fal_webhook"]
    url: str


def targets_of(rec: JobRecord) -> list[Target]:
    """The job's delivery targets, in delivery order."""
    out = []
    if rec.callback_url:
        out.append(Target("callback", rec.callback_url))
    if rec.fal_webhook:
        out.append(Target("fal_webhook", rec.fal_webhook))
    return out


def _post(url: str, body: bytes, headers: dict[str, str], settings: Settings, http: httpx.Client) -> Attempt:
    secret = settings.callback_secret.get_secret_value() if settings.callback_secret is not None else None
    try:
        done = post_json(http, url, body, headers, allow_private=settings.callback_allow_private,
                         timeout=TIMEOUT_S, secret=secret)
    except OutboundRefused as exc:  # the target is not allowed; it will not be next time either
        return Attempt(delivered=False, final=True, status="refused", reason=str(exc))
    except OutboundUnresolved:
        return Attempt(delivered=False, final=False, status="unresolved")
    except httpx.HTTPError as exc:
        return Attempt(delivered=False, final=False, status=type(exc).__name__)
    # done.final: the receiver refuses this body (or redirects): trying again will not help
    return Attempt(delivered=done.delivered, final=done.final, status=done.status_code)


def post_callback(rec: JobRecord, *, delivery_id: str, settings: Settings, http: httpx.Client) -> Attempt:
    """POST ``rec`` once to its callback URL, signed when ``FALQ_CALLBACK_SECRET`` is set.

    Parameters:
        rec: the finished job's record (it must have a ``callback_url``).
        delivery_id: the ``X-Falq-Delivery-Id`` (:func:`falq.shared.callbacks.outbox.delivery_id`).
        settings: for ``callback_secret`` and ``callback_allow_private``.
        http: the client to send with (:func:`falq.shared.egress.make_client`).
    """
    assert rec.callback_url
    body = json.dumps(rec.public(), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "falq-callback/0.1", "X-Falq-Job-Id": rec.id,
               DELIVERY_ID_HEADER: delivery_id}
    return _post(rec.callback_url, body, headers, settings, http)


def post_fal_webhook(rec: JobRecord, *, delivery_id: str, settings: Settings, http: httpx.Client,
                     presign: Callable[[str], str], signer: FalWebhookSigner | None = None) -> Attempt:
    """POST fal's webhook body (:func:`falq.shared.fal.shapes.fal_payload`, presigned S3 URLs) once
    to the job's ``fal_webhook``; same headers and address rules as :func:`post_callback`, and
    signed the way fal signs (``X-Fal-Webhook-*``, Ed25519, :mod:`falq.shared.fal.webhook_sign`) by
    ``signer``, afresh on every try, so a receiver written for fal verifies it against the
    gateway's JWKS."""
    assert rec.fal_webhook
    try:
        body = json.dumps(fal_payload(rec, presign), separators=(",", ":")).encode()
    except FalqError as exc:  # presigning failed (S3 trouble): try again later
        return Attempt(delivered=False, final=False, status=type(exc).__name__)
    headers = {"Content-Type": "application/json", "User-Agent": "falq-gateway/0.1", "X-Falq-Job-Id": rec.id,
               DELIVERY_ID_HEADER: delivery_id}
    if signer is not None:
        headers.update(signer.headers(rec.id, rec.tenant, body))
    return _post(rec.fal_webhook, body, headers, settings, http)


class CallbackSender:
    """The delivery loop of one worker over the outbox (:class:`falq.shared.callbacks.outbox.Outbox`).

    One sender for every outgoing job webhook: a job's ``callback_url`` (falq's record) and
    its ``fal_webhook`` (fal's shape) are two targets of one outbox entry, each tried until
    it is delivered or refused for good; a target that got through is not sent again.

    Parameters:
        store: the job store (its Redis holds the outbox; outcomes go to ``metadata["callback"]``
            and ``metadata["fal_webhook"]``).
        settings: for the secret, ``callback_allow_private`` and ``callback_retry_for_s``.
        http: the client to send with.
        lease_s: how long a claim keeps an entry from other workers.
        presign: object key -> GET URL for fal-shaped payloads (default: the S3 storage's).
    """

    def __init__(self, store: JobStore, settings: Settings, http: httpx.Client, *, lease_s: float = LEASE_S,
                 inflight: int = INFLIGHT, poll_s: float = POLL_S,
                 presign: Callable[[str], str] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.http = http
        self.outbox = Outbox(store)
        self.lease_s = lease_s
        self.inflight = inflight
        self.poll_s = poll_s
        self._presign = presign
        self._signer: FalWebhookSigner | None = None
        self._busy = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.on_wake: Callable[[], object] | None = None  # the consumer loop's wake, when it runs this sender
        self.ended = GroupReader(store.r, store.keys, "callbacks", f"{socket.gethostname()}:{os.getpid()}",
                                 claim_idle_ms=int(CLAIM_IDLE_S * 1000))
        self._next_claim = 0.0

    def presign(self, key: str) -> str:
        if self._presign is None:
            from falq.shared.storage.s3 import Storage

            self._presign = Storage(self.settings).presign
        return self._presign(key)

    def signer(self) -> FalWebhookSigner:
        """The deployment's fal webhook signing key (read, or made, on first use)."""
        if self._signer is None:
            self._signer = FalWebhookSigner.for_deployment(self.settings, self.store.r)
        return self._signer

    def wake(self) -> None:
        """Look at the outbox now (a job of this worker just ended)."""
        self._wake.set()
        if self.on_wake is not None:
            self.on_wake()

    def deliver_due(self, limit: int = 100) -> int:
        """Enter the callbacks of jobs that just ended, then claim the due entries and deliver
        them one after another (the loop's tick, in this thread); returns how many were claimed."""
        self.schedule_ended()
        claims = self.outbox.claim(limit=limit, lease_s=self.lease_s)
        for claim in claims:
            self.deliver(claim)
        return len(claims)

    def _send(self, rec: JobRecord, target: Target, delivery_id: str) -> Attempt:
        if target.kind == "fal_webhook":
            return post_fal_webhook(rec, delivery_id=delivery_id, settings=self.settings, http=self.http,
                                    presign=self.presign, signer=self.signer())
        return post_callback(rec, delivery_id=delivery_id, settings=self.settings, http=self.http)

    def deliver(self, claim: Claim) -> Action:
        """One try of a claimed entry: POST to each target not settled yet, log the tries, then
        remove, reschedule or fail the entry."""
        entry = self.outbox.entry(claim.job_id)
        targets = targets_of(entry.record) if entry is not None else []
        if entry is None or entry.record.state not in TERMINAL or not targets:
            # The record expired, or a retry made the job run again (its next end enters it anew).
            self.outbox.finish(claim, "drop")
            return "drop"
        rec = entry.record
        tries = entry.tries + 1
        settled = self.outbox.settled(claim.job_id, entry.delivery_id)
        attempts: list[tuple[Target, Attempt]] = []
        for target in targets:
            if target.kind in settled:
                continue
            attempt = self._send(rec, target, entry.delivery_id)
            attempts.append((target, attempt))
            if attempt.delivered or attempt.final:
                settled[target.kind] = attempt.delivered
                self.outbox.settle(claim.job_id, entry.delivery_id, target.kind, attempt.delivered)
        now = time.time()
        deadline = entry.since + self.settings.callback_retry_for_s
        next_at: float | None = None
        action: Action
        if len(settled) < len(targets) and now < deadline:
            action = "retry"
            next_at = min(now + backoff_delay(tries - 1, base_s=BASE_S, max_s=MAX_S), deadline)
        elif all(settled.get(t.kind) for t in targets):
            action = "done"
        else:
            action = "failed"
        docs = [self._doc(t, a, tries, entry.delivery_id, now, final=a.delivered or a.final or action != "retry",
                          next_at=next_at, several=len(targets) > 1) for t, a in attempts]
        for doc in docs[:-1]:
            self.outbox.append_log(claim.job_id, doc)
        ok = self.outbox.finish(claim, action, attempt=docs[-1] if docs else None, next_at=next_at)
        if ok:
            for target, attempt in attempts:
                if attempt.delivered or attempt.final or action != "retry":
                    self._record(rec, target, entry.delivery_id, attempt, tries, now)
        return action

    @staticmethod
    def _doc(target: Target, attempt: Attempt, tries: int, delivery_id: str, now: float, *, final: bool,
             next_at: float | None, several: bool) -> dict[str, Any]:
        error = None if attempt.status_code is not None else \
            f"refused: {attempt.reason}" if attempt.status == "refused" else str(attempt.status)
        doc: dict[str, Any] = {"at": now, "try": tries, "delivery_id": delivery_id,
                               "status_code": attempt.status_code, "error": error, "delivered": attempt.delivered,
                               "final": final, "next_at": None if final else next_at}
        if several or target.kind != "callback":
            doc["target"] = target.kind
        return doc

    def _record(self, rec: JobRecord, target: Target, delivery_id: str, attempt: Attempt, tries: int,
                at: float) -> None:
        outcome: dict[str, object] = {"url_host": _host(target.url), "delivered": attempt.delivered,
                                      "status": attempt.status, "tries": tries, "at": at,
                                      "delivery_id": delivery_id}
        if attempt.reason is not None:
            outcome["reason"] = attempt.reason
        if attempt.status == "refused":
            log.warning("%s for job %s refused: %s", target.kind, rec.id, attempt.reason)
        elif not attempt.delivered:
            log.warning("%s for job %s not delivered after %s tries (%s)", target.kind, rec.id, tries, attempt.status)
        try:
            self.store.update(rec.id, lambda r: r.metadata.__setitem__(target.kind, outcome))
        except Exception as exc:  # the record may have expired or been deleted; the job is done anyway
            log.warning("could not record the %s outcome for %s: %s", target.kind, rec.id, type(exc).__name__)

    # --- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Claim and deliver (each in its own thread: a greenlet in a worker) until ``stop`` is set."""
        while not stop.is_set():
            claimed = 0
            try:
                claimed = self._tick()
            except Exception as exc:  # Redis may be restarting; try next round
                log.warning("callback pass failed: %s", type(exc).__name__)
            if not claimed:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def tick(self) -> int:
        """Claim due entries and start their deliveries; returns how many were claimed."""
        return self._tick()

    def schedule_ended(self) -> int:
        """Enter the callbacks of jobs that ended (the end-of-job stream) in the outbox, then
        acknowledge their entries; returns the entries read."""
        now = time.monotonic()
        events = []
        if now >= self._next_claim:
            self._next_claim = now + CLAIM_IDLE_S / 2
            events = self.ended.claim_stale()
        events += self.ended.read()
        for ev in events:
            if ev.callback:
                self.outbox.schedule(ev.job_id, ev.version, int(ev.entry.partition("-")[0]) / 1000)
        self.ended.ack(events)
        return len(events)

    def _tick(self) -> int:
        self.schedule_ended()
        with self._lock:
            room = self.inflight - self._busy
        claims = self.outbox.claim(limit=room, lease_s=self.lease_s)
        for claim in claims:
            with self._lock:
                self._busy += 1
            threading.Thread(target=self._one, args=(claim,), name="falq-callback", daemon=True).start()
        return len(claims)

    def _one(self, claim: Claim) -> None:
        try:
            self.deliver(claim)
        except Exception as exc:  # the claim lapses and the entry is tried again
            log.warning("callback for job %s crashed (%s); it is tried again", claim.job_id, type(exc).__name__)
        finally:
            with self._lock:
                self._busy -= 1


_sender: CallbackSender | None = None


def start_callbacks(store: JobStore, settings: Settings, http: httpx.Client,
                    stop: threading.Event | None = None, *, into: Consumers | None = None) -> CallbackSender:
    """Run this worker's deliveries: as a part of the consumer loop ``into``, else in a loop of
    their own (a daemon thread) until ``stop`` (a warm shutdown) is set."""
    global _sender
    sender = CallbackSender(store, settings, http)
    if into is not None:
        sender.on_wake = into.wake
        into.add(Part("callback delivery", sender.tick, max_backoff_s=sender.poll_s))
    else:
        forever("falq-callbacks", sender.run, stop, logger=log, what="callback loop")
    _sender = sender
    return sender


def wake() -> None:
    """Wake this process's delivery loop, if it runs (a job just ended here)."""
    if _sender is not None:
        _sender.wake()


def _host(url: str) -> str | None:
    try:
        return httpx.URL(url).host or None
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
