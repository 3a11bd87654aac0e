"""Mirroring: copy one fal output image into our bucket, verified and idempotent.

The bytes are streamed (or decoded, for sync-mode data URIs) into a spooled temporary
file -- memory up to ``settings.mirror_memory_bytes``, disk beyond -- while their
SHA-256, MD5 and size are computed. Then:

* an output URL that answers 403/404 (an account whose files are not public) is fetched
  again through a signed URL from fal's platform API (``sign_url``);
* the first bytes are sniffed: anything that is not really JPEG/PNG/WEBP (an HTML error
  page served as ``image/png``, say) is a :class:`MirrorRejected` naming what was found;
* the image must end where its format says it ends -- a JPEG's end-of-image marker
  (``FF D9``), a PNG's ``IEND`` chunk, a WEBP's RIFF length. Bytes that stop early although
  the download ended cleanly (a Content-Length that matches the cut) raise
  :class:`MediaTruncated`, a retryable error: the image is fetched again, and the job fails
  if it stays truncated (:data:`TRUNCATED_TRIES` downloads). A truncated image is never stored;
* Pillow reads width and height from the headers, then checks the data: PNG chunk
  structure and CRCs (``verify``), JPEG by decoding every scan at 1/8 scale (``draft``: the
  whole entropy-coded stream is read while the pixels take 1/64 of the memory), WEBP by
  decoding. A corrupt image is a :class:`MirrorRejected`. The bytes are read from the spool
  (memory up to ``mirror_memory_bytes``, disk beyond), never copied whole into memory
  (except WEBP, which Pillow decodes from one buffer);
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
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import httpx

from falq.shared.errors import MediaAccessDenied, MediaTruncated, MirrorRejected, PermanentError
from falq.shared.jobs.records import StoredImage
from falq.shared.settings import Settings
from falq.shared.storage.images import EXTENSIONS, MIME_OF_FORMAT, parse_data_uri, sniff_mime
from falq.shared.storage.s3 import Storage
from falq.workers.media.download import open_media

__all__ = ["TRUNCATED_TRIES", "mirror_image", "mirror_outputs"]

log = logging.getLogger(__name__)

_KNOWN_EXTS = (".png", ".jpeg", ".jpg", ".webp")
#: Downloads of one image that may end truncated before its job fails (see mirror_step).
TRUNCATED_TRIES = 3
#: Where an image's end marker is looked for: the end, or this many bytes before it (some
#: encoders pad after it; JPEG's entropy-coded data can never contain ``FF D9``).
_TAIL_BYTES = 1024
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its (constant) CRC
_JPEG_EOI = b"\xff\xd9"


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
    sign_url: Callable[[str], str] | None = None,
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
        sign_url: file URL -> a signed URL (:meth:`FalClient.sign_file_url`), asked for when the
            URL answers 403/404 (an account with restricted file access): the image is paid
            for, so a refused public link is not the end of it.

    Raises:
        MirrorRejected: host not allowed, too big, not a JPEG/PNG/WEBP, unreadable.
        StorageTransientError: the media host or S3 failed transiently; retry later.
        StorageError: S3 refused for good.
    """
    with tempfile.SpooledTemporaryFile(max_size=settings.mirror_memory_bytes) as spool:
        sink = _Sink(spool)
        claimed: str | None
        from_data_uri = source_url[:5].lower() == "data:"
        if from_data_uri:
            source_host = "data-uri"
            claimed = _read_data_uri(source_url, sink, settings)
        else:
            source_host, claimed = _download(http, source_url, settings, sink, sign_url)
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
        # First whether the bytes reach the image's end (Pillow cannot even open some cut files):
        # a cut download is worth another try, a cut data URI (fal's saved answer) is not.
        _check_complete(spool, mime, sink.size, what, refetch=not from_data_uri)
        width, height = _dimensions(spool, what)
        _check_decodes(spool, mime, what)
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


def _download(http: httpx.Client, url: str, settings: Settings, sink: _Sink,
              sign_url: Callable[[str], str] | None) -> tuple[str, str | None]:
    """Stream ``url`` into ``sink``; on 403/404 once more through a signed URL. Returns
    (host, claimed content type)."""
    try:
        return _stream_into(http, url, settings, sink)
    except MediaAccessDenied as exc:
        if sign_url is None:
            raise
        refused = exc
    # Nothing was written yet: the refusal came with the answer's status line.
    try:
        signed = sign_url(url)
    except PermanentError as exc:
        raise MirrorRejected(f"{refused}; a signed URL was refused too ({exc})") from None
    log.info("%s; mirroring through a signed URL from fal's platform API", refused)
    return _stream_into(http, signed, settings, sink)


def _stream_into(http: httpx.Client, url: str, settings: Settings, sink: _Sink) -> tuple[str, str | None]:
    with open_media(http, url, settings) as media:
        for chunk in media.iter_bytes():
            sink.write(chunk)
        return media.host, media.content_type


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
    tenant_prefix: str = "",
) -> list[StoredImage]:
    """Mirror every entry of fal's ``images`` list (dicts with ``url``), in order.

    Keys come from :meth:`Storage.key_base` with the entry's position as index (under the
    job's tenant's folder, ``tenant_prefix``), so a re-run after a crash re-targets the same
    objects and skips those already stored.

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
                key=storage.key_base(endpoint, job_id, created_at, index, tenant_prefix),
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


def _check_complete(fileobj: IO[bytes], mime: str, size: int, what: str, *, refetch: bool) -> None:
    """Raise :class:`MediaTruncated` (``refetch``, else :class:`MirrorRejected`) when the bytes
    stop before the image's end marker."""
    fileobj.seek(max(0, size - _TAIL_BYTES))
    tail = fileobj.read(_TAIL_BYTES)
    if mime == "image/jpeg":
        missing = None if _JPEG_EOI in tail else "no JPEG end-of-image marker (FF D9)"
    elif mime == "image/png":
        missing = None if _PNG_IEND in tail else "no PNG IEND chunk"
    else:  # image/webp: "RIFF" <little-endian length of what follows> "WEBP"
        fileobj.seek(0)
        riff = fileobj.read(12)
        declared = int.from_bytes(riff[4:8], "little") + 8
        missing = None if declared <= size else f"its RIFF header declares {declared} bytes"
    fileobj.seek(0)
    if missing is None:
        return
    text = f"{what} is truncated: the {size} bytes end before the image does ({missing})"
    if refetch:
        raise MediaTruncated(text + "; the transfer may have been cut", reason="media_truncated")
    raise MirrorRejected(text)


def _dimensions(fileobj: IO[bytes], what: str) -> tuple[int, int]:
    from PIL import Image

    fileobj.seek(0)
    try:
        with Image.open(fileobj) as img:  # reads the headers only
            width, height = img.size
    except Exception as exc:  # Pillow raises many types (incl. DecompressionBombError)
        raise MirrorRejected(f"{what} is not a readable image ({type(exc).__name__})") from None
    fileobj.seek(0)
    return int(width), int(height)


def _check_decodes(fileobj: IO[bytes], mime: str, what: str) -> None:
    """Raise :class:`MirrorRejected` unless Pillow reads the whole image without error."""
    from PIL import Image, ImageFile

    fileobj.seek(0)
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # a process-wide Pillow switch other code may turn on
            raise OSError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; cannot check the image")
        with Image.open(fileobj) as img:
            if mime == "image/png":
                # verify() walks every chunk and its CRC up to IEND without decoding pixels.
                img.verify()
            else:
                if mime == "image/jpeg":
                    # Decode every scan at 1/8 scale: the whole entropy-coded stream is read
                    # (a cut or corrupt one fails) while the pixels take 1/64 of the memory.
                    img.draft(None, (1, 1))
                img.load()
    except Exception as exc:
        raise MirrorRejected(f"{what} is truncated or corrupt ({type(exc).__name__}: {str(exc)[:80]})") from None
    fileobj.seek(0)


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
