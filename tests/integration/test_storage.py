"""falq.shared.storage.s3 against a real (moto) S3 server, plus error mapping with botocore's Stubber."""

from __future__ import annotations

import base64
import hashlib
import io
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from falq.shared.errors import StorageError, StorageTransientError
from falq.shared.storage.s3 import Storage, get_storage, reset_storage
from tests.support.s3server import moto_s3, s3_settings

SECRET = "test-secret-value-never-printed"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def storage(endpoint: str) -> Storage:
    s = Storage(s3_settings(endpoint))
    s.ensure_bucket()
    return s


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


# --- keys ----------------------------------------------------------------------------------


def test_object_key_is_deterministic_and_uses_utc_date() -> None:
    s = Storage(s3_settings("http://127.0.0.1:1", s3_prefix="/falq/"), client=object())  # type: ignore[arg-type]
    created = 1706745599.9  # 2024-01-31T23:59:59Z (Feb 1 in UTC+1)
    key = s.object_key("fal-ai/qwen-image-2/text-to-image", "job1", created, 2, "png")
    assert key == "falq/fal-ai/qwen-image-2/text-to-image/2024/01/31/job1/2.png"
    assert key == s.object_key("fal-ai/qwen-image-2/text-to-image", "job1", created, 2, ".png")
    assert s.key_base("fal-ai/qwen-image-2/text-to-image", "job1", created, 2) == key[: -len(".png")]


def test_object_key_empty_prefix_has_no_leading_slash() -> None:
    s = Storage(s3_settings("http://127.0.0.1:1", s3_prefix=""), client=object())  # type: ignore[arg-type]
    assert s.object_key("ep", "j", 0.0, 0, "webp") == "ep/1970/01/01/j/0.webp"


@pytest.mark.parametrize("job_id", ["", "../x", "a/../b", "."])
def test_object_key_refuses_path_tricks(job_id: str) -> None:
    s = Storage(s3_settings("http://127.0.0.1:1"), client=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        s.object_key("ep", job_id, 0.0, 0, "png")


# --- bucket --------------------------------------------------------------------------------


def test_ensure_bucket_creates_missing_bucket_once(endpoint: str) -> None:
    s = Storage(s3_settings(endpoint))
    with pytest.raises(ClientError):
        s.client.head_bucket(Bucket=s.bucket)
    s.ensure_bucket()
    s.client.head_bucket(Bucket=s.bucket)
    # A second worker (own client) finding the bucket present is fine, and so is a repeat.
    other = Storage(s.settings)
    other.ensure_bucket()
    other.ensure_bucket()


def test_ensure_bucket_refuses_when_creation_disabled(endpoint: str) -> None:
    s = Storage(s3_settings(endpoint, s3_create_bucket=False))
    with pytest.raises(StorageError, match="does not exist and FALQ_S3_CREATE_BUCKET is false"):
        s.ensure_bucket()


def _client_error(code: str, status: int, op: str) -> ClientError:
    body: Any = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(body, op)


class _RacingClient:
    """head_bucket says 404, then another worker creates the bucket first."""

    def __init__(self, create_code: str) -> None:
        self.create_code = create_code
        self.created = 0

    def head_bucket(self, **kw: Any) -> None:
        raise _client_error("404", 404, "HeadBucket")

    def create_bucket(self, **kw: Any) -> None:
        self.created += 1
        raise _client_error(self.create_code, 409 if "Bucket" in self.create_code else 403, "CreateBucket")


def test_ensure_bucket_tolerates_creation_race() -> None:
    client = _RacingClient("BucketAlreadyOwnedByYou")
    Storage(s3_settings("http://x"), client=client).ensure_bucket()  # type: ignore[arg-type]
    assert client.created == 1


@pytest.mark.parametrize(("code", "match"), [("AccessDenied", "refused"), ("BucketAlreadyExists", "taken")])
def test_ensure_bucket_not_permitted(code: str, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        Storage(s3_settings("http://x"), client=_RacingClient(code)).ensure_bucket()  # type: ignore[arg-type]


# --- objects -------------------------------------------------------------------------------


def test_put_head_get_round_trip(storage: Storage) -> None:
    data = bytes(range(256)) * 100
    key = storage.object_key("ep", "job", 0.0, 0, "png")
    assert storage.head(key) is None
    meta = {"sha256": "abc"}
    storage.put_fileobj(key, io.BytesIO(data), content_type="image/png", metadata=meta, size=len(data))
    head = storage.head(key)
    assert head is not None
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"sha256": "abc"}
    assert storage.get_bytes(key) == data
    assert storage.delete_prefix("falq/ep/") == 1
    assert storage.head(key) is None


def test_objects_are_private(storage: Storage) -> None:
    key = "falq/private/0.png"
    storage.put_fileobj(key, io.BytesIO(b"x"), content_type="image/png", metadata={}, size=1)
    grants = storage.client.get_object_acl(Bucket=storage.bucket, Key=key)["Grants"]
    assert all("AllUsers" not in str(g.get("Grantee", {})) for g in grants)
    unsigned = httpx.get(f"{storage.settings.s3_endpoint_url}/{storage.bucket}/{key}")
    assert unsigned.status_code in (200, 403)  # moto does not enforce ACLs; real S3 answers 403


def test_presigned_url_is_downloadable(storage: Storage) -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"payload" * 1000
    key = "falq/presign/0.png"
    storage.put_fileobj(key, io.BytesIO(data), content_type="image/png", metadata={}, size=len(data))
    url = storage.presign(key, expires_s=60)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    resp = httpx.get(url)
    assert resp.status_code == 200
    assert resp.content == data
    assert "X-Amz-Expires=3600" in storage.presign(key)


def test_content_md5_is_sent(storage: Storage) -> None:
    # moto does not verify Content-MD5 (real S3 answers BadDigest), so check it goes out.
    sent: list[str] = []
    storage.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **kw: sent.append(request.headers.get("Content-MD5"))
    )
    md5 = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    storage.put_fileobj("falq/md5/0.png", io.BytesIO(b"x"), content_type="image/png", metadata={}, size=1,
                        content_md5=md5)
    assert sent == [md5.encode()]


def test_missing_bucket_on_put_is_permanent(endpoint: str) -> None:
    s = Storage(s3_settings(endpoint))
    with pytest.raises(StorageError, match="NoSuchBucket") as info:
        s.put_fileobj("k", io.BytesIO(b"x"), content_type="image/png", metadata={}, size=1)
    assert not isinstance(info.value, StorageTransientError)


def test_s3_down_is_transient_and_message_has_no_secret() -> None:
    s = Storage(s3_settings(f"http://127.0.0.1:{_closed_port()}"))
    for call in (lambda: s.head("k"), s.ensure_bucket, lambda: s.get_bytes("k")):
        with pytest.raises(StorageTransientError) as info:
            call()
        assert info.value.reason == "s3_connection"
        assert SECRET not in str(info.value) and "AKIATEST" not in str(info.value)


# --- error mapping (botocore Stubber) -----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SlowDown", 503, True),
        ("ServiceUnavailable", 503, True),
        ("InternalError", 500, True),
        ("Throttling", 400, True),
        ("RequestTimeout", 400, True),
        ("SomethingNew", 502, True),
        ("AccessDenied", 403, False),
        ("InvalidAccessKeyId", 403, False),
        ("NoSuchBucket", 404, False),
    ],
)
def test_client_errors_are_mapped(code: str, status: int, transient: bool) -> None:
    s = Storage(s3_settings("http://127.0.0.1:1"))
    with Stubber(s.client) as stub:
        stub.add_client_error(
            "put_object", service_error_code=code, service_message=f"key {SECRET} refused",
            http_status_code=status,
        )
        with pytest.raises(StorageError if not transient else StorageTransientError) as info:
            s.put_fileobj("a/b.png", io.BytesIO(b"x"), content_type="image/png", metadata={}, size=1)
    assert isinstance(info.value, StorageTransientError) is transient
    assert code in str(info.value) and "s3://" in str(info.value)
    assert SECRET not in str(info.value)


def test_head_404_is_none_but_403_raises() -> None:
    s = Storage(s3_settings("http://127.0.0.1:1"))
    with Stubber(s.client) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
        assert s.head("k") is None
        with pytest.raises(StorageError):
            s.head("k")


def test_get_storage_is_cached_per_settings(endpoint: str) -> None:
    reset_storage()
    settings = s3_settings(endpoint)
    assert get_storage(settings) is get_storage(settings)
    assert get_storage(s3_settings(endpoint)) is not get_storage(settings)
    reset_storage()
