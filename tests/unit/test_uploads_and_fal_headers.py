"""Pure units of issue 23 points 8 and 9: the upload's retries and gcs fallback and the files/sign
call (``FalClient`` through ``httpx.MockTransport``), the gateway's fal header rules, and numeric
host spellings on both egress paths. The fal webhook signer, which keeps its key in Redis, is
tested in tests/integration/test_falsigner.py."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable

import httpx
import pytest

from falq.gateway.fal.headers import fal_headers_of
from falq.shared.egress import OutboundRefused
from falq.shared.errors import FalAuthError, FalBadAnswer, FalIngressError, MirrorRejected
from falq.shared.fal.client import FalClient
from falq.shared.settings import Settings

REST = "https://rest.example"
NGINX = "<html><body><center>nginx</center></body></html>"


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[FalClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    settings = Settings(fal_key="k-0123456789", fal_rest_url=REST, fal_platform_url="https://api.example/v1",
                        _env_file=None)  # type: ignore[call-arg]
    fal = FalClient(settings, http=httpx.Client(transport=httpx.MockTransport(record)))
    fal.upload_base_delay_s = fal.upload_max_delay_s = 0.001  # fal-client's delays, scaled down
    return fal, seen


def _initiate_ok(request: httpx.Request) -> httpx.Response:
    kind = request.url.params["storage_type"]
    return httpx.Response(200, json={"upload_url": f"https://up.example/{kind}", "file_url": f"https://cdn/{kind}.png"})


def test_upload_retries_a_429_and_an_edge_page_then_succeeds_on_the_cdn_path() -> None:
    answers = [httpx.Response(429), httpx.Response(502, text=NGINX)]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "up.example":
            return httpx.Response(200)
        return answers.pop(0) if answers else _initiate_ok(request)

    fal, seen = _client(handler)
    assert fal.upload(b"png", "image/png", "a.png") == "https://cdn/fal-cdn-v3.png"
    inits = [r for r in seen if r.url.path == "/storage/upload/initiate"]
    assert [r.url.params["storage_type"] for r in inits] == ["fal-cdn-v3"] * 3
    assert all(r.headers["authorization"] == "Key k-0123456789" for r in inits)
    [put] = [r for r in seen if r.url.host == "up.example"]
    assert "authorization" not in put.headers and put.content == b"png"


def test_upload_falls_back_to_gcs_when_the_cdn_path_keeps_failing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "up.example":
            return httpx.Response(200)
        if request.url.params["storage_type"] == "fal-cdn-v3":
            return httpx.Response(503, text=NGINX)
        return _initiate_ok(request)

    fal, seen = _client(handler)
    assert fal.upload(b"png", "image/png", "a.png") == "https://cdn/gcs.png"
    kinds = [r.url.params["storage_type"] for r in seen if r.url.path == "/storage/upload/initiate"]
    assert kinds == ["fal-cdn-v3"] * 3 + ["gcs"]


def test_upload_falls_back_when_the_put_to_the_cdn_fails() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "up.example":
            return httpx.Response(500 if request.url.path == "/fal-cdn-v3" else 200)
        return _initiate_ok(request)

    fal, seen = _client(handler)
    assert fal.upload(b"png", "image/png", "a.png") == "https://cdn/gcs.png"
    assert [r.url.path for r in seen if r.url.host == "up.example"] == ["/fal-cdn-v3"] * 3 + ["/gcs"]


def test_upload_does_not_retry_or_fall_back_on_a_refused_key() -> None:
    fal, seen = _client(lambda r: httpx.Response(401, json={"detail": "Invalid API key"}))
    with pytest.raises(FalAuthError):
        fal.upload(b"png", "image/png", "a.png")
    assert len(seen) == 1


def test_upload_gives_up_after_both_paths_with_the_last_error() -> None:
    fal, seen = _client(lambda r: httpx.Response(503, text=NGINX))
    with pytest.raises(FalIngressError):
        fal.upload(b"png", "image/png", "a.png")
    assert len(seen) == 3 + 10  # fal-client's budget on the fallback path


def test_sign_file_url_sends_fals_documented_shape() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"signed_url": f"{request.url.params['url']}?identity=abc"})

    fal, seen = _client(handler)
    assert fal.sign_file_url("https://v3.fal.media/files/b/x/o.png?old=1", 120) == \
        "https://v3.fal.media/files/b/x/o.png?identity=abc"
    [req] = seen
    assert req.method == "POST" and str(req.url).startswith("https://api.example/v1/storage/files/sign?")
    assert req.url.params["url"] == "https://v3.fal.media/files/b/x/o.png"
    assert json.loads(req.content) == {"expiration_seconds": 120}
    fal, _ = _client(lambda r: httpx.Response(200, json={"url": "nope"}))
    with pytest.raises(FalBadAnswer):
        fal.sign_file_url("https://v3.fal.media/files/b/x/o.png")


def test_fal_headers_are_normalised_and_the_newer_start_timeout_name_wins() -> None:
    passed, detail = fal_headers_of({"x-fal-queue-priority": "LOW", "X-Fal-Request-Timeout": "10",
                                     "X-Fal-Request-Start-Timeout": "30", "x-fal-store-io": "false",
                                     "x-fal-no-retry": "yes", "X-Fal-Runner-Hint": "warm-1"})
    assert detail == []
    assert passed == {"X-Fal-Queue-Priority": "low", "X-Fal-Request-Start-Timeout": "30.0",
                      "X-Fal-Request-Timeout": "30.0", "X-Fal-Store-IO": "0", "x-fal-no-retry": "1",
                      "X-Fal-Runner-Hint": "warm-1"}
    assert fal_headers_of({"x-fal-no-retry": "0"}) == ({}, [])
    assert fal_headers_of({"content-type": "application/json"}) == ({}, [])


@pytest.mark.parametrize(("name", "value"), [
    ("X-Fal-Queue-Priority", "urgent"), ("X-Fal-Request-Timeout", "1"), ("X-Fal-Request-Start-Timeout", "nan"),
    ("X-Fal-Store-IO", "2"), ("X-Fal-Object-Lifecycle-Preference", "[1]"),
    ("X-Fal-Object-Lifecycle-Preference", '{"expiration_duration_seconds": 59}'), ("x-fal-no-retry", "maybe"),
])
def test_a_malformed_fal_header_is_named(name: str, value: str) -> None:
    passed, detail = fal_headers_of({name: value})
    assert passed == {} and [d["loc"] for d in detail] == [["header", name.lower()]]


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.0.0.1", "[::1]"])
def test_callbacks_and_media_downloads_read_numeric_hosts_alike(host: str) -> None:
    """One egress path: a webhook target and a media URL with the same numeric host spelling
    become the same pinned request (no SNI name for an address, Host kept, the checked IP)."""
    from falq.shared.egress import check_target, pinned_request
    from falq.workers.media.download import _check as media_target
    from falq.workers.media.download import check_media_url

    url = f"https://{host}:8443/x.png"
    settings = Settings(media_hosts=f"{host}:8443", allow_private_media=True,
                        _env_file=None)  # type: ignore[call-arg]
    check_media_url(url, settings)
    hook, media = check_target(url, allow_private=True), media_target(url, settings)
    assert hook == media and hook.literal
    with httpx.Client() as http:
        a = pinned_request(http, hook, hook.addresses[0], "GET", headers={})
        b = pinned_request(http, media, media.addresses[0], "GET", headers={})
    assert (a.url, a.headers["host"], a.extensions) == (b.url, b.headers["host"], b.extensions)
    assert "sni_hostname" not in a.extensions and a.headers["connection"] == "close"
    with pytest.raises(OutboundRefused):
        check_target(url, allow_private=False)
    with pytest.raises(MirrorRejected):
        check_media_url(url, Settings(media_hosts=f"{host}:8443", _env_file=None))  # type: ignore[call-arg]


def test_a_named_host_gets_its_name_as_sni_on_both_paths() -> None:
    from falq.shared.egress import Target, pinned_request

    target = Target(url=httpx.URL("https://v3.fal.media/files/x.png"), host="v3.fal.media", port=443,
                    addresses=(ipaddress.ip_address("93.184.216.34"),))
    with httpx.Client() as http:
        req = pinned_request(http, target, target.addresses[0], "GET", headers={"Accept": "image/*"})
    assert req.extensions["sni_hostname"] == "v3.fal.media" and req.headers["host"] == "v3.fal.media"
    assert req.url.host == "93.184.216.34" and not target.literal
