"""``POST /_falq/fal-webhook``: fal pushes completions here instead of workers following each request.

Every delivery is verified by :class:`falq.shared.fal.webhook_verify.WebhookVerifier` (Ed25519 signature
against fal's JWKS, timestamp within 300 s, replay refused across every receiver sharing
Redis). A verified completion is stored for the workers:

* ``{p}:falhook:{request_id}`` -- JSON ``{"status": "OK"|"ERROR", "error", "gateway_request_id",
  "received_at", "payload"}`` (``payload`` only when at most :data:`MAX_STORED_PAYLOAD`
  bytes, else ``"payload_stored": false``), kept :data:`TTL_S`; a redelivery overwrites it;
* a ``PUBLISH`` of the request id on ``{p}:falhook`` for workers that wait on it.

Answers: 200 stored; 401 (``detail`` = the rejection reason: ``missing_header``, ``stale``,
``bad_signature``, ``replay`` ...); 413 too large; 422 not a JSON object; 503 when fal's JWKS
or Redis cannot be reached (fal then delivers again later). No API key: fal's signature is
the authentication.

Example (what fal sends)::

    POST /_falq/fal-webhook
    X-Fal-Webhook-Request-Id: 764cabcf-...   X-Fal-Webhook-Timestamp: 1717171717
    X-Fal-Webhook-User-Id: ...               X-Fal-Webhook-Signature: <hex ed25519>
    {"request_id": "764cabcf-...", "status": "OK", "payload": {"images": [...], "seed": 7}}
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from falq.gateway.core import Gateway, blocking, json_response
from falq.shared.fal.webhook_verify import JwksUnavailable, WebhookRejected, WebhookVerifier
from falq.shared.keys import Keys

log = logging.getLogger("falq.gateway.fal.webhook_receiver")
MAX_BODY = 16 * 1024 * 1024
MAX_STORED_PAYLOAD = 1024 * 1024
TTL_S = 24 * 3600


def hook_key(prefix: str, request_id: str) -> str:
    """Where the completion of fal request ``request_id`` is kept for the workers."""
    return Keys(prefix).falhook(request_id)


def completion(body: dict[str, Any], raw_size: int) -> dict[str, Any]:
    """What is stored for a delivery (fal's fields; the payload only when small enough)."""
    doc: dict[str, Any] = {
        "status": "OK" if body.get("status") == "OK" else "ERROR",
        "error": body.get("error") if isinstance(body.get("error"), str) else None,
        "gateway_request_id": body.get("gateway_request_id") if isinstance(body.get("gateway_request_id"), str)
        else None,
        "received_at": time.time(),
    }
    if raw_size <= MAX_STORED_PAYLOAD:
        doc["payload"] = body.get("payload")
    else:
        doc["payload_stored"] = False
    return doc


def store_completion(gw: Gateway, request_id: str, doc: dict[str, Any]) -> None:
    pipe = gw.store.r.pipeline(transaction=False)
    pipe.set(hook_key(gw.prefix, request_id), json.dumps(doc, separators=(",", ":")), ex=TTL_S)
    pipe.publish(Keys(gw.prefix).falhook_channel, request_id)
    pipe.execute()


async def fal_webhook(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    verifier: WebhookVerifier = request.app.state.verifier
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        return json_response(413, {"detail": "webhook body too large"})
    raw = await request.body()
    if len(raw) > MAX_BODY:
        return json_response(413, {"detail": "webhook body too large"})
    try:
        info = await blocking(verifier.verify, dict(request.headers), raw)
    except WebhookRejected as exc:
        log.info("fal webhook refused: %s", exc.reason)
        return json_response(401, {"detail": exc.reason})
    except JwksUnavailable:
        return json_response(503, {"detail": "fal's JWKS is unreachable; deliver again later"})
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return json_response(422, {"detail": "webhook body must be a JSON object"}, info.request_id)
    await blocking(store_completion, gw, info.request_id, completion(body, len(raw)))
    return json_response(200, {"ok": True}, info.request_id)
