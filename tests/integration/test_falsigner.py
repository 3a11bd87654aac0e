"""The gateway's fal webhook signer (:mod:`falq.shared.fal.webhook_sign`) against a bare redis-server:
one key per deployment, kept in Redis unless configured, and verified by falq's own verifier."""

from __future__ import annotations

import base64

import httpx
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from falq.shared.fal.webhook_sign import FalWebhookSigner, SigningKeyInvalid
from falq.shared.fal.webhook_verify import WebhookVerifier
from falq.shared.settings import Settings


@pytest.fixture
def r(redis_server: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    return client


def test_signer_headers_verify_with_falqs_own_fal_webhook_verifier(r: redis.Redis) -> None:
    signer = FalWebhookSigner.for_deployment(Settings(_env_file=None), r)  # type: ignore[call-arg]
    again = FalWebhookSigner.for_deployment(Settings(_env_file=None), r)  # type: ignore[call-arg]
    assert again.jwks() == signer.jwks()  # one key per deployment, kept in Redis
    body = b'{"status":"OK"}'
    jwks = signer.jwks()
    http = httpx.Client(transport=httpx.MockTransport(lambda req: httpx.Response(200, json=jwks)))
    verifier = WebhookVerifier(r, jwks_url="https://gw.example/.well-known/jwks.json", http=http)
    info = verifier.verify(signer.headers("job-1", "team-a", body), body)
    assert (info.request_id, info.user_id) == ("job-1", "team-a")


def test_a_configured_signing_key_is_used_and_a_bad_one_refused(r: redis.Redis) -> None:
    key = Ed25519PrivateKey.generate()
    seed = base64.urlsafe_b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()
    settings = Settings(fal_webhook_signing_key=seed.rstrip("="), _env_file=None)  # type: ignore[call-arg]
    assert FalWebhookSigner.for_deployment(settings, r).jwks() == FalWebhookSigner(key).jwks()
    assert r.keys("*") == []  # a configured key is never written anywhere
    assert "fal_webhook_signing_key" not in repr(FalWebhookSigner(key))
    short = Settings(fal_webhook_signing_key="c2hvcnQ", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(SigningKeyInvalid):
        FalWebhookSigner.for_deployment(short, r)
