"""Mirroring: copy one fal output image into our bucket, verified and idempotent.

The bytes are streamed (or decoded, for sync-mode data URIs) into a spooled temporary
file -- memory up to ``settings.mirror_memory_bytes``, disk beyond -- while their
SHA-256, MD5 and size are computed. Then:

* the first bytes are sniffed: anything that is not really JPEG/PNG/WEBP (an HTML error
  page served as ``image/png``, say) is a :class:`MirrorRejected` naming what was found;
* Pillow reads width and height from the headers only, then verifies the file's structure
  (a truncated PNG is refused);
* the object key gets the extension of the *sniffed* type, so the key, its ContentType
  and the bytes always agree;
* the key is HEADed first: an object whose ``sha256`` metadata equals ours is left alone,
  so mirroring the same job twice writes the same objects and changes nothing.

Example::

    stored = mirror_image(http=http, storage=storage, settings=settings,
                          source_url=image["url"], key=storage.key_base(endpoint, job_id, t, 0),
                          job_id=job_id, request_id=request_id, index=0, expected_format="png")
    stored.key      # 'falq/fal-ai/qwen-image-2/text-to-image/2025/01/31/<job>/0.png'
"""

from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
from collections.abc import Iterable, Mapping
from typing import IO, Any

import httpx

from falq.shared.errors import MirrorRejected
from falq.shared.images import EXTENSIONS, MIME_OF_FORMAT, parse_data_uri, sniff_mime
from falq.shared.records import StoredImage
from falq.shared.settings import Settings
from falq.shared.storage import Storage
from falq.workers.download import open_media

__all__ = ["mirror_image", "mirror_outputs"]

log = logging.getLogger(__name__)

_KNOWN_EXTS = (".png", ".jpeg", ".jpg", ".webp")


class _Sink:
    """Write-through hashing into a spooled temporary file."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.file = fileobj
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)


def mirror_image(
    *,
    http: httpx.Client,
    storage: Storage,
    settings: Settings,
    source_url: str,
    key: str,
    job_id: str,
    request_id: str | None,
    index: int,
    expected_format: str | None,
    check_existing: bool = True,
) -> StoredImage:
    """Copy one output image into the bucket and describe it.

    Parameters:
        source_url: an https URL on an allowlisted media host, or a ``data:`` URI.
        key: the object key *without* extension (:meth:`Storage.key_base`); a known image
            extension on it is replaced. The stored key ends in the sniffed type's extension.
        expected_format: the requested ``output_format``; a different real type is logged,
            not rejected (the image is valid and already paid for).
        check_existing: look for an identical object first (False only when this is certainly
            the first copy: re-putting the same bytes would be harmless, just wasted).

    Raises:
        MirrorRejected: host not allowed, too big, not a JPEG/PNG/WEBP, unreadable.
        StorageTransientError: the media host or S3 failed transiently; retry later.
        StorageError: S3 refused for good.
    """
    with tempfile.SpooledTemporaryFile(max_size=settings.mirror_memory_bytes) as spool:
        sink = _Sink(spool)
        claimed: str | None
        if source_url[:5].lower() == "data:":
            source_host = "data-uri"
            claimed = _read_data_uri(source_url, sink, settings)
        else:
            with open_media(http, source_url, settings) as media:
                source_host = media.host
                claimed = media.content_type
                for chunk in media.iter_bytes():
                    sink.write(chunk)
        what = f"output image {index} from {source_host}"
        if sink.size == 0:
            raise MirrorRejected(f"{what} is empty")

        spool.seek(0)
        head = spool.read(64)
        mime = sniff_mime(head)
        if mime is None:
            raise MirrorRejected(
                f"{what} is not a JPEG, PNG or WEBP image: found {_describe(head)}"
                + (f" (claimed {claimed.split(';')[0].strip()})" if claimed else "")
            )
        width, height = _dimensions(spool, what)
        if expected_format and MIME_OF_FORMAT.get(expected_format.lower()) not in (None, mime):
            log.warning("%s is %s although %s was requested; storing it as such", what, mime, expected_format)

        final_key = _with_ext(key, EXTENSIONS[mime])
        sha = sink.sha256.hexdigest()
        storage.ensure_bucket()  # memoised: one HEAD per Storage (process)
        # A HEAD per image costs a round trip and ~14% of a worker's CPU (measured with py-spy);
        # the first mirror of a freshly finished request cannot find an object, so it skips it.
        existing = storage.head(final_key) if check_existing else None
        if existing is not None and _same_object(existing, sha, sink.size):
            log.info("s3://%s/%s already holds this image; not uploading again", storage.bucket, final_key)
        else:
            spool.seek(0)
            storage.put_fileobj(
                final_key,
                spool,  # type: ignore[arg-type]
                content_type=mime,
                size=sink.size,
                content_md5=base64.b64encode(sink.md5.digest()).decode("ascii"),
                metadata={
                    "falq-job-id": job_id,
                    "falq-request-id": request_id or "",
                    "falq-index": str(index),
                    "sha256": sha,
                    "width": str(width),
                    "height": str(height),
                },
            )
        return StoredImage(
            index=index,
            bucket=storage.bucket,
            key=final_key,
            size=sink.size,
            sha256=sha,
            content_type=mime,
            width=width,
            height=height,
            source_host=source_host,
        )


def mirror_outputs(
    *,
    http: httpx.Client,
    storage: Storage,
    settings: Settings,
    images: Iterable[Mapping[str, Any]],
    endpoint: str,
    job_id: str,
    created_at: float,
    request_id: str | None,
    expected_format: str | None = None,
) -> list[StoredImage]:
    """Mirror every entry of fal's ``images`` list (dicts with ``url``), in order.

    Keys come from :meth:`Storage.key_base` with the entry's position as index, so a
    re-run after a crash re-targets the same objects and skips those already stored.

    Example::

        outputs = mirror_outputs(http=http, storage=storage, settings=settings,
                                 images=result["images"], endpoint=rec.endpoint, job_id=rec.id,
                                 created_at=rec.created_at, request_id=rec.request_id)
    """
    stored: list[StoredImage] = []
    for index, entry in enumerate(images):
        url = entry.get("url") if isinstance(entry, Mapping) else None
        if not isinstance(url, str) or not url:
            raise MirrorRejected(f"fal output images[{index}] has no url")
        stored.append(
            mirror_image(
                http=http,
                storage=storage,
                settings=settings,
                source_url=url,
                key=storage.key_base(endpoint, job_id, created_at, index),
                job_id=job_id,
                request_id=request_id,
                index=index,
                expected_format=expected_format,
            )
        )
    return stored


def _read_data_uri(uri: str, sink: _Sink, settings: Settings) -> str | None:
    try:
        mime, data = parse_data_uri(uri, max_bytes=settings.max_image_bytes)
    except ValueError as exc:
        raise MirrorRejected(f"output image data URI rejected: {exc}") from None
    if len(data) > settings.max_image_bytes:
        raise MirrorRejected(f"output image is {len(data)} bytes; the limit is {settings.max_image_bytes}")
    sink.write(data)
    return mime


def _dimensions(fileobj: IO[bytes], what: str) -> tuple[int, int]:
    from PIL import Image

    fileobj.seek(0)
    try:
        with Image.open(fileobj) as img:  # reads the headers only
            width, height = img.size
    except Exception as exc:  # Pillow raises many types (incl. DecompressionBombError)
        raise MirrorRejected(f"{what} is not a readable image ({type(exc).__name__})") from None
    fileobj.seek(0)
    try:
        # The headers of a truncated file still parse. verify() walks the file's structure
        # without decoding pixels (for PNG: every chunk's CRC up to IEND), so a cut-off or
        # corrupted PNG is refused instead of stored. (For JPEG it checks little.)
        with Image.open(fileobj) as img:
            img.verify()
    except Exception as exc:
        raise MirrorRejected(f"{what} is truncated or corrupt ({type(exc).__name__}: {str(exc)[:80]})") from None
    return int(width), int(height)


def _same_object(head: Mapping[str, Any], sha: str, size: int) -> bool:
    meta = {str(k).lower(): v for k, v in (head.get("Metadata") or {}).items()}
    return meta.get("sha256") == sha and int(head.get("ContentLength", -1)) == size


def _with_ext(key: str, ext: str) -> str:
    lower = key.lower()
    for known in _KNOWN_EXTS:
        if lower.endswith(known):
            key = key[: -len(known)]
            break
    return f"{key}.{ext}"


def _describe(head: bytes) -> str:
    """A short, safe description of unrecognised bytes for error messages."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if text.startswith(b"<?xml") or text.startswith(b"<svg"):
        return "XML/SVG"
    if text.startswith((b"{", b"[")):
        return "JSON"
    if head.startswith(b"GIF8"):
        return "a GIF image"
    if text.startswith(b"<"):
        return "markup (HTML/XML)"
    return f"unknown bytes starting {head[:8].hex()}"
