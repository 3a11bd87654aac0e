"""falq.workers.media.copy end to end: a local media server, moto S3, real bytes."""

from __future__ import annotations

import hashlib
import io
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from falq.shared.errors import MediaTruncated, MirrorRejected, StorageTransientError
from falq.shared.jobs.records import StoredImage
from falq.shared.settings import Settings
from falq.shared.storage.images import to_data_uri
from falq.shared.storage.s3 import Storage
from falq.workers.media.copy import mirror_image, mirror_outputs
from tests.support.s3server import MediaServer, make_png, media_server, moto_s3, s3_settings

ENDPOINT = "fal-ai/qwen-image-2/text-to-image"
CREATED = 1735689600.0  # 2025-01-01T00:00:00Z


def _jpeg(width: int = 640, height: int = 480) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    with media_server() as server:
        jpeg = _jpeg()
        server.routes["/photo.png"] = lambda h: _serve(h, jpeg, "image/png")  # lies about its type
        # Cut in half; the header parses and Content-Length matches the bytes sent, so the
        # download itself ends cleanly.
        for name, data, ctype in (("/cut.jpeg", jpeg, "image/jpeg"), ("/cut.png", _noise(640, 480, "PNG"), "image/png"),
                                  ("/cut.webp", _noise(640, 480, "WEBP"), "image/webp")):
            server.routes[name] = lambda h, cut=data[: len(data) // 2], ctype=ctype: _serve(h, cut, ctype)
        state = {"hits": 0}

        def cut_once(h: Any) -> None:  # a CDN that cut the first transfer only
            state["hits"] += 1
            _serve(h, jpeg[: len(jpeg) // 2] if state["hits"] == 1 else jpeg, "image/jpeg")

        server.routes["/cut-once.jpeg"] = cut_once
        yield server


def _noise(width: int, height: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def _serve(h: Any, body: bytes, ctype: str) -> None:
    h.send_response(200)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture
def settings(s3_endpoint: str, media: MediaServer) -> Settings:
    return s3_settings(s3_endpoint, media_hosts=media.allow, allow_private_media=True,
                       max_image_bytes=1024 * 1024, mirror_memory_bytes=4096)


@pytest.fixture
def storage(settings: Settings) -> Storage:
    s = Storage(settings)
    s.ensure_bucket()
    return s


@pytest.fixture
def puts(storage: Storage) -> list[str]:
    """Keys of every PutObject the storage client sends."""
    seen: list[str] = []
    storage.client.meta.events.register(
        "before-call.s3.PutObject", lambda params, **kw: seen.append(params.get("url_path", ""))
    )
    return seen


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def mirror(http: httpx.Client, storage: Storage, settings: Settings, url: str, index: int = 0,
           key: str | None = None) -> StoredImage:
    return mirror_image(
        http=http, storage=storage, settings=settings, source_url=url,
        key=key or storage.key_base(ENDPOINT, "job123", CREATED, index),
        job_id="job123", request_id="req-9", index=index, expected_format="png",
    )


def test_mirrors_png_byte_identical(http: httpx.Client, storage: Storage, settings: Settings,
                                    media: MediaServer) -> None:
    png = make_png()
    out = mirror(http, storage, settings, media.url("/img.png?token=abc"))
    assert out.key == "falq/fal-ai/qwen-image-2/text-to-image/2025/01/01/job123/0.png"
    assert out.bucket == storage.bucket
    assert (out.size, out.sha256) == (len(png), hashlib.sha256(png).hexdigest())
    assert (out.content_type, out.width, out.height) == ("image/png", 4, 3)
    assert out.source_host == "127.0.0.1"
    assert storage.get_bytes(out.key) == png
    head = storage.head(out.key)
    assert head is not None and head["ContentType"] == "image/png"
    assert head["Metadata"] == {
        "falq-job-id": "job123", "falq-request-id": "req-9", "falq-index": "0",
        "sha256": out.sha256, "width": "4", "height": "3",
    }
    assert httpx.get(storage.presign(out.key)).content == png


def test_second_mirror_is_a_no_op(http: httpx.Client, storage: Storage, settings: Settings,
                                  media: MediaServer, puts: list[str]) -> None:
    storage.client.put_bucket_versioning(Bucket=storage.bucket, VersioningConfiguration={"Status": "Enabled"})
    first = mirror(http, storage, settings, media.url("/img.png"))
    second = mirror(http, storage, settings, media.url("/redirect-ok"))
    assert first == second
    assert len(puts) == 1
    versions = storage.client.list_object_versions(Bucket=storage.bucket, Prefix=first.key)["Versions"]
    assert len(versions) == 1


def test_changed_bytes_are_uploaded_again(http: httpx.Client, storage: Storage, settings: Settings,
                                          media: MediaServer, puts: list[str]) -> None:
    key = storage.key_base(ENDPOINT, "job123", CREATED, 0)
    storage.put_fileobj(key + ".png", io.BytesIO(b"old"), content_type="image/png",
                        metadata={"sha256": "0" * 64}, size=3)
    out = mirror(http, storage, settings, media.url("/img.png"))
    assert storage.get_bytes(out.key) == make_png()
    assert len(puts) == 2


def test_extension_and_type_follow_the_real_bytes(http: httpx.Client, storage: Storage, settings: Settings,
                                                   media: MediaServer) -> None:
    key = storage.object_key(ENDPOINT, "job123", CREATED, 1, "png")
    out = mirror(http, storage, settings, media.url("/photo.png"), index=1, key=key)  # JPEG served as PNG
    assert out.key.endswith("/job123/1.jpeg")
    assert (out.content_type, out.width, out.height) == ("image/jpeg", 640, 480)
    assert out.size > settings.mirror_memory_bytes  # spilled to disk on the way
    assert hashlib.sha256(storage.get_bytes(out.key)).hexdigest() == out.sha256
    assert storage.head(key) is None


def test_data_uri(http: httpx.Client, storage: Storage, settings: Settings) -> None:
    png = make_png(8, 5)
    out = mirror(http, storage, settings, to_data_uri(png, "image/png"), index=2)
    assert (out.source_host, out.width, out.height, out.size) == ("data-uri", 8, 5, len(png))
    assert storage.get_bytes(out.key) == png


def test_bad_data_uri_is_rejected(http: httpx.Client, storage: Storage, settings: Settings) -> None:
    with pytest.raises(MirrorRejected, match="data URI"):
        mirror(http, storage, settings, "data:image/png;base64,@@@")


def test_html_posing_as_png_is_rejected(http: httpx.Client, storage: Storage, settings: Settings,
                                        media: MediaServer, puts: list[str]) -> None:
    expected = r"not a JPEG, PNG or WEBP image: found HTML \(claimed image/png\)"
    with pytest.raises(MirrorRejected, match=expected):
        mirror(http, storage, settings, media.url("/html.png"))
    assert puts == []


def test_truncated_image_is_rejected(http: httpx.Client, storage: Storage, settings: Settings) -> None:
    with pytest.raises(MirrorRejected, match="is truncated"):
        mirror(http, storage, settings, to_data_uri(b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "image/png"))
    iend = b"\0\0\0\0IEND\xaeB`\x82"
    with pytest.raises(MirrorRejected, match="not a readable image"):  # complete, but no PNG inside
        mirror(http, storage, settings, to_data_uri(b"\x89PNG\r\n\x1a\n" + b"\0" * 20 + iend, "image/png"))


@pytest.mark.parametrize(("path", "missing"), [("/cut.jpeg", "no JPEG end-of-image marker (FF D9)"),
                                             ("/cut.png", "no PNG IEND chunk"),
                                             ("/cut.webp", "RIFF header declares")])
def test_truncated_download_is_not_stored_and_is_retryable(path: str, missing: str, http: httpx.Client,
                                                          storage: Storage, settings: Settings, media: MediaServer,
                                                          puts: list[str]) -> None:
    key = storage.key_base(ENDPOINT, "job123", CREATED, 5)
    with pytest.raises(MediaTruncated) as info:
        mirror(http, storage, settings, media.url(path), index=5, key=key)
    message = str(info.value)
    assert "output image 5 from 127.0.0.1 is truncated" in message and missing in message, message
    assert isinstance(info.value, StorageTransientError) and info.value.retryable  # fetched again
    assert info.value.kind == "media_truncated"
    assert puts == []
    assert all(storage.head(f"{key}.{ext}") is None for ext in ("jpeg", "png", "webp"))


def test_cut_transfer_then_whole_image_is_stored(http: httpx.Client, storage: Storage, settings: Settings,
                                                 media: MediaServer, puts: list[str]) -> None:
    key = storage.key_base(ENDPOINT, "job-cut", CREATED, 0)
    with pytest.raises(MediaTruncated):
        mirror(http, storage, settings, media.url("/cut-once.jpeg"), key=key)
    assert puts == []
    out = mirror(http, storage, settings, media.url("/cut-once.jpeg"), key=key)
    assert (out.content_type, out.width, out.height) == ("image/jpeg", 640, 480)
    assert len(puts) == 1 and storage.get_bytes(out.key)[-2:] == b"\xff\xd9"


def test_truncated_data_uri_is_rejected_for_good(http: httpx.Client, storage: Storage, settings: Settings,
                                                 puts: list[str]) -> None:
    jpeg = _jpeg(64, 48)
    with pytest.raises(MirrorRejected, match=r"is truncated: .*FF D9"):
        mirror(http, storage, settings, to_data_uri(jpeg[: len(jpeg) // 2], "image/jpeg"))
    assert puts == []


@pytest.mark.parametrize("path", ["/huge-length", "/endless"])
def test_size_cap(path: str, http: httpx.Client, storage: Storage, settings: Settings, media: MediaServer,
                  puts: list[str]) -> None:
    with pytest.raises(MirrorRejected, match="1048576"):
        mirror(http, storage, settings, media.url(path))
    assert puts == []


def test_host_outside_allowlist(http: httpx.Client, storage: Storage, settings: Settings,
                                media: MediaServer) -> None:
    with pytest.raises(MirrorRejected, match="allowlist"):
        mirror(http, storage, settings, media.url("/img.png", host="localhost"))
    with pytest.raises(MirrorRejected, match="redirect to a host outside the allowlist"):
        mirror(http, storage, settings, media.url("/redirect-off"))


@pytest.mark.parametrize("path", ["/503", "/reset"])
def test_media_trouble_is_transient(path: str, http: httpx.Client, storage: Storage, settings: Settings,
                                    media: MediaServer) -> None:
    with pytest.raises(StorageTransientError):
        mirror(http, storage, settings, media.url(path))


def test_s3_down_is_transient(http: httpx.Client, media: MediaServer) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    s = s3_settings(f"http://127.0.0.1:{port}", media_hosts=media.allow, allow_private_media=True)
    with pytest.raises(StorageTransientError, match="S3"):
        mirror(http, Storage(s), s, media.url("/img.png"))


def test_mirror_outputs(http: httpx.Client, storage: Storage, settings: Settings, media: MediaServer) -> None:
    images = [{"url": media.url("/img.png"), "content_type": "image/png"},
              {"url": to_data_uri(make_png(2, 2), "image/png")}]
    out = mirror_outputs(http=http, storage=storage, settings=settings, images=images, endpoint=ENDPOINT,
                         job_id="jobX", created_at=CREATED, request_id=None)
    assert [o.index for o in out] == [0, 1]
    assert [o.key.rsplit("/", 2)[1:] for o in out] == [["jobX", "0.png"], ["jobX", "1.png"]]
    assert storage.head(out[0].key)["Metadata"]["falq-request-id"] == ""  # type: ignore[index]
    with pytest.raises(MirrorRejected, match=r"images\[0\] has no url"):
        mirror_outputs(http=http, storage=storage, settings=settings, images=[{}], endpoint=ENDPOINT,
                       job_id="jobX", created_at=CREATED, request_id=None)
