"""falq.workers.download: URL checks (unit), then real fetches from a local media server."""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from falq.shared.errors import MirrorRejected, StorageTransientError
from falq.shared.settings import Settings
from falq.workers.download import _retry_after, check_media_url, host_allowed, open_media
from tests.s3server import MediaServer, make_png, media_server


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Fake getaddrinfo: names map to the given addresses (no real DNS in unit tests)."""
    table: dict[str, list[str]] = {"v3.fal.media": ["34.117.1.1"], "fal.media": ["34.117.1.2"]}

    def fake(host: str, port: Any, *args: Any, **kw: Any) -> list[Any]:
        if host not in table:
            raise socket.gaierror("unknown host")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return table


# --- allowlist / scheme / address (unit) -------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("fal.media", 443, True),
        ("v3.fal.media", 443, True),
        ("a.b.fal.media", 8443, True),
        ("FAL.MEDIA.", 443, True),
        ("evilfal.media", 443, False),
        ("fal.media.evil.com", 443, False),
        ("127.0.0.1", 8123, True),
        ("127.0.0.1", 8124, False),
        ("example.com", 443, False),
    ],
)
def test_host_allowed(host: str, port: int, allowed: bool) -> None:
    assert host_allowed(host, port, ["fal.media", "*.fal.media", "127.0.0.1:8123"]) is allowed


def test_public_allowlisted_https_passes(public_dns: dict[str, list[str]]) -> None:
    check_media_url("https://v3.fal.media/files/abc/x.png?token=s3cr3t", settings())


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("https://example.com/x.png", "not in the allowlist"),
        ("https://evil.com/x.png?u=https://fal.media/", "not in the allowlist"),
        ("ftp://fal.media/x.png", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http://fal.media/x.png", "plain http"),
        ("https://user:pw@fal.media/x.png", "credentials"),
        ("not a url", "scheme"),
    ],
)
def test_rejected_urls(url: str, match: str, public_dns: dict[str, list[str]]) -> None:
    with pytest.raises(MirrorRejected, match=match) as info:
        check_media_url(url, settings())
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("addr", ["10.0.0.5", "127.0.0.1", "169.254.169.254", "192.168.1.1", "100.64.0.1",
                                  "::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0"])
def test_private_addresses_rejected_unless_allowed(addr: str, public_dns: dict[str, list[str]]) -> None:
    public_dns["v3.fal.media"] = ["34.117.1.1", addr]  # one bad address among good ones is enough
    with pytest.raises(MirrorRejected, match="non-public address"):
        check_media_url("https://v3.fal.media/x.png", settings())
    check_media_url("https://v3.fal.media/x.png", settings(allow_private_media=True))


@pytest.mark.parametrize("literal", ["127.0.0.1", "[::1]", "169.254.169.254"])
def test_ip_literal_hosts_are_checked(literal: str) -> None:
    hosts = literal.strip("[]")
    with pytest.raises(MirrorRejected, match="non-public address"):
        check_media_url(f"https://{literal}/x.png", settings(media_hosts=hosts))


def test_http_allowed_only_for_allowlisted_host_in_private_mode() -> None:
    s = settings(media_hosts="127.0.0.1:9999", allow_private_media=True)
    check_media_url("http://127.0.0.1:9999/x.png", s)
    with pytest.raises(MirrorRejected, match="allowlist"):
        check_media_url("http://127.0.0.2:9999/x.png", s)


def test_dns_failure_is_transient(public_dns: dict[str, list[str]]) -> None:
    with pytest.raises(StorageTransientError, match="cannot resolve"):
        check_media_url("https://nowhere.fal.media/x.png", settings())


def test_retry_after_parsing() -> None:
    assert _retry_after("12") == 12.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (_retry_after(later) or 0) <= 31


@respx.mock
def test_redirect_off_allowlist_is_not_followed(public_dns: dict[str, list[str]]) -> None:
    first = respx.get("https://v3.fal.media/x.png").respond(302, headers={"Location": "https://evil.com/x.png"})
    evil = respx.get("https://evil.com/x.png").respond(200, content=b"x")
    with (
        httpx.Client() as http,
        pytest.raises(MirrorRejected, match="redirect to a host outside the allowlist"),
        open_media(http, "https://v3.fal.media/x.png", settings()),
    ):
        pass
    assert first.called and not evil.called


# --- real fetches from a local server ------------------------------------------------------


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    with media_server() as server:
        yield server


@pytest.fixture
def local(media: MediaServer) -> Settings:
    return settings(media_hosts=media.allow, allow_private_media=True, max_image_bytes=1024 * 1024)


def fetch(url: str, s: Settings, **kw: Any) -> bytes:
    timeout = httpx.Timeout(5.0, read=kw.pop("read", 5.0))
    with httpx.Client(timeout=timeout) as http, open_media(http, url, s, **kw) as stream:
        return b"".join(stream.iter_bytes())


def test_fetches_image(media: MediaServer, local: Settings) -> None:
    assert fetch(media.url("/img.png"), local) == make_png()


@pytest.mark.parametrize("path", ["/redirect-ok", "/redirect-chain"])
def test_follows_allowlisted_redirects(path: str, media: MediaServer, local: Settings) -> None:
    assert fetch(media.url(path), local) == make_png()


def test_redirect_loop_is_cut(media: MediaServer, local: Settings) -> None:
    with pytest.raises(MirrorRejected, match="redirected more than 3 times"):
        fetch(media.url("/redirect-loop"), local)


@pytest.mark.parametrize("path", ["/redirect-off", "/redirect-metadata"])
def test_redirect_to_other_host_is_rejected(path: str, media: MediaServer, local: Settings) -> None:
    before = media.hits.get("/img.png", 0)
    with pytest.raises(MirrorRejected, match="redirect to a host outside the allowlist"):
        fetch(media.url(path), local)
    assert media.hits.get("/img.png", 0) == before


def test_private_server_rejected_when_not_allowed(media: MediaServer) -> None:
    s = settings(media_hosts=media.allow, allow_private_media=False)
    before = media.hits.get("/img.png", 0)
    with pytest.raises(MirrorRejected):
        fetch(media.url("/img.png"), s)
    assert media.hits.get("/img.png", 0) == before  # refused before connecting


def test_content_length_over_cap_is_rejected_before_reading(media: MediaServer, local: Settings) -> None:
    with pytest.raises(MirrorRejected, match="1000000000000 bytes"):
        fetch(media.url("/huge-length"), local)


def test_streamed_body_over_cap_is_rejected(media: MediaServer, local: Settings) -> None:
    with pytest.raises(MirrorRejected, match="exceeds 1048576 bytes"):
        fetch(media.url("/endless"), local)


def test_slow_body_times_out_as_transient(media: MediaServer, local: Settings) -> None:
    with pytest.raises(StorageTransientError, match="timed out") as info:
        fetch(media.url("/slow"), local, read=0.5)
    assert info.value.reason == "media_fetch"


def test_overall_deadline(media: MediaServer, local: Settings) -> None:
    with pytest.raises(StorageTransientError, match="took too long"):
        fetch(media.url("/endless"), local, deadline_s=0.0)


@pytest.mark.parametrize(("path", "retry_after"), [("/503", 7.0), ("/429", None)])
def test_throttling_and_5xx_are_transient(path: str, retry_after: float | None, media: MediaServer,
                                          local: Settings) -> None:
    with pytest.raises(StorageTransientError) as info:
        fetch(media.url(path), local)
    assert info.value.retry_after == retry_after
    assert info.value.reason == "media_fetch"


def test_404_is_rejected(media: MediaServer, local: Settings) -> None:
    with pytest.raises(MirrorRejected, match="HTTP 404"):
        fetch(media.url("/404"), local)


def test_connection_reset_is_transient(media: MediaServer, local: Settings) -> None:
    with pytest.raises(StorageTransientError, match="failed"):
        fetch(media.url("/reset"), local)


def test_connection_refused_is_transient() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    s = settings(media_hosts=f"127.0.0.1:{port}", allow_private_media=True)
    with pytest.raises(StorageTransientError, match="ConnectError"):
        fetch(f"http://127.0.0.1:{port}/x.png", s)
