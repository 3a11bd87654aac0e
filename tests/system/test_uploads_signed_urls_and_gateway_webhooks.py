"""Issue 23 points 8 and 9 against the emulator over HTTP, with real workers and falq's defaults.

* an edit's local image is uploaded through ``storage_type=gcs`` while fal's CDN path is down;
* an output URL refused without credentials (restricted file access, 403 or 404) is mirrored
  through a URL signed by fal's platform API (``/storage/files/sign``);
* the gateway's outgoing ``fal_webhook`` verifies with the code fal documents for its own
  webhooks, pointed at the gateway's JWKS;
* fal's request headers sent to the gateway reach fal with the job's submit, and the result
  carries ``x-fal-billable-units``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from falq.gateway import GatewayServer
from falq.producers import Falq
from falq.shared.storage.s3 import Storage
from falq.testing.stack import TEST_FAL_KEY, DevStack
from tests.conftest import wait_for

T2I = "fal-ai/qwen-image-2/text-to-image"
GW_KEY = "falq-gw-key-c-0123456789"
GW_AUTH = {"Authorization": f"Key {GW_KEY}"}


def _png(path: Path) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (512, 512), (30, 120, 200)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def _emu_stats(stack: DevStack) -> dict[str, Any]:
    return httpx.get(f"{stack.emu.url}/_emulator/requests", timeout=30).json()  # type: ignore[no-any-return]


# --- uploads -------------------------------------------------------------------------------------


def test_upload_initiate_needs_the_key_and_a_storage_type(clean_stack: DevStack) -> None:
    url = f"{clean_stack.emu.url}/storage/upload/initiate"
    body = {"content_type": "image/png", "file_name": "a.png"}
    key = {"Authorization": f"Key {TEST_FAL_KEY}"}
    assert httpx.post(url, params={"storage_type": "fal-cdn-v3"}, json=body).status_code == 401
    missing = httpx.post(url, json=body, headers=key)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["query", "storage_type"]
    assert httpx.post(url, params={"storage_type": "s3"}, json=body, headers=key).status_code == 400
    assert httpx.post(url, params={"storage_type": "gcs"}, json=body, headers=key).status_code == 200


@pytest.mark.timeout(120)
def test_an_edit_uploads_its_local_image_through_gcs_while_the_cdn_path_is_down(
        clean_stack: DevStack, tmp_path: Path) -> None:
    clean_stack.emu.configure(upload_cdn_outage=True)
    clean_stack.start_worker(concurrency=5)
    falq = Falq(clean_stack.settings())
    handle = falq.edit("make it red", [_png(tmp_path / "cat.png")])
    rec = handle.wait(90)
    assert rec.state == "completed", rec.errors
    [url] = rec.input["image_urls"]
    assert url.startswith(f"{clean_stack.emu.url}/files/") and url.endswith("cat.png")
    # The CDN path was tried (and failed, three times) before the gcs path took the upload.
    assert _emu_stats(clean_stack)["faults"].get("upload_cdn_outage") == 3
    assert httpx.get(url, timeout=30).content == (tmp_path / "cat.png").read_bytes()


# --- restricted file access -----------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("acl", "refused"), [("forbid", 403), ("hide", 404)])
def test_an_output_refused_without_credentials_is_mirrored_through_a_signed_url(
        clean_stack: DevStack, acl: str, refused: int) -> None:
    clean_stack.emu.configure(file_access=acl)
    clean_stack.start_worker(concurrency=5)
    settings = clean_stack.settings()
    falq = Falq(settings)
    rec = falq.generate("a private fox").wait(90)
    assert rec.state == "completed", rec.errors
    assert len(rec.outputs) == 1
    stored = Storage(settings).get_bytes(rec.outputs[0].key)
    assert hashlib.sha256(stored).hexdigest() == rec.outputs[0].sha256
    # fal's own copy really is closed to a plain GET: the signed URL is what got it.
    key = {"Authorization": f"Key {TEST_FAL_KEY}"}
    result = httpx.get(f"{clean_stack.emu.url}/fal-ai/qwen-image-2/requests/{rec.request_id}", headers=key)
    source = result.json()["images"][0]["url"]
    assert httpx.get(source, timeout=30).status_code == refused
    signed = httpx.post(f"{clean_stack.emu.url}/v1/storage/files/sign", params={"url": source},
                        json={"expiration_seconds": 60}, headers=key)
    assert signed.status_code == 200 and httpx.get(signed.json()["signed_url"]).content == stored


# --- the gateway: fal's webhook signature, fal's headers ------------------------------------------


class _Receiver:
    """Keeps every POST (headers, raw body) and answers 200."""

    def __init__(self) -> None:
        self.hits: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fal/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    rec = _Receiver()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@pytest.fixture
def gw(clean_stack: DevStack) -> Iterator[GatewayServer]:
    with GatewayServer(clean_stack.settings(), api_keys=[GW_KEY],
                       fal_jwks_url=f"{clean_stack.emu.url}/.well-known/jwks.json") as server:
        yield server


def fal_documented_verify(jwks_url: str, headers: dict[str, str], body: bytes) -> bool:
    """fal's documented receiver ("Verifying Your Webhook", docs.fal.ai webhooks page): fetch the
    JWKS, check the timestamp is within 5 minutes, build ``request_id\\nuser_id\\ntimestamp\\n
    sha256hex(body)``, hex-decode the signature and try it against each Ed25519 key (``x``,
    base64url). Only the JWKS URL differs from fal's example."""
    jwks = httpx.get(jwks_url, timeout=10).json()
    request_id = headers.get("x-fal-webhook-request-id")
    user_id = headers.get("x-fal-webhook-user-id")
    timestamp = headers.get("x-fal-webhook-timestamp")
    signature_hex = headers.get("x-fal-webhook-signature")
    if not all([request_id, user_id, timestamp, signature_hex]):
        return False
    assert timestamp is not None and signature_hex is not None
    if abs(int(time.time()) - int(timestamp)) > 300:
        return False
    message = "\n".join([str(request_id), str(user_id), timestamp, hashlib.sha256(body).hexdigest()]).encode()
    signature = bytes.fromhex(signature_hex)
    for key in jwks.get("keys", []):
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


@pytest.mark.timeout(150)
def test_the_gateways_fal_webhook_verifies_with_fals_documented_code_and_its_jwks(
        clean_stack: DevStack, gw: GatewayServer, receiver: _Receiver) -> None:
    clean_stack.start_worker(concurrency=5)
    jwks = httpx.get(f"{gw.url}/.well-known/jwks.json", timeout=10)  # public, as fal's is
    assert jwks.status_code == 200 and jwks.json()["keys"][0]["kty"] == "OKP"
    resp = httpx.post(f"{gw.url}/{T2I}", params={"fal_webhook": receiver.url}, json={"prompt": "signed fox"},
                      headers=GW_AUTH, timeout=30)
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["request_id"]
    wait_for(lambda: receiver.hits, 90, what="the fal_webhook delivery")
    headers, body = receiver.hits[0]
    assert json.loads(body)["request_id"] == job_id and json.loads(body)["status"] == "OK"
    assert headers["x-fal-webhook-request-id"] == job_id and headers["x-fal-webhook-user-id"] == "default"
    assert fal_documented_verify(f"{gw.url}/.well-known/jwks.json", headers, body)
    assert not fal_documented_verify(f"{gw.url}/.well-known/jwks.json", headers, body + b" ")
    # fal's own keys do not verify it: a receiver changes only its JWKS URL.
    assert not fal_documented_verify(f"{clean_stack.emu.url}/.well-known/jwks.json", headers, body)
    # Another gateway of the same deployment serves the same key (kept in Redis).
    with GatewayServer(clean_stack.settings(), api_keys=[GW_KEY]) as other:
        assert httpx.get(f"{other.url}/.well-known/jwks.json", timeout=10).json() == jwks.json()


@pytest.mark.timeout(150)
def test_fals_request_headers_reach_fal_and_the_result_carries_billable_units(
        clean_stack: DevStack, gw: GatewayServer) -> None:
    clean_stack.start_worker(concurrency=5)
    sent = {"X-Fal-Queue-Priority": "low", "X-Fal-Request-Start-Timeout": "45", "X-Fal-Store-IO": "0",
            "X-Fal-Object-Lifecycle-Preference": '{"expiration_duration_seconds": 86400}', "x-fal-no-retry": "1"}
    resp = httpx.post(f"{gw.url}/{T2I}", json={"prompt": "headers fox"}, headers={**GW_AUTH, **sent}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    done = wait_for(lambda: (s := httpx.get(body["status_url"], headers=GW_AUTH)).status_code == 200 and s, 90,
                    what="COMPLETED")
    assert done.json()["status"] == "COMPLETED"
    result = httpx.get(body["response_url"], headers=GW_AUTH, timeout=30)
    assert result.status_code == 200 and float(result.headers["x-fal-billable-units"]) == 1.0
    [req] = [r for r in _emu_stats(clean_stack)["requests"] if r["endpoint"] == T2I]
    got = {k.lower(): v for k, v in req["headers"].items()}
    assert got["x-fal-queue-priority"] == "low"
    assert got["x-fal-request-start-timeout"] == got["x-fal-request-timeout"] == "45.0"
    assert got["x-fal-store-io"] == "0" and got["x-fal-no-retry"] == "1"
    assert json.loads(got["x-fal-object-lifecycle-preference"]) == {"expiration_duration_seconds": 86400}


def test_malformed_fal_headers_are_refused_naming_the_header(clean_stack: DevStack, gw: GatewayServer) -> None:
    bad = {"X-Fal-Request-Start-Timeout": "0.5", "X-Fal-Store-IO": "maybe",
           "X-Fal-Object-Lifecycle-Preference": '{"expiration_duration_seconds": 5}'}
    resp = httpx.post(f"{gw.url}/{T2I}", json={"prompt": "x"}, headers={**GW_AUTH, **bad}, timeout=30)
    assert resp.status_code == 422
    locs = {tuple(d["loc"]) for d in resp.json()["detail"]}
    assert locs == {("header", "x-fal-request-start-timeout"), ("header", "x-fal-store-io"),
                    ("header", "x-fal-object-lifecycle-preference")}
    assert _emu_stats(clean_stack)["total_requests"] == 0
