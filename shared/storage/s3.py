"""The one place falq talks to S3-compatible storage (boto3).

:class:`Storage` wraps a single boto3 S3 client (thread-safe, so one per process is
enough -- see :func:`get_storage`) and translates botocore's many failure shapes into
falq's two storage errors: :class:`~falq.shared.errors.StorageTransientError` (throttling,
5xx, connection trouble: try again later) and :class:`~falq.shared.errors.StorageError`
(access denied, no such bucket: trying again cannot help). Messages name the operation,
bucket, key and S3 error code, never credentials or presigned query strings.

Objects are always private: falq never sets an ACL; consumers get presigned URLs.

Example::

    storage = get_storage(settings)
    storage.ensure_bucket()
    key = storage.object_key("fal-ai/qwen-image-2/text-to-image", job_id, created_at, 0, "png")
    storage.put_fileobj(key, fileobj, content_type="image/png", metadata={"sha256": digest}, size=n)
    url = storage.presign(key)          # GET, valid for settings.presign_expiry_s
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore import exceptions as boto_exc
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from falq.shared.errors import ObjectMissing, StorageError, StorageTransientError
from falq.shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

__all__ = ["Storage", "build_s3_client", "get_storage", "reset_storage"]

log = logging.getLogger(__name__)

#: S3 error codes that mean "try again later" (plus any 5xx or 429 status).
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "SlowDown",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "500",
        "502",
        "503",
        "504",
    }
)
#: Connection refused/reset, timeouts, truncated bodies: the endpoint may recover.
_TRANSIENT_BOTO = (boto_exc.ConnectionError, boto_exc.HTTPClientError, boto_exc.IncompleteReadError)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_URL_QUERY = re.compile(r"(https?://[^\s?\"']*)\?[^\s\"']*")


def build_s3_client(settings: Settings) -> S3Client:
    """A boto3 S3 client configured from ``settings``.

    Credentials come from ``settings.aws_*`` when both key id and secret are set, else
    from boto3's default chain (environment, profile, instance role). A fresh boto3
    Session is used because the default session is not thread-safe to create clients.
    """
    config_kw: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": 3},
        "connect_timeout": 10,
        "read_timeout": 60,
        # botocore keeps at most this many connections and opens (resolves, TLS-handshakes) a
        # fresh one for every request beyond it, so a worker with hundreds of jobs mirroring at
        # once would pay a handshake on most PUTs. (Not measurable against moto, whose server
        # closes every connection; py-spy showed connect + DNS at about 8% of worker CPU there.)
        "max_pool_connections": max(64, min(settings.worker_concurrency, 512)),
        "s3": {"addressing_style": settings.s3_addressing_style},
        # Presigned URLs would otherwise be SigV2, which newer AWS regions reject.
        "signature_version": "s3v4",
    }
    if settings.s3_endpoint_url:
        # Several S3-compatible stores (older MinIO, R2, GCS interop) reject botocore's
        # default CRC32 trailer checksums; integrity is covered by Content-MD5 instead.
        config_kw["request_checksum_calculation"] = "when_required"
        config_kw["response_checksum_validation"] = "when_required"
    key_id = secret = token = None
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        key_id = settings.aws_access_key_id.get_secret_value()
        secret = settings.aws_secret_access_key.get_secret_value()
        token = settings.aws_session_token.get_secret_value() if settings.aws_session_token else None
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region,
        config=Config(**config_kw),
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )


class Storage:
    """falq's bucket: deterministic keys, idempotent-friendly HEAD, uploads, presigned GETs.

    Parameters:
        settings: the S3 fields (``s3_bucket``, ``s3_prefix``, ``s3_endpoint_url`` ...).
        client: an existing boto3 S3 client (tests); built from settings when omitted.

    Example::

        storage = Storage(settings)
        if storage.head(key) is None:
            storage.put_fileobj(key, f, content_type="image/png", metadata={}, size=size)
    """

    def __init__(self, settings: Settings, client: S3Client | None = None) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix.strip("/")
        self.client: S3Client = client if client is not None else build_s3_client(settings)
        self._bucket_ready = False
        self._lock = threading.Lock()

    # --- keys ------------------------------------------------------------------------------

    def key_base(self, endpoint: str, job_id: str, created_at: float, index: int, tenant_prefix: str = "") -> str:
        """The object key of output ``index`` without its extension (see :meth:`object_key`).

        ``tenant_prefix`` (:func:`falq.shared.tenants.store.s3_prefix_of`) puts a tenant's images in
        its own folder right under ``FALQ_S3_PREFIX``; ``""`` (the ``default`` tenant) keeps
        the layout falq always had.
        """
        day = dt.datetime.fromtimestamp(created_at, tz=dt.UTC)
        parts = [
            self.prefix,
            _clean_segment(tenant_prefix, "tenant prefix") if tenant_prefix else "",
            _clean_segment(endpoint, "endpoint"),
            f"{day:%Y}",
            f"{day:%m}",
            f"{day:%d}",
            _clean_segment(job_id, "job_id"),
            str(int(index)),
        ]
        return "/".join(p for p in parts if p)

    def object_key(self, endpoint: str, job_id: str, created_at: float, index: int, ext: str) -> str:
        """``{prefix}/{endpoint}/{yyyy}/{mm}/{dd}/{job_id}/{index}.{ext}`` (UTC date of created_at).

        Deterministic, so mirroring the same job twice targets the same objects. An empty
        prefix yields no leading slash.

        Example::

            >>> Storage(Settings(s3_prefix="falq"), client=object()).object_key(
            ...     "fal-ai/qwen-image-2/text-to-image", "ab12", 0.0, 1, "png")
            'falq/fal-ai/qwen-image-2/text-to-image/1970/01/01/ab12/1.png'
        """
        base = self.key_base(endpoint, job_id, created_at, index)
        ext = ext.lstrip(".")
        return f"{base}.{ext}" if ext else base

    def job_json_key(self, endpoint: str, job_id: str, created_at: float, tenant_prefix: str = "") -> str:
        """``{prefix}[/{tenant prefix}]/{endpoint}/{yyyy}/{mm}/{dd}/{job_id}/job.json``: the job's
        catalogue row, beside its images (:mod:`falq.shared.catalogue`)."""
        return self.key_base(endpoint, job_id, created_at, 0, tenant_prefix).rsplit("/", 1)[0] + "/job.json"

    # --- bucket ----------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Make sure the bucket exists, creating it when missing and ``s3_create_bucket`` is set.

        Safe to call from many workers at once (a lost creation race is fine). Raises
        :class:`StorageError` when the bucket is missing and may not (or cannot) be created.
        """
        if self._bucket_ready:
            return
        with self._lock:
            if self._bucket_ready:
                return
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                code, status = _code_status(exc)
                if status == 403 or code == "AccessDenied":
                    # HeadBucket needs s3:ListBucket, which a least-privilege key may lack
                    # while PutObject works; a truly inaccessible bucket fails on upload.
                    log.warning("HeadBucket on %r was refused (403); assuming the bucket exists", self.bucket)
                elif code in _NOT_FOUND_CODES or code == "NoSuchBucket":
                    self._create_bucket()
                else:
                    raise self._translate(exc, "HeadBucket") from None
            except BotoCoreError as exc:
                raise self._translate(exc, "HeadBucket") from None
            self._bucket_ready = True

    def _create_bucket(self) -> None:
        if not self.settings.s3_create_bucket:
            raise StorageError(
                f"S3 bucket {self.bucket!r} does not exist and FALQ_S3_CREATE_BUCKET is false; "
                "create it or enable bucket creation"
            )
        kw: dict[str, Any] = {"Bucket": self.bucket}
        if self.settings.s3_region and self.settings.s3_region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.s3_region}
        try:
            self.client.create_bucket(**kw)
        except ClientError as exc:
            code, _ = _code_status(exc)
            if code == "BucketAlreadyOwnedByYou":
                return  # another worker won the race
            if code == "BucketAlreadyExists":
                raise StorageError(
                    f"S3 bucket name {self.bucket!r} is taken by another account; "
                    "choose another FALQ_S3_BUCKET"
                ) from None
            if code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageError(
                    f"S3 bucket {self.bucket!r} does not exist and creating it was refused ({code})"
                ) from None
            raise self._translate(exc, "CreateBucket") from None
        except BotoCoreError as exc:
            raise self._translate(exc, "CreateBucket") from None

    # --- objects ---------------------------------------------------------------------------

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD answer (ContentLength, ContentType, Metadata, ETag ...) or None if absent."""
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code_status(exc)[0] in _NOT_FOUND_CODES:
                return None
            raise self._translate(exc, "HeadObject", key) from None
        except BotoCoreError as exc:
            raise self._translate(exc, "HeadObject", key) from None
        out = {k: v for k, v in dict(resp).items() if k != "ResponseMetadata"}
        out.setdefault("Metadata", {})
        return out

    def put_fileobj(
        self,
        key: str,
        fileobj: IO[bytes],
        *,
        content_type: str,
        metadata: dict[str, str],
        size: int,
        content_md5: str | None = None,
    ) -> None:
        """Upload ``size`` bytes from a seekable ``fileobj`` (read from its current position).

        One PUT (falq's images are far below S3's 5 GB single-PUT limit); botocore's retries
        rewind the seekable body. ``content_md5`` (base64) lets S3 verify the bytes.
        """
        kw: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": fileobj,
            "ContentLength": size,
            "ContentType": content_type,
            "Metadata": metadata,
        }
        if content_md5:
            kw["ContentMD5"] = content_md5
        try:
            self.client.put_object(**kw)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "PutObject", key) from None

    def put_bytes(self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None) -> None:
        """Upload a small object in one PUT (``job.json``); the same bytes again is a no-op in effect."""
        import base64
        import hashlib
        import io

        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # Content-MD5: S3 checks the bytes
        self.put_fileobj(key, io.BytesIO(data), content_type=content_type, metadata=metadata or {}, size=len(data),
                         content_md5=md5)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix`` (default: falq's whole prefix), in key order."""
        start = prefix if prefix else (f"{self.prefix}/" if self.prefix else "")
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "ListObjectsV2", start) from None

    def get_bytes(self, key: str) -> bytes:
        """The whole object (for tests and small reads; mirroring never reads back)."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            return resp["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "GetObject", key) from None

    def get_bytes_if_exists(self, key: str) -> bytes | None:
        """The whole object, or None when there is none: one GET, no HEAD first (caches read this)."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            return resp["Body"].read()
        except ClientError as exc:
            if _code_status(exc)[0] in _NOT_FOUND_CODES:
                return None
            raise self._translate(exc, "GetObject", key) from None
        except BotoCoreError as exc:
            raise self._translate(exc, "GetObject", key) from None

    def presign(self, key: str, expires_s: int | None = None) -> str:
        """A presigned GET URL for ``key`` (default lifetime ``settings.presign_expiry_s``).

        The URL grants read access to anyone holding it until it expires: hand it out,
        never log it.
        """
        expires = self.settings.presign_expiry_s if expires_s is None else int(expires_s)
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "Presign", key) from None

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many (tests and cleanup)."""
        deleted = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                objs: list[Any] = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objs:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objs, "Quiet": True})
                    deleted += len(objs)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "DeleteObjects", prefix) from None
        return deleted

    # --- errors ----------------------------------------------------------------------------

    def _translate(
        self, exc: Exception, op: str, key: str | None = None
    ) -> StorageError | StorageTransientError:
        """Map a botocore failure to falq's storage errors, with a credential-free message."""
        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        if isinstance(exc, ClientError):
            code, status = _code_status(exc)
            detail = self._scrub(str(exc.response.get("Error", {}).get("Message") or ""))
            text = f"S3 {op} {where} failed: {code} (HTTP {status})" + (f": {detail}" if detail else "")
            if code in TRANSIENT_CODES or status == 429 or status >= 500:
                return StorageTransientError(text, reason=f"s3_{code}")
            if key and code in _NOT_FOUND_CODES and op in ("GetObject", "HeadObject"):
                return ObjectMissing(text)
            return StorageError(text)
        if isinstance(exc, boto_exc.NoCredentialsError | boto_exc.PartialCredentialsError):
            return StorageError(f"S3 {op} {where} failed: no usable AWS credentials ({type(exc).__name__})")
        if isinstance(exc, _TRANSIENT_BOTO):
            # botocore's own text may include the endpoint URL; keep only its class name.
            return StorageTransientError(
                f"S3 {op} {where} failed: {type(exc).__name__} talking to the S3 endpoint",
                reason="s3_connection",
            )
        return StorageError(f"S3 {op} {where} failed: {type(exc).__name__}: {self._scrub(str(exc))}")

    def _scrub(self, text: str) -> str:
        """Remove credential values and URL query strings (presigned signatures) from ``text``."""
        text = _URL_QUERY.sub(r"\1?…", text)
        for secret in (
            self.settings.aws_access_key_id,
            self.settings.aws_secret_access_key,
            self.settings.aws_session_token,
        ):
            value = secret.get_secret_value() if secret else ""
            if value:
                text = text.replace(value, "***")
        return text[:500]


def _code_status(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    return str(err.get("Code") or status or "Unknown"), status


def _clean_segment(value: str, what: str) -> str:
    """A key segment without empty, ``.`` or ``..`` components (keys must stay under the prefix)."""
    parts = [p for p in value.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{what} {value!r} is not usable in an object key")
    return "/".join(parts)


_storages: dict[int, tuple[Settings, Storage]] = {}
_storages_lock = threading.Lock()


def get_storage(settings: Settings) -> Storage:
    """The process-wide :class:`Storage` for ``settings`` (one boto3 client per process)."""
    with _storages_lock:
        hit = _storages.get(id(settings))
        if hit is None or hit[0] is not settings:
            hit = (settings, Storage(settings))
            _storages[id(settings)] = hit
        return hit[1]


def reset_storage() -> None:
    """Forget cached :class:`Storage` objects (tests that change settings)."""
    with _storages_lock:
        _storages.clear()
