"""Signing falq's outgoing ``fal_webhook`` deliveries the way fal signs its webhooks.

A client that submitted through the gateway's fal-compatible routes with ``?fal_webhook=URL``
gets fal's webhook body, and with it fal's signature (fal's docs
"Verifying Your Webhook"): Ed25519 over ::

    "{request_id}\\n{user_id}\\n{timestamp}\\n{hex(sha256(body))}"

sent as hex in ``X-Fal-Webhook-Signature`` beside ``X-Fal-Webhook-Request-Id``, ``-User-Id`` and
``-Timestamp`` (unix seconds). The public key is a JWKS (``kty: OKP, crv: Ed25519``, ``x``
base64url) the gateway serves at ``/.well-known/jwks.json``, the path fal serves its own at, so a
receiver written for fal verifies falq's deliveries by changing only its JWKS URL. In falq's
deliveries ``request_id`` is the falq job id (what the gateway answered as ``request_id``) and
``user_id`` the job's tenant.

The private key is ``FALQ_FAL_WEBHOOK_SIGNING_KEY`` (base64url of the 32-byte seed) when set;
otherwise one is generated on first use and kept in Redis (``SET NX``, so every worker that
signs and every gateway that serves the JWKS agree on it). It is never logged.

Example::

    >>> signer = FalWebhookSigner(Ed25519PrivateKey.generate())
    >>> headers = signer.headers("job-1", "default", b'{"status":"OK"}', timestamp=1700000000)
    >>> sorted(headers)
    ['X-Fal-Webhook-Request-Id', 'X-Fal-Webhook-Signature', 'X-Fal-Webhook-Timestamp', 'X-Fal-Webhook-User-Id']
    >>> signer.jwks()["keys"][0]["crv"]
    'Ed25519'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from falq.shared.errors import PermanentError
from falq.shared.fal.webhook_verify import signed_message
from falq.shared.settings import Settings

__all__ = ["JWKS_PATH", "FalWebhookSigner", "SigningKeyInvalid", "redis_key"]

#: Where the gateway serves the public keys (fal's own JWKS path).
JWKS_PATH = "/.well-known/jwks.json"


class SigningKeyInvalid(PermanentError):
    """``FALQ_FAL_WEBHOOK_SIGNING_KEY`` is not base64url of a 32-byte Ed25519 seed."""

    kind = "signing_key_invalid"


def redis_key(prefix: str) -> str:
    """Where a generated signing key is kept (shared by the deployment's workers and gateways)."""
    return f"{prefix}:fal-webhook-signing-key"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _seed_key(seed: bytes) -> Ed25519PrivateKey:
    if len(seed) != 32:
        raise SigningKeyInvalid("FALQ_FAL_WEBHOOK_SIGNING_KEY must be base64url of a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


class FalWebhookSigner:
    """One Ed25519 key: the fal webhook headers for a body, and the JWKS of its public key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._x = _b64url(raw)
        self.kid = hashlib.sha256(raw).hexdigest()[:16]

    def __repr__(self) -> str:  # never the key
        return f"FalWebhookSigner(kid={self.kid!r})"

    @classmethod
    def for_deployment(cls, settings: Settings, r: redis.Redis) -> FalWebhookSigner:
        """The deployment's signer: the configured key, else the one kept in Redis (made now if none)."""
        if settings.fal_webhook_signing_key is not None:
            text = settings.fal_webhook_signing_key.get_secret_value().strip()
            try:
                seed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except (binascii.Error, ValueError):
                raise SigningKeyInvalid("FALQ_FAL_WEBHOOK_SIGNING_KEY is not base64url") from None
            return cls(_seed_key(seed))
        name = redis_key(settings.key_prefix)
        fresh = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        r.set(name, fresh, nx=True)  # the first process wins; every other one reads its key
        stored = r.get(name)
        if not isinstance(stored, bytes):
            raise SigningKeyInvalid(f"the signing key at {name} in Redis is missing or not bytes")
        return cls(_seed_key(stored))

    def headers(self, request_id: str, user_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """fal's four ``X-Fal-Webhook-*`` headers for ``body`` (signed now unless ``timestamp``)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self._key.sign(signed_message(request_id, user_id, ts, body)).hex()
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": ts,
            "X-Fal-Webhook-Signature": signature,
        }

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS document, in fal's shape."""
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self._x, "kid": self.kid, "use": "sig",
                          "alg": "EdDSA"}]}
