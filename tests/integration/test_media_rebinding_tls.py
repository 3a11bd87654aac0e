"""DNS rebinding against a real https media host: the download connects to the address it checked.

A TLS server for ``media.rebind.test`` (certificate from a test CA) listens on 127.0.0.1 only.
The resolver answers 127.0.0.1 to the first lookup and 127.0.0.2 (where nothing listens) to
every later one, and the address rule is narrowed so that 127.0.0.1 counts as public and
127.0.0.2 does not: exactly the public-then-private answer of a rebinding attack, with
private media *not* allowed. The download must succeed from 127.0.0.1 after one lookup, send
``media.rebind.test`` as SNI and Host, and verify the certificate against that name.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import falq.workers.media.download as download
from falq.shared.errors import MirrorRejected, StorageTransientError
from falq.shared.settings import Settings
from falq.workers.media.download import open_media
from tests.support.s3server import make_png

NAME = "media.rebind.test"
OTHER = "other.rebind.test"  # allowlisted, resolves to the same server, but not on its certificate


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
          *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(signer, hashes.SHA256())


class TlsMedia:
    """An https media host for ``NAME`` on 127.0.0.1; records SNI names and Host headers."""

    def __init__(self, tmp: Path) -> None:
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "falq test CA")])
        ca = _cert("falq test CA", ca_key, ca_name, ca_key, ca=True)
        leaf = _cert(NAME, key, ca_name, ca_key, ca=False)
        self.ca_file = tmp / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (tmp / "leaf.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        self.sni: list[str | None] = []
        self.hosts: list[str] = []
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
        server_ctx.sni_callback = lambda sock, name, ctx: self.sni.append(name)  # type: ignore[assignment,misc,func-returns-value]
        png, hosts = make_png(), self.hosts

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                hosts.append(self.headers.get("Host", ""))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the certificate-mismatch test aborts handshakes on purpose

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.socket = server_ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=5.0, verify=ssl.create_default_context(cafile=str(self.ca_file)))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tls_media(tmp_path: Path) -> Iterator[TlsMedia]:
    server = TlsMedia(tmp_path)
    yield server
    server.close()


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch, tls_media: TlsMedia) -> list[str]:
    """Name lookups made (NAME and OTHER): the first answers 127.0.0.1, later ones 127.0.0.2."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kw: Any) -> list[Any]:
        if host not in (NAME, OTHER):
            return real(host, port, *args, **kw)  # IP literals: httpcore's own connect
        lookups.append(str(host))
        addr = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    # 127.0.0.1 plays a public address, 127.0.0.2 the private one a rebinding answer points to.
    monkeypatch.setattr(download, "is_public", lambda addr: addr == ipaddress.ip_address("127.0.0.1"))
    with socket.socket() as probe, pytest.raises(OSError):  # nothing listens where the rebound name points
        probe.settimeout(2)
        probe.connect(("127.0.0.2", tls_media.port))
    return lookups


def strict(tls_media: TlsMedia) -> Settings:
    return Settings(_env_file=None, media_hosts=f"{NAME}:{tls_media.port},{OTHER}:{tls_media.port}",  # type: ignore[call-arg]
                    allow_private_media=False)


def test_https_download_goes_to_the_checked_address(tls_media: TlsMedia, rebinding: list[str]) -> None:
    url = f"https://{NAME}:{tls_media.port}/files/x.png?token=t"
    with tls_media.client() as http, open_media(http, url, strict(tls_media)) as media:
        body = b"".join(media.iter_bytes())
    assert body == make_png()
    assert rebinding == [NAME]  # one lookup: the one that was checked
    assert media.address == "127.0.0.1" and media.host == NAME
    assert tls_media.sni == [NAME]  # SNI is the name, and the certificate was verified against it
    assert tls_media.hosts == [f"{NAME}:{tls_media.port}"]
    # Control: a client that resolves the name itself now reaches the rebound, dead address.
    with tls_media.client() as http, pytest.raises(httpx.ConnectError):
        http.get(url)


def test_a_second_lookup_would_have_been_refused(tls_media: TlsMedia, rebinding: list[str]) -> None:
    """The rule itself: once the name answers 127.0.0.2, the check refuses it before connecting."""
    rebinding.append("(first lookup spent)")
    with pytest.raises(MirrorRejected, match=r"non-public address \(127\.0\.0\.2\)"):
        download.check_media_url(f"https://{NAME}:{tls_media.port}/x.png", strict(tls_media))
    assert tls_media.hosts == []


def test_certificate_is_verified_against_the_name_not_the_address(tls_media: TlsMedia,
                                                                   rebinding: list[str]) -> None:
    url = f"https://{OTHER}:{tls_media.port}/x.png"  # same address, certificate is for NAME
    with (tls_media.client() as http, pytest.raises(StorageTransientError, match="ConnectError"),
          open_media(http, url, strict(tls_media))):
        pass
    assert tls_media.sni == [OTHER] and tls_media.hosts == []
