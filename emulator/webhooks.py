"""fal-style webhooks: Ed25519 signing, the JWKS document, verification, delivery.

fal signs ``"{request_id}\\n{user_id}\\n{timestamp}\\n{hex(sha256(body))}"`` with Ed25519 and
sends the hex signature in ``X-Fal-Webhook-Signature`` next to ``X-Fal-Webhook-Request-Id``,
``-User-Id`` and ``-Timestamp``; receivers check it against the keys of a JWKS
(``kty: OKP, crv: Ed25519``). The emulator does the same with its own key, served at
``/.well-known/jwks.json``.

Example::

    >>> signer = WebhookSigner()
    >>> body = b'{"status":"OK"}'
    >>> headers = signer.headers("req-1", "user-1", body)
    >>> verify(headers, body, signer.jwks())
    True
    >>> verify(headers, body + b" ", signer.jwks())
    False
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

log = logging.getLogger("falq.emulator.webhooks")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes fal signs."""
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


class WebhookSigner:
    """Holds the emulator's Ed25519 key pair (fresh per instance unless a key is given)."""

    def __init__(self, private_key: Ed25519PrivateKey | None = None) -> None:
        self._key = private_key or Ed25519PrivateKey.generate()
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._x = _b64url(raw)
        self.kid = hashlib.sha256(raw).hexdigest()[:16]

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS document."""
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self._x, "kid": self.kid, "use": "sig", "alg": "EdDSA"}]}

    def headers(self, request_id: str, user_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The four X-Fal-Webhook-* headers for ``body``."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sig = self._key.sign(message(request_id, user_id, ts, body)).hex()
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": ts,
            "X-Fal-Webhook-Signature": sig,
        }


def verify(
    headers: Mapping[str, str],
    body: bytes,
    jwks: Mapping[str, Any],
    *,
    max_skew_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """True when ``body`` carries a valid fal webhook signature from one of ``jwks``' keys.

    Header names are matched case-insensitively; timestamps more than ``max_skew_s`` away
    from ``now`` are refused, as fal's receivers do.
    """
    low = {k.lower(): v for k, v in headers.items()}
    try:
        request_id = low["x-fal-webhook-request-id"]
        user_id = low["x-fal-webhook-user-id"]
        ts = low["x-fal-webhook-timestamp"]
        signature = bytes.fromhex(low["x-fal-webhook-signature"])
        if abs((time.time() if now is None else now) - int(ts)) > max_skew_s:
            return False
    except (KeyError, ValueError):
        return False
    msg = message(request_id, user_id, ts, body)
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        try:
            Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk["x"])).verify(signature, msg)
            return True
        except (InvalidSignature, ValueError, KeyError, binascii.Error):
            continue
    return False


def payload(request_id: str, ok: bool, body: Any, error: str | None) -> dict[str, Any]:
    """fal's webhook body: ``{request_id, gateway_request_id, status, payload, error}``.

    On failure ``payload`` is the same body the result GET answers (e.g. the 422 detail list
    of a ``content_policy_violation``) and ``error`` is ``"Invalid status code: <code>"``.
    """
    return {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK" if ok else "ERROR",
        "payload": body,
        "error": error,
    }


async def deliver(
    client: httpx.AsyncClient,
    signer: WebhookSigner,
    url: str,
    request_id: str,
    user_id: str,
    body_obj: dict[str, Any],
    *,
    attempts: int,
    first_delay_s: float,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """POST the webhook, retrying on transport errors and non-2xx answers.

    Returns one record per attempt (``{"at", "status_code"|"error"}``) for introspection.
    Each attempt is signed afresh (new timestamp), like fal's redeliveries.
    """
    body = json.dumps(body_obj, separators=(",", ":")).encode()
    history: list[dict[str, Any]] = []
    delay = first_delay_s
    for attempt in range(attempts):
        headers = {"Content-Type": "application/json", **signer.headers(request_id, user_id, body)}
        try:
            resp = await client.post(url, content=body, headers=headers, timeout=timeout_s)
            history.append({"at": time.time(), "status_code": resp.status_code})
            if 200 <= resp.status_code < 300:
                return history
        except httpx.HTTPError as exc:
            history.append({"at": time.time(), "error": f"{type(exc).__name__}: {exc}"})
        if attempt + 1 < attempts:
            await asyncio.sleep(delay)
            delay *= 2
    log.warning("webhook for %s to %s failed after %d attempts", request_id, url, attempts)
    return history
