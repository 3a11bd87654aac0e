"""Gallery thumbnails: made once per image from its S3 copy, cached in S3 and in memory.

A thumbnail lives in the bucket beside the images, under a deterministic key named by the
image's sha256 and the size (``{FALQ_S3_PREFIX}/_thumbs/{px}/{sha256}.jpg``), so

* it is made once per image for every gateway replica and survives restarts (no local disk
  to provision in a container, nothing to warm after a deploy);
* the same bytes always map to the same key: two replicas racing to make one write the same
  object, and a re-mirrored image finds its thumbnail already there.

A page view reads thumbnails only (about 15-30 kB each), never the full images; the last
few hundred stay in this process's memory (:class:`ByteLRU`), so a page of 60 answers from
RAM once warm. Full-size images are streamed by the console's image route after its access
check; no presigned URL reaches the browser.

Example::

    thumbs = Thumbnails(storage, px=384)
    jpeg = thumbs.get(rec.outputs[0])       # bytes; made and stored on the first call only
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image

from falq.shared.records import StoredImage
from falq.shared.storage import Storage

#: Images larger than this many pixels are refused (Pillow's guard against decompression bombs).
MAX_PIXELS = 64_000_000


class NoPreview(Exception):
    """The stored object is not an image Pillow can read (or is too large to): no thumbnail."""


class ByteLRU:
    """A thread-safe LRU of byte strings bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)


def make_thumbnail(data: bytes, px: int) -> bytes:
    """A JPEG whose longest side is at most ``px`` (transparency flattened onto white).

    Raises :class:`NoPreview` for bytes that are no readable image, or one over :data:`MAX_PIXELS`.
    """
    try:
        return _thumbnail(data, px)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise NoPreview(f"no thumbnail: {type(exc).__name__}") from None


def _thumbnail(data: bytes, px: int) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > MAX_PIXELS:
            raise ValueError(f"image of {im.width}x{im.height} pixels is too large to thumbnail")
        im.draft("RGB", (px, px))  # JPEG sources decode at a reduced scale: much faster
        im.thumbnail((px, px), Image.Resampling.LANCZOS)
        if im.mode in ("RGBA", "LA", "P"):
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            out_im = flat
        else:
            out_im = im.convert("RGB")
        buf = io.BytesIO()
        out_im.save(buf, "JPEG", quality=82, optimize=True, progressive=True)
        return buf.getvalue()


class Thumbnails:
    """Thumbnails of stored images (see the module docs). One per gateway process."""

    def __init__(self, storage: Storage, px: int, *, memory_bytes: int = 48 * 1024 * 1024) -> None:
        self.storage = storage
        self.px = int(px)
        self.memory = ByteLRU(memory_bytes)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        #: How many thumbnails this process made (tests and the benchmark read it).
        self.made = 0

    def key(self, img: StoredImage) -> str:
        """The thumbnail's object key: deterministic in the image's content and the size."""
        base = f"{self.storage.prefix}/_thumbs" if self.storage.prefix else "_thumbs"
        return f"{base}/{self.px}/{img.sha256}.jpg"

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            if len(self._locks) > 10_000:
                self._locks.clear()
            return self._locks.setdefault(key, threading.Lock())

    def get(self, img: StoredImage) -> bytes:
        """The thumbnail's JPEG bytes: from memory, else from S3, else made from the image (once)."""
        key = self.key(img)
        hit = self.memory.get(key)
        if hit is not None:
            return hit
        with self._lock(key):  # one maker per thumbnail in this process; others wait and reuse it
            hit = self.memory.get(key)
            if hit is not None:
                return hit
            data = self.storage.get_bytes_if_exists(key)  # one GET: made before (by any replica)?
            if data is None:
                data = make_thumbnail(self.storage.get_bytes(img.key), self.px)
                self.storage.put_fileobj(key, io.BytesIO(data), content_type="image/jpeg",
                                         metadata={"source-sha256": img.sha256}, size=len(data))
                self.made += 1
            self.memory.put(key, data)
            return data
