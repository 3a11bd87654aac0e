"""Outgoing webhooks (``falq.shared.egress``): per-job callbacks and the gateway's ``fal_webhook``.

Unit tests of the sender (address rules, the checked address is the one connected to, TLS
names, redirects), then the two users against the real stack: with the default settings a
loopback receiver gets nothing and the record says ``refused``; when allowed it is called.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from falq.shared.egress import (
    OutboundRefused,
    OutboundUnresolved,
    check_target,
    check_url,
    make_client,
    post_json,
    sign,
    verify,
)
from falq.shared.errors import InvalidInput
from falq.shared.jobs.records import JobRecord
from falq.shared.settings import Settings
from falq.testing.stack import DevStack
from tests.conftest import wait_for

T2I = "fal-ai/qwen-image-2/text-to-image"
KEY = "falq-outbound-key-0123456789"


# --- helpers -----------------------------------------------------------------------------------


class Receiver:
    """A local HTTP(S) server that records every request; answers ``status`` (and ``location``)."""

    def __init__(self, *, status: int = 204, location: str | None = None, tls: ssl.SSLContext | None = None,
                 host: str = "127.0.0.1") -> None:
        self.hits: list[tuple[str, dict[str, str], bytes]] = []
        self.sni: list[str | None] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hits.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)  # type: ignore[assignment]
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


class FakeDNS:
    """``socket.getaddrinfo`` for made-up names: each lookup takes the next answer (the last repeats).

    Numeric hosts go to the real resolver (httpcore's ``create_connection`` looks up the IP it
    connects to), so a second lookup of a name -- DNS rebinding -- would get the later answer.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []
        real = socket.getaddrinfo

        def fake(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name not in self.answers:
                return real(host, port, *args, **kw)
            self.lookups.append(name)
            queue = self.answers[name]
            addrs = queue.pop(0) if len(queue) > 1 else queue[0]
            out = []
            for a in addrs:
                fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                out.append((fam, socket.SOCK_STREAM, 6, "", (a, port or 0)))
            return out

        monkeypatch.setattr(socket, "getaddrinfo", fake)

    def set(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    return FakeDNS(monkeypatch)


def self_signed(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A certificate for ``name``: (server context, client context trusting it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


def strict_settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


# --- the address rules -------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "http://2130706433/x", "https://[::ffff:7f00:1]/x",
                                 "http://169.254.169.254/latest", "http://10.1.2.3:8080/", "http://localhost/x",
                                 "http://api.localhost/x", "http://[::1]/x", "http://0/x", "http://[2002:7f00:1::]/"])
def test_enqueue_check_refuses_private_literals_and_loopback_names(url: str) -> None:
    with pytest.raises(OutboundRefused) as info:
        check_url(url, allow_private=False)
    assert info.value.reason == "address"
    check_url(url, allow_private=True)


@pytest.mark.parametrize(("url", "reason"), [("ftp://example.com/x", "url"), ("example.com/x", "url"),
                                             ("https://user:pw@example.com/x", "credentials"),
                                             ("https://" + "a" * 2100 + ".com/", "url"), (None, "url")])
def test_syntax_is_refused_even_when_private_is_allowed(url: Any, reason: str) -> None:
    with pytest.raises(OutboundRefused) as info:
        check_url(url, allow_private=True)
    assert info.value.reason == reason


def test_names_are_checked_when_resolved(dns: FakeDNS) -> None:
    dns.set("hooks.example", ["93.184.216.34", "10.0.0.5"])  # one private address among public ones
    check_url("https://hooks.example/x", allow_private=False)  # the cheap check does not resolve
    with pytest.raises(OutboundRefused, match=r"non-public address \(10\.0\.0\.5\)"):
        check_target("https://hooks.example/x", allow_private=False)
    assert check_target("https://hooks.example/x", allow_private=True).addresses[1] == ipaddress.ip_address("10.0.0.5")
    with pytest.raises(OutboundUnresolved):
        check_target("https://nowhere.invalid/x", allow_private=False)


def test_download_uses_the_same_rules() -> None:
    from falq.shared import egress as outbound
    from falq.workers.media import download

    assert download.is_public is outbound.is_public and download.resolve is outbound.resolve


# --- the sender --------------------------------------------------------------------------------


def test_sender_connects_to_the_checked_address(dns: FakeDNS) -> None:
    """The first answer is public, a second lookup would say loopback: the request goes to the first."""
    dns.set("hooks.example", ["93.184.216.34"], ["127.0.0.1"])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        done = post_json(http, "https://hooks.example:8443/cb?x=1", b"{}", {"X-Falq-Job-Id": "j1"},
                         allow_private=False, secret="s3cret")
    assert done.delivered and done.address == "93.184.216.34"
    [request] = seen
    assert request.url.host == "93.184.216.34" and request.url.port == 8443 and request.url.query == b"x=1"
    assert request.headers["host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"
    assert request.headers["connection"] == "close"  # a TLS connection is never reused for another name
    assert verify("s3cret", b"{}", request.headers["x-falq-signature"])
    assert dns.lookups == ["hooks.example"]  # resolved once


def test_sender_never_looks_the_name_up_again(dns: FakeDNS, receiver: Receiver) -> None:
    """Over a real socket: a second lookup would answer 127.0.0.2, where nothing listens."""
    dns.set("hooks.example", ["127.0.0.1"], ["127.0.0.2"])
    with make_client() as http:
        done = post_json(http, f"http://hooks.example:{receiver.port}/cb", b'{"a":1}', allow_private=True)
    assert done.delivered and done.address == "127.0.0.1"
    [(path, headers, body)] = receiver.hits
    assert (path, headers["host"], body) == ("/cb", f"hooks.example:{receiver.port}", b'{"a":1}')
    assert dns.lookups == ["hooks.example"]


def test_sender_tries_the_next_checked_address(dns: FakeDNS, receiver: Receiver) -> None:
    dns.set("hooks.example", ["127.0.0.2", "127.0.0.1"])  # nothing listens on 127.0.0.2
    with make_client() as http:
        done = post_json(http, f"http://hooks.example:{receiver.port}/cb", b"{}", allow_private=True)
    assert done.address == "127.0.0.1" and len(receiver.hits) == 1


def test_https_sends_sni_and_verifies_the_certificate_against_the_name(dns: FakeDNS, tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path, "hooks.example")
    tls = Receiver(tls=server_ctx)
    try:
        dns.set("hooks.example", ["127.0.0.1"])
        dns.set("other.example", ["127.0.0.1"])
        with httpx.Client(verify=client_ctx, trust_env=False) as http:
            done = post_json(http, f"https://hooks.example:{tls.port}/cb", b"{}", allow_private=True)
            assert done.delivered and tls.sni == ["hooks.example"]
            assert tls.hits[0][1]["host"] == f"hooks.example:{tls.port}"
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                post_json(http, f"https://other.example:{tls.port}/cb", b"{}", allow_private=True)
        assert len(tls.hits) == 1
    finally:
        tls.close()


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    redirector = Receiver(status=307, location=receiver.url)
    try:
        with make_client() as http:
            done = post_json(http, redirector.url, b"{}", allow_private=True)
        assert done.status_code == 307 and not done.delivered and done.final
        assert len(redirector.hits) == 1 and receiver.hits == []
    finally:
        redirector.close()


def test_private_target_is_refused_before_connecting(receiver: Receiver) -> None:
    with make_client() as http, pytest.raises(OutboundRefused, match="non-public address"):
        post_json(http, receiver.url, b"{}", allow_private=False)
    assert receiver.hits == []


def test_signatures_and_the_callbacks_re_export() -> None:
    from falq.workers.callbacks import sender as callbacks

    header = sign("topsecret", b'{"a":1}')
    assert verify("topsecret", b'{"a":1}', header) and not verify("other", b'{"a":1}', header)
    assert not verify("topsecret", b'{"a":1}', sign("topsecret", b'{"a":1}', 1000))  # stale
    assert callbacks.verify is verify and callbacks.sign is sign


# --- per-job callbacks (unit) -------------------------------------------------------------------


def _record(url: str) -> JobRecord:
    return JobRecord.new(endpoint=T2I, input={"prompt": "x"}, callback_url=url)


def test_callback_to_a_private_name_is_refused_once_without_posting(dns: FakeDNS) -> None:
    from falq.workers.callbacks.sender import post_callback

    dns.set("hooks.example", ["10.0.0.5"])
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    rec = _record("https://hooks.example/cb")
    t0 = time.monotonic()
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        attempt = post_callback(rec, delivery_id=f"{rec.id}:3", settings=strict_settings(), http=http)
    assert sent == [] and time.monotonic() - t0 < 1  # no POST, no backoff
    # final: the delivery loop marks it failed at once, after this one try
    assert attempt.delivered is False and attempt.final is True and attempt.status == "refused"
    assert attempt.reason is not None and "non-public address (10.0.0.5)" in attempt.reason

    sent.clear()
    rec2 = _record("https://hooks.example/cb")
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        attempt = post_callback(rec2, delivery_id=f"{rec2.id}:3",
                                settings=strict_settings(callback_allow_private=True), http=http)
    assert attempt.delivered is True and attempt.status == 204 and sent[0].url.host == "10.0.0.5"
    assert sent[0].headers["x-falq-delivery-id"] == f"{rec2.id}:3"


def test_producer_refuses_private_callback_url_at_enqueue(redis_server: str) -> None:
    from falq.producers import Falq

    lazy = redis.Redis(port=1)  # never connected: a refused request touches nothing
    strict = Falq(strict_settings(), redis_client=lazy)
    with pytest.raises(InvalidInput, match="callback_url: must not target a private or loopback address"):
        strict.validate(T2I, {"prompt": "x"}, callback_url="http://127.0.0.1:9/cb")
    with pytest.raises(InvalidInput, match="callback_url: must not carry credentials"):
        strict.validate(T2I, {"prompt": "x"}, callback_url="https://u:p@example.com/cb")
    with pytest.raises(InvalidInput, match="callback_url: must be an http"):
        strict.validate(T2I, {"prompt": "x"}, callback_url="ftp://example.com/cb")
    # An accepted one is checked against its tenant, which lives in Redis.
    live = redis.Redis.from_url(redis_server)
    strict = Falq(strict_settings(), redis_client=live)
    assert strict.validate(T2I, {"prompt": "x"}, callback_url="https://example.com/cb").callback_url
    relaxed = Falq(strict_settings(callback_allow_private=True), redis_client=live)
    assert relaxed.validate(T2I, {"prompt": "x"}, callback_url="http://127.0.0.1:9/cb").callback_url


# --- per-job callbacks on the stack --------------------------------------------------------------


@pytest.mark.timeout(120)
def test_worker_refuses_loopback_callback_by_default(clean_stack: DevStack, receiver: Receiver) -> None:
    from falq.producers import Falq

    # The producer is allowed to enqueue it (the stack's default); the worker runs with the default.
    clean_stack.start_worker(concurrency=5, env={"FALQ_CALLBACK_ALLOW_PRIVATE": "false"})
    falq = Falq(clean_stack.settings())
    rec = falq.generate("do not call me", callback_url=receiver.url).wait(60)
    assert rec.state == "completed"
    outcome = wait_for(lambda: falq.job(rec.id).record().metadata.get("callback"), 15, what="outcome recorded")
    assert outcome["delivered"] is False and outcome["status"] == "refused" and outcome["tries"] == 1
    assert "non-public address (127.0.0.1)" in outcome["reason"]
    time.sleep(0.3)
    assert receiver.hits == []


@pytest.mark.timeout(120)
def test_worker_delivers_loopback_callback_when_allowed(clean_stack: DevStack, receiver: Receiver) -> None:
    from falq.producers import Falq

    clean_stack.start_worker(concurrency=5)  # the stack sets FALQ_CALLBACK_ALLOW_PRIVATE=true
    falq = Falq(clean_stack.settings())
    rec = falq.generate("call me", callback_url=receiver.url).wait(60)
    outcome = wait_for(lambda: falq.job(rec.id).record().metadata.get("callback"), 15, what="outcome recorded")
    assert outcome["delivered"] is True and outcome["status"] == 204
    [(_, headers, body)] = receiver.hits
    assert json.loads(body)["id"] == rec.id and headers["x-falq-job-id"] == rec.id


# --- the gateway ---------------------------------------------------------------------------------


def _gateway(stack: DevStack, **kw: Any) -> Any:
    from falq.gateway import GatewayServer

    env = kw.pop("env", {})
    return GatewayServer(stack.settings(**env), api_keys=[KEY], gateway_hook_poll_s=0.1,
                         fal_jwks_url=f"{stack.emu.url}/.well-known/jwks.json", **kw)


def _fal_submit(url: str, webhook: str) -> dict[str, Any]:
    resp = httpx.post(f"{url}/{T2I}", params={"fal_webhook": webhook}, json={"prompt": "hook me"},
                      headers={"Authorization": f"Key {KEY}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _fal_webhook_outcome(url: str, job_id: str) -> dict[str, Any]:
    def outcome() -> Any:
        doc = httpx.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Key {KEY}"}).json()
        return doc["metadata"].get("fal_webhook")

    return wait_for(outcome, 60, what="fal_webhook outcome")  # type: ignore[no-any-return]


@pytest.mark.timeout(120)
def test_gateway_fal_webhook_to_loopback_refused_by_default(clean_stack: DevStack, receiver: Receiver) -> None:
    # The workers deliver fal_webhook through the outbox, under the callbacks' address rule.
    clean_stack.start_worker(concurrency=5, env={"FALQ_CALLBACK_ALLOW_PRIVATE": "false"})
    with _gateway(clean_stack) as gw:
        job = _fal_submit(gw.url, receiver.url)
        outcome = _fal_webhook_outcome(gw.url, job["request_id"])
    assert outcome["delivered"] is False and outcome["status"] == "refused" and outcome["tries"] == 1
    assert "non-public address (127.0.0.1)" in outcome["reason"]
    assert receiver.hits == []


@pytest.mark.timeout(120)
def test_gateway_fal_webhook_to_loopback_delivered_when_allowed(clean_stack: DevStack, receiver: Receiver) -> None:
    clean_stack.start_worker(concurrency=5, env={"FALQ_CALLBACK_SECRET": "gw-s3cret"})  # the workers sign
    with _gateway(clean_stack, gateway_webhook_allow_private=True, env={"FALQ_CALLBACK_SECRET": "gw-s3cret"}) as gw:
        job = _fal_submit(gw.url, receiver.url)
        outcome = _fal_webhook_outcome(gw.url, job["request_id"])
    assert outcome["delivered"] is True and outcome["status"] == 204
    [(_, headers, body)] = receiver.hits
    assert json.loads(body)["request_id"] == job["request_id"]
    assert verify("gw-s3cret", body, headers["x-falq-signature"])


def test_gateway_refuses_private_callback_url_on_post_jobs(clean_stack: DevStack) -> None:
    """``POST /v1/jobs`` with a loopback ``callback_url`` is a 422 (nothing enqueued) by default."""
    with _gateway(clean_stack, env={"FALQ_CALLBACK_ALLOW_PRIVATE": "false"}) as gw:
        resp = httpx.post(f"{gw.url}/v1/jobs", headers={"Authorization": f"Key {KEY}"}, timeout=30,
                          json={"endpoint": T2I, "input": {"prompt": "x"}, "callback_url": "http://127.0.0.1:9/cb"})
        assert resp.status_code == 422, resp.text
        assert "callback_url" in json.dumps(resp.json()["detail"])
        listed = httpx.get(f"{gw.url}/v1/jobs", headers={"Authorization": f"Key {KEY}"}).json()
    assert not (listed.get("jobs") if isinstance(listed, dict) else listed)
