"""``fal_webhook`` on submit: call the caller back, in fal's webhook shape, when the job ends.

Why here and not in the worker: the worker's callbacks (:mod:`falq.workers.callbacks`) post
falq's own record; a caller that came through the fal protocol expects fal's payload
(``request_id``, ``gateway_request_id``, ``status`` OK/ERROR, ``payload``, ``error``) with
presigned S3 URLs in it -- which is the gateway's vocabulary. So the gateway keeps the
webhook *out* of the job's ``callback_url`` and delivers it itself:

* on submit, ``{p}:gateway:hook:{id}`` (hash: url, tries) is written and the job id is
  added to the sorted set ``{p}:gateway:hooks`` (score: when to look next);
* a background task of every gateway process looks at the due ids every
  ``FALQ_GATEWAY_HOOK_POLL_S``; a finished job's webhook is claimed with a short
  ``SET NX`` lock (several gateway replicas never deliver the same attempt twice) and
  POSTed through :func:`falq.shared.outbound.post_json_async` (the sender per-job
  callbacks use too), signed with ``X-Falq-Signature`` (:func:`falq.shared.outbound.sign`,
  key ``FALQ_CALLBACK_SECRET``) when a secret is set;
* a failed delivery is tried again with exponential backoff (10 tries over about two
  hours, as fal does); the outcome is written to the record's ``metadata["fal_webhook"]``.

Everything lives in Redis, so a gateway restart loses no pending webhook. The one gap: a
gateway killed between enqueueing the job and writing the hook loses that webhook (the
job itself is safe). Target hosts must resolve to public addresses unless
``FALQ_GATEWAY_WEBHOOK_ALLOW_PRIVATE``, the request goes to the address that was checked (no
second DNS lookup), and redirects are not followed. A refused target is final: its outcome
(``status: "refused"``, ``reason``) is recorded at once and it is never tried again.

Example::

    hooks = HookDispatcher(gateway)
    hooks.register(job_id, "https://example.com/fal-done")   # on submit
    await hooks.tick()                                        # what the background task runs
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import httpx

from falq.gateway.core import Gateway, blocking
from falq.gateway.views import failure, result_body
from falq.shared.errors import FalqError, FieldError, InvalidInput
from falq.shared.outbound import (
    OutboundRefused,
    OutboundUnresolved,
    make_async_client,
    parse_url,
    post_json_async,
)
from falq.shared.records import TERMINAL, JobRecord

log = logging.getLogger("falq.gateway.hooks")
MAX_TRIES = 10
BATCH = 200


#: A refused ``fal_webhook`` target (the sender's own error type).
WebhookTargetRefused = OutboundRefused


def check_webhook_url(url: Any) -> str:
    """Validate a ``fal_webhook`` value syntactically; raise :class:`InvalidInput` if bad.

    The address rules are applied, with a fresh DNS lookup, when the webhook is delivered.
    """
    try:
        parse_url(url, what="fal_webhook")
    except OutboundRefused:
        raise InvalidInput([FieldError("fal_webhook", "must be an http(s) URL without credentials")]) from None
    return str(url)


def fal_payload(rec: JobRecord, presign: Any) -> dict[str, Any]:
    """fal's webhook body for a finished job."""
    fail = failure(rec)
    if fail is None:
        return {"request_id": rec.id, "gateway_request_id": rec.id, "status": "OK",
                "payload": result_body(rec, presign), "error": None}
    payload = {"detail": fail.detail} if fail.status_code == 422 else \
        {"detail": fail.detail, "error_type": fail.error_type}
    return {"request_id": rec.id, "gateway_request_id": rec.id, "status": "ERROR", "payload": payload,
            "error": f"Invalid status code: {fail.status_code}"}


class HookDispatcher:
    """Registers and delivers fal-style webhooks for one gateway."""

    def __init__(self, gw: Gateway, http: httpx.AsyncClient | None = None) -> None:
        self.gw = gw
        self.r = gw.store.r
        self.zkey = gw.store.keys.gateway_hooks
        self.http = http or make_async_client(timeout=15.0)
        self._sem = asyncio.Semaphore(32)

    def hook_key(self, job_id: str) -> str:
        return self.gw.store.keys.gateway_hook(job_id)

    def register(self, job_id: str, url: str) -> None:
        """Remember the webhook of a job (blocking: call from a thread). A repeat is a no-op."""
        key = self.hook_key(job_id)
        if not self.r.hsetnx(key, "url", url):
            return
        ttl = self.gw.settings.record_ttl_s + 86400
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, "tries", 0)
        pipe.expire(key, ttl)
        pipe.zadd(self.zkey, {job_id: time.time()})
        pipe.execute()

    async def run(self, stop: asyncio.Event) -> None:
        """The background task: tick until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # Redis down etc.: keep the task alive, try again later
                log.warning("webhook dispatcher tick failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.gw.gsettings.gateway_hook_poll_s)

    async def tick(self) -> int:
        """Deliver every due webhook whose job has finished; returns how many were attempted."""
        due = await blocking(self._due)
        if not due:
            return 0
        await asyncio.gather(*(self._one(job_id, rec) for job_id, rec in due))
        return len(due)

    def _due(self) -> list[tuple[str, JobRecord | None]]:
        raw = self.r.zrangebyscore(self.zkey, "-inf", time.time(), start=0, num=BATCH)
        ids = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.gw.store.job_key(job_id), "state")
        states = pipe.execute()
        done = [i for i, s in zip(ids, states, strict=True) if s is None or s.decode() in TERMINAL]
        recs = self.gw.store.get_many(done) if done else []
        return list(zip(done, recs, strict=True))

    async def _one(self, job_id: str, rec: JobRecord | None) -> None:
        async with self._sem:
            if rec is None:  # the record expired: nothing to report any more
                await blocking(self._forget, job_id)
                return
            lock = f"{self.hook_key(job_id)}:lock"
            if not await blocking(self.r.set, lock, b"1", nx=True, px=30_000):
                return
            try:
                info = await blocking(self.r.hgetall, self.hook_key(job_id))
                url = (info.get(b"url") or b"").decode()
                tries = int(info.get(b"tries") or 0) + 1
                if not url:
                    await blocking(self.r.zrem, self.zkey, job_id)
                    return
                outcome = await self._deliver(rec, url)
                outcome["tries"] = tries
                if outcome["delivered"] or outcome.get("final") or tries >= MAX_TRIES:
                    await blocking(self._finish, job_id, outcome)
                else:
                    delay = min(1800.0, 2.0 ** tries)
                    await blocking(self._again, job_id, tries, delay)
            finally:
                await blocking(self.r.delete, lock)

    async def _deliver(self, rec: JobRecord, url: str) -> dict[str, Any]:
        outcome: dict[str, Any] = {"url_host": _host(url), "delivered": False, "at": time.time()}
        try:
            body = json.dumps(await blocking(fal_payload, rec, self.gw.presign), separators=(",", ":")).encode()
        except FalqError as exc:  # presigning failed (S3 trouble): try again later
            return {**outcome, "status": type(exc).__name__}
        headers = {"Content-Type": "application/json", "User-Agent": "falq-gateway/0.1", "X-Falq-Job-Id": rec.id}
        secret = self.gw.settings.callback_secret
        try:
            done = await post_json_async(self.http, url, body, headers, timeout=15.0,
                                         allow_private=self.gw.gsettings.gateway_webhook_allow_private,
                                         secret=secret.get_secret_value() if secret is not None else None)
        except OutboundRefused as exc:  # not allowed now, not allowed later: never retried
            return {**outcome, "status": "refused", "reason": str(exc), "final": True}
        except OutboundUnresolved:  # the resolver may recover: try again later
            return {**outcome, "status": "unresolved"}
        except httpx.HTTPError as exc:
            return {**outcome, "status": type(exc).__name__}
        outcome["status"] = done.status_code
        outcome["delivered"] = done.delivered
        if done.final:
            outcome["final"] = True  # the receiver refuses this body (or redirects): trying again will not help
        return outcome

    def _again(self, job_id: str, tries: int, delay: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.hook_key(job_id), "tries", tries)
        pipe.zadd(self.zkey, {job_id: time.time() + delay})
        pipe.execute()

    def _finish(self, job_id: str, outcome: dict[str, Any]) -> None:
        outcome.pop("final", None)
        if not outcome["delivered"]:
            log.warning("fal_webhook for job %s not delivered after %s tries (%s)", job_id, outcome["tries"],
                        outcome.get("status"))
        try:
            self.gw.store.update(job_id, lambda r: r.metadata.__setitem__("fal_webhook", outcome))
        except Exception as exc:  # the record may be gone; the webhook is done either way
            log.warning("could not record the fal_webhook outcome of %s: %s", job_id, type(exc).__name__)
        self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(self.zkey, job_id)
        pipe.delete(self.hook_key(job_id))
        pipe.execute()

    async def aclose(self) -> None:
        await self.http.aclose()


def _host(url: str) -> str | None:
    try:
        return httpx.URL(url).host or None
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
