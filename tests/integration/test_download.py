"""falq.workers.media.download: URL checks (unit), then real fetches from a local media server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from falq.shared.errors import MirrorRejected, StorageTransientError
from falq.shared.settings import Settings
from falq.workers.media.download import check_media_url, host_allowed, open_media
from tests.support.s3server import MediaServer, make_png, media_server


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


@respx.mock
def test_redirect_off_allowlist_is_not_followed(public_dns: dict[str, list[str]]) -> None:
    # The request goes to the checked address, named by Host and SNI (see the pinning tests below).
    first = respx.get("https://34.117.1.1/x.png", headers={"Host": "v3.fal.media"}).respond(
        302, headers={"Location": "https://evil.com/x.png"})
    evil = respx.get(host="evil.com").respond(200, content=b"x")
    with (
        httpx.Client() as http,
        pytest.raises(MirrorRejected, match="redirect to a host outside the allowlist"),
        open_media(http, "https://v3.fal.media/x.png", settings()),
    ):
        pass
    assert first.called and not evil.called


# --- DNS rebinding: one lookup per hop, the request pinned to the checked address --------------


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> Rebinding:
    """getaddrinfo for names in ``Rebinding.names``: the first ``good`` lookups answer ``first``,
    every later one ``then``. IP literals (httpcore's own connect) go to the real resolver."""
    rebinding = Rebinding()
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kw: Any) -> list[Any]:
        if host not in rebinding.names:
            return real(host, port, *args, **kw)
        rebinding.lookups.append(str(host))
        addr = rebinding.first if len(rebinding.lookups) <= rebinding.good else rebinding.then
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return rebinding


class Rebinding:
    def __init__(self) -> None:
        self.names = {"v3.fal.media", "fal.media", "media.rebind.test"}
        self.first, self.then = "34.117.1.1", "10.0.0.5"
        self.good = 1
        self.lookups: list[str] = []


@respx.mock
def test_public_then_private_answer_is_never_connected_to(rebinding_dns: Rebinding) -> None:
    """The check saw 34.117.1.1; a second lookup would say 10.0.0.5. The request goes to the first."""
    image = respx.get("https://34.117.1.1/files/x.png").respond(200, content=make_png())
    private = respx.get(host="10.0.0.5").respond(200, content=b"internal")
    by_name = respx.get(host="v3.fal.media").respond(200, content=b"resolved again")
    with httpx.Client() as http, open_media(http, "https://v3.fal.media/files/x.png?t=1", settings()) as media:
        body = b"".join(media.iter_bytes())
    assert body == make_png() and media.address == "34.117.1.1" and media.host == "v3.fal.media"
    assert rebinding_dns.lookups == ["v3.fal.media"]  # exactly one lookup
    assert not private.called and not by_name.called
    sent = image.calls.last.request
    assert sent.headers["Host"] == "v3.fal.media" and sent.url.params["t"] == "1"
    assert sent.extensions["sni_hostname"] == "v3.fal.media"  # TLS verifies the name, not the IP
    assert sent.headers["Connection"] == "close"


@respx.mock
def test_each_redirect_hop_is_resolved_once_and_pinned(rebinding_dns: Rebinding) -> None:
    rebinding_dns.good = 2  # one good answer per hop; a third lookup would answer 10.0.0.5
    hop1 = respx.get("https://34.117.1.1/a.png", headers={"Host": "v3.fal.media"}).respond(
        302, headers={"Location": "https://fal.media:8443/b.png"})
    hop2 = respx.get("https://34.117.1.1:8443/b.png", headers={"Host": "fal.media:8443"}).respond(
        200, content=make_png())
    s = settings(media_hosts="v3.fal.media,fal.media")
    with httpx.Client() as http, open_media(http, "https://v3.fal.media/a.png", s) as media:
        assert b"".join(media.iter_bytes()) == make_png()
    assert hop1.called and hop2.called
    assert hop2.calls.last.request.extensions["sni_hostname"] == "fal.media"
    assert rebinding_dns.lookups == ["v3.fal.media", "fal.media"]


def test_rebinding_redirect_target_is_checked_at_its_own_lookup(rebinding_dns: Rebinding) -> None:
    """The redirect hop's one lookup answers a private address: refused before connecting."""
    with respx.mock:
        respx.get("https://34.117.1.1/a.png").respond(302, headers={"Location": "https://fal.media/b.png"})
        private = respx.get(host="10.0.0.5").respond(200, content=b"internal")
        with (
            httpx.Client() as http,
            pytest.raises(MirrorRejected, match=r"fal.media resolves to a non-public address \(10.0.0.5\)"),
            open_media(http, "https://v3.fal.media/a.png", settings(media_hosts="v3.fal.media,fal.media")),
        ):
            pass
    assert not private.called
    assert rebinding_dns.lookups == ["v3.fal.media", "fal.media"]


@respx.mock
def test_next_checked_address_is_tried_when_connecting_fails(public_dns: dict[str, list[str]]) -> None:
    public_dns["v3.fal.media"] = ["34.117.1.1", "34.117.1.9"]
    down = respx.get(host="34.117.1.1").mock(side_effect=httpx.ConnectError("refused"))
    up = respx.get("https://34.117.1.9/x.png").respond(200, content=make_png())
    with httpx.Client() as http, open_media(http, "https://v3.fal.media/x.png", settings()) as media:
        assert b"".join(media.iter_bytes()) == make_png()
    assert down.called and up.called and media.address == "34.117.1.9"


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


# --- DNS rebinding against a real server ---------------------------------------------------------


@pytest.fixture
def rebound(media: MediaServer, rebinding_dns: Rebinding) -> Settings:
    """``media.rebind.test`` answers 127.0.0.1 (where the media server listens) to the lookups a
    download needs, then 127.0.0.2 (where nothing listens on that port).

    With ``allow_private_media`` the name is still resolved once per hop and the request pinned
    to that answer. (The rebinding attack itself, public-then-private with private media
    refused, over https with SNI: tests/integration/test_media_rebinding_tls.py.)"""
    rebinding_dns.first, rebinding_dns.then = "127.0.0.1", "127.0.0.2"
    with socket.socket() as probe, pytest.raises(OSError):  # the rebound address really is dead
        probe.settimeout(2)
        probe.connect(("127.0.0.2", media.port))
    return settings(media_hosts=f"media.rebind.test:{media.port}", allow_private_media=True,
                    max_image_bytes=1024 * 1024)


@pytest.mark.parametrize(("path", "hops"), [("/img.png", 1), ("/redirect-ok", 2), ("/redirect-chain", 3)])
def test_download_connects_to_the_address_it_checked(path: str, hops: int, media: MediaServer, rebound: Settings,
                                                     rebinding_dns: Rebinding) -> None:
    rebinding_dns.good = hops
    url = media.url(path, host="media.rebind.test")
    with httpx.Client(timeout=5.0) as http, open_media(http, url, rebound) as stream:
        body = b"".join(stream.iter_bytes())
    assert body == make_png() and stream.address == "127.0.0.1"
    assert rebinding_dns.lookups == ["media.rebind.test"] * hops  # exactly one lookup per hop
    # Control: a client that resolves the name itself now lands on the rebound address.
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=5.0)


def test_pinned_request_names_the_host(media: MediaServer, rebound: Settings) -> None:
    seen: list[str] = []

    def record(h: Any) -> None:
        seen.append(h.headers["Host"])
        media.routes["/img.png"](h)

    media.routes["/host-echo.png"] = record
    assert fetch(media.url("/host-echo.png", host="media.rebind.test"), rebound) == make_png()
    assert seen == [f"media.rebind.test:{media.port}"]
