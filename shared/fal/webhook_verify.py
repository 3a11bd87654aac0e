"""Verifying fal's webhooks: Ed25519 signature from fal's JWKS, a fresh timestamp, no replays.

fal signs each webhook delivery with Ed25519 over::

    "{request_id}\\n{user_id}\\n{timestamp}\\n{hex(sha256(body))}"

and sends ``X-Fal-Webhook-Request-Id``, ``-User-Id``, ``-Timestamp`` (unix seconds) and
``-Signature`` (hex). The public keys are a JWKS (``kty: OKP, crv: Ed25519``) at
``FALQ_FAL_JWKS_URL`` (default :data:`DEFAULT_JWKS_URL`).

A delivery is accepted only if all of these hold:

* every header is present and well-formed;
* the timestamp is within ``max_skew_s`` (300 s) of now;
* the signature verifies under one of the JWKS keys. Keys are cached for ``cache_ttl_s``;
  a signature no cached key accepts refreshes the JWKS (at most once per
  ``min_refresh_s``), so a key rotation is picked up without a restart;
* the delivery was not seen before: ``SET NX EX`` of a digest of (request id, timestamp,
  signature) in Redis, kept for the whole freshness window, so the same signed delivery
  replayed within its window is refused by every receiver sharing that Redis.

Example::

    verifier = WebhookVerifier(redis_client, jwks_url=settings_jwks_url(settings))
    try:
        info = verifier.verify(request.headers, body)
    except WebhookRejected as exc:
        return 401, exc.reason            # "stale", "bad_signature", "replay", ...
    except JwksUnavailable:
        return 503                        # fal retries the delivery
    handle(info.request_id, json.loads(body))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from falq.shared.errors import PermanentError, RetryableError
from falq.shared.keys import Keys

#: fal's JWKS for webhook signatures.
DEFAULT_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
HEADERS = ("x-fal-webhook-request-id", "x-fal-webhook-user-id", "x-fal-webhook-timestamp", "x-fal-webhook-signature")


class WebhookRejected(PermanentError):
    """The delivery is not an authentic, fresh, first-time fal webhook.

    ``reason`` is one of ``missing_header``, ``malformed``, ``stale``, ``bad_signature``, ``replay``.
    """

    kind = "webhook_rejected"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JwksUnavailable(RetryableError):
    """fal's JWKS could not be fetched; answer 5xx so fal delivers again later."""

    kind = "jwks_unavailable"


@dataclass(frozen=True)
class WebhookInfo:
    """What a verified delivery says about itself."""

    request_id: str
    user_id: str
    timestamp: int


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes fal signs."""
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def settings_jwks_url(settings: object) -> str:
    """``settings.fal_jwks_url`` when the setting exists, else fal's JWKS."""
    value = getattr(settings, "fal_jwks_url", None)
    return value if isinstance(value, str) and value else DEFAULT_JWKS_URL


class WebhookVerifier:
    """Verifies fal webhook deliveries (thread-safe; share one per process).

    Parameters:
        client: Redis for replay protection (shared by every receiver of the deployment).
        jwks_url: where fal's public keys are.
        http: client used to fetch the JWKS (default: a new one, 10 s timeout).
        max_skew_s: accepted distance between the delivery's timestamp and now.
        cache_ttl_s: how long fetched keys are trusted without refetching.
        min_refresh_s: least time between two fetches triggered by unknown signatures.
        prefix: Redis key prefix (``{prefix}:webhook:seen:{digest}``).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        jwks_url: str = DEFAULT_JWKS_URL,
        http: httpx.Client | None = None,
        max_skew_s: float = 300.0,
        cache_ttl_s: float = 24 * 3600.0,
        min_refresh_s: float = 60.0,
        prefix: str = "falq",
    ) -> None:
        self.redis = client
        self.jwks_url = jwks_url
        self.http = http or httpx.Client(timeout=10.0, follow_redirects=False)
        self.max_skew_s = max_skew_s
        self.cache_ttl_s = cache_ttl_s
        self.min_refresh_s = min_refresh_s
        self.prefix = prefix
        self.keys = Keys(prefix)
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at = float("-inf")  # last successful fetch
        self._tried_at = float("-inf")  # last attempt (paces refetches, also while fal's JWKS is down)
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> WebhookInfo:
        """Return what the delivery says about itself, or raise :class:`WebhookRejected`."""
        low = {k.lower(): v for k, v in headers.items()}
        missing = [h for h in HEADERS if not low.get(h)]
        if missing:
            raise WebhookRejected("missing_header", f"webhook lacks {', '.join(missing)}")
        request_id, user_id, ts_text, sig_hex = (low[h] for h in HEADERS)
        try:
            timestamp = int(ts_text)
            signature = bytes.fromhex(sig_hex)
        except ValueError:
            raise WebhookRejected("malformed", "webhook timestamp or signature is malformed") from None
        current = time.time() if now is None else now
        if abs(current - timestamp) > self.max_skew_s:
            raise WebhookRejected(
                "stale", f"webhook timestamp is {current - timestamp:.0f}s from now (limit {self.max_skew_s:.0f}s)"
            )
        message = signed_message(request_id, user_id, ts_text, body)
        if not self._verified(signature, message):
            raise WebhookRejected("bad_signature", f"webhook for {request_id} has no valid fal signature")
        # Only authentic deliveries reach the replay check, so forgeries cannot fill Redis.
        digest = hashlib.sha256(f"{request_id}\n{timestamp}\n".encode() + signature).hexdigest()
        ttl = int(self.max_skew_s * 2) + 1
        if not self.redis.set(self.keys.webhook_seen(digest), b"1", nx=True, ex=ttl):
            raise WebhookRejected("replay", f"webhook for {request_id} at {timestamp} was already received")
        return WebhookInfo(request_id=request_id, user_id=user_id, timestamp=timestamp)

    # --- keys --------------------------------------------------------------------------------
    def _verified(self, signature: bytes, message: bytes) -> bool:
        if any(_ok(key, signature, message) for key in self._current_keys()):
            return True
        # Maybe fal rotated its key: refetch, but not on every forged request.
        if time.monotonic() - self._tried_at >= self.min_refresh_s:
            return any(_ok(key, signature, message) for key in self._fetch())
        return False

    def _current_keys(self) -> list[Ed25519PublicKey]:
        now = time.monotonic()
        if now - self._fetched_at > self.cache_ttl_s and (not self._keys or now - self._tried_at >= self.min_refresh_s):
            return self._fetch()
        return self._keys

    def _fetch(self) -> list[Ed25519PublicKey]:
        with self._lock:
            self._tried_at = time.monotonic()
            try:
                resp = self.http.get(self.jwks_url, headers={"Accept": "application/json"})
                resp.raise_for_status()
                keys = parse_jwks(resp.json())
            except (httpx.HTTPError, ValueError) as exc:
                if self._keys:  # keep verifying with what we have
                    return self._keys
                raise JwksUnavailable(f"cannot fetch fal's JWKS ({type(exc).__name__})") from None
            self._keys, self._fetched_at = keys, time.monotonic()
            return keys


def parse_jwks(doc: Any) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document (other key types are ignored)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            keys.append(Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))))
        except (ValueError, binascii.Error):
            continue
    return keys


def _ok(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
        return True
    except InvalidSignature:
        return False
