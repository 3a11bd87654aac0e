"""SSRF: the media URL checks against the tricks tests/integration/test_download.py does not cover.

Each URL's host is put on the allowlist, so what is tested is the address check (private
media not allowed): numeric IPv4 spellings, names that resolve to loopback, IPv6 forms
that embed an IPv4 address, userinfo and fragment tricks, and redirects to such hosts. The
same spellings are refused as outgoing webhook targets (``falq.shared.egress``; the
sender's own tests are in ``tests/system/test_outbound_webhooks.py``).
Resolution is real (numeric forms and ``localhost`` need no network).
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
import respx

from falq.shared.egress import OutboundRefused, check_target, check_url
from falq.shared.errors import MirrorRejected
from falq.shared.settings import Settings
from falq.workers.media.download import check_media_url, open_media


def strict(hosts: str) -> Settings:
    return Settings(_env_file=None, media_hosts=hosts, allow_private_media=False)  # type: ignore[call-arg]


PRIVATE_SPELLINGS = [
    ("2130706433", "127.0.0.1"),  # decimal
    ("017700000001", "127.0.0.1"),  # octal, one number
    ("0x7f.0.0.1", "127.0.0.1"),  # hex part
    ("127.1", "127.0.0.1"),  # short form
    ("2852039166", "169.254.169.254"),  # the metadata service, decimal
    ("0xa9fea9fe", "169.254.169.254"),  # ... and hex
    ("127.0.0.1.", "127.0.0.1"),  # trailing dot
    ("localhost", ""),  # a name that resolves to loopback (127.0.0.1 and/or ::1)
    ("[::ffff:7f00:1]", "127.0.0.1"),  # IPv4-mapped IPv6, hex spelling
    ("[::ffff:169.254.169.254]", "169.254.169.254"),
    ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe"),  # NAT64 of the metadata service
    ("[2002:a9fe:a9fe::1]", "2002:a9fe:a9fe::1"),  # 6to4 of the metadata service
    ("[2002:7f00:1::]", "2002:7f00:1::"),  # 6to4 of loopback
    ("[::]", "::"),
    ("0", "0.0.0.0"),
]


@pytest.mark.parametrize(("host", "address"), PRIVATE_SPELLINGS)
def test_numeric_and_embedded_private_addresses_are_refused(host: str, address: str) -> None:
    allow = host.strip("[]").rstrip(".")
    with pytest.raises(MirrorRejected, match="non-public address") as info:
        check_media_url(f"https://{host}/x.png", strict(allow))
    assert address in str(info.value)
    # the same URL passes when private media are allowed (emulator / tests)
    check_media_url(f"https://{host}/x.png", Settings(_env_file=None, media_hosts=allow,  # type: ignore[call-arg]
                                                         allow_private_media=True))


@pytest.mark.parametrize(("host", "address"), PRIVATE_SPELLINGS)
def test_webhook_targets_follow_the_same_address_rules(host: str, address: str) -> None:
    """Callbacks and ``fal_webhook`` (falq.shared.egress) refuse the same spellings, at enqueue
    (literals, without DNS) and again when resolved for delivery."""
    url = f"https://{host}/hook"
    if host != "localhost":
        with pytest.raises(OutboundRefused, match="non-public address"):
            check_url(url, allow_private=False)
    with pytest.raises(OutboundRefused, match="non-public address") as info:
        check_target(url, allow_private=False)
    assert address in str(info.value)
    assert check_target(url, allow_private=True).addresses


def test_octal_dotted_form_is_not_a_url() -> None:
    # 0177.0.0.1 is 127.0.0.1 to inet_aton; httpx refuses to parse it at all.
    with pytest.raises(MirrorRejected, match="not a valid URL"):
        check_media_url("https://0177.0.0.1/x.png", strict("0177.0.0.1"))


@pytest.mark.parametrize(
    "url",
    [
        "https://fal.media@evil.com/x.png",  # userinfo: the host is evil.com
        "https://fal.media:443@evil.com/x.png",
        "https://evil.com#@fal.media/x.png",  # fragment: the host is evil.com
        "https://evil.com?@fal.media/x.png",  # query: the host is evil.com
        "https://evil.com\\@fal.media/x.png",  # backslash: browsers say evil.com; refused either way
        "https://evil.com/fal.media/x.png",
        "https://fal.media.evil.com/x.png",
    ],
)
def test_userinfo_and_parser_tricks_are_refused(url: str) -> None:
    with pytest.raises(MirrorRejected, match=r"not in the allowlist|credentials"):
        check_media_url(url, strict("fal.media,*.fal.media"))


@pytest.fixture
def fal_media_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def fake(host: str, port: Any, *args: Any, **kw: Any) -> Any:
        if host == "v3.fal.media":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("34.117.1.1", port))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize("target", ["https://2130706433/x.png", "http://[::ffff:7f00:1]/x.png",
                                    "https://localhost/x.png", "//169.254.169.254/latest/meta-data"])
@respx.mock
def test_redirects_to_private_spellings_are_not_followed(target: str, fal_media_is_public: None) -> None:
    # open_media sends the request to the address it checked, naming the host in Host (and SNI)
    first = respx.get("https://34.117.1.1/x.png", headers={"Host": "v3.fal.media"}).respond(
        302, headers={"Location": target})
    anything_else = respx.route(host__regex=r"^(?!34\.117\.1\.1$).*").respond(200, content=b"x")
    with (
        httpx.Client() as http,
        pytest.raises(MirrorRejected, match="redirect to a host outside the allowlist"),
        open_media(http, "https://v3.fal.media/x.png", strict("*.fal.media")),
    ):
        pass
    assert first.called and not anything_else.called


@respx.mock
def test_redirect_to_allowlisted_name_resolving_to_loopback_is_refused(fal_media_is_public: None) -> None:
    """Even a redirect to an allowlisted host is refused when that host is private."""
    respx.get("https://34.117.1.1/x.png", headers={"Host": "v3.fal.media"}).respond(
        302, headers={"Location": "https://localhost/x.png"})
    local = respx.route(host__regex=r"^(?!34\.117\.1\.1$).*").respond(200, content=b"x")
    with (
        httpx.Client() as http,
        pytest.raises(MirrorRejected, match="non-public address"),
        open_media(http, "https://v3.fal.media/x.png", strict("*.fal.media,localhost")),
    ):
        pass
    assert not local.called


def test_retry_after_parsing() -> None:
    """One Retry-After reader (falq.shared.egress) serves fal's answers and media hosts alike."""
    import email.utils
    import time

    from falq.shared.egress import retry_after_s

    assert retry_after_s("12") == 12.0
    assert retry_after_s(" 3 ") == 3.0
    assert retry_after_s("-4") == 0.0
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_s(later) or 0) <= 31
