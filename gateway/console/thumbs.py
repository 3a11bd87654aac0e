"""Gallery thumbnails: made once per image from its S3 copy, cached in S3 and in memory.

A thumbnail lives in the bucket beside the images, under a deterministic key named by the
image's sha256 and the size, in the same tenant folder as its image
(``{FALQ_S3_PREFIX}[/{tenant prefix}]/_thumbs/{px}/{sha256}.jpg``: the ``default`` tenant has no
folder of its own unless given one, see :func:`falq.shared.tenants.store.s3_prefix_of`), so

* it is made once per image for every gateway replica and survives restarts (no local disk
  to provision in a container, nothing to warm after a deploy);
* the same bytes always map to the same key: two replicas racing to make one write the same
  object, and a re-mirrored image finds its thumbnail already there;
* a tenant's thumbnails stay under its own folder, with its images (a policy or a lifecycle
  rule on that prefix covers them, and deleting the folder deletes them).

Thumbnails are normally made before anyone asks, as jobs complete
(:mod:`falq.gateway.console.ahead`); :meth:`Thumbnails.get` makes any that is missing when a
page shows it. A page view reads thumbnails only (about 15-30 kB each), never the full images; the last
few hundred stay in this process's memory (:class:`ByteLRU`), so a page of 60 answers from
RAM once warm. Full-size images are streamed by the console's image route after its access
check; no presigned URL reaches the browser. At most ``max_making`` thumbnails are decoded at
once in a process (a decoded 1 MP image is about 4 MB): a page of 60 new images, or a burst of
completions made ahead (:mod:`falq.gateway.console.ahead`), cannot take all the memory or every
thread of the gateway.

Example::

    thumbs = Thumbnails(storage, px=384)
    folder = thumbs.folder_of(rec.endpoint, rec.outputs[0])   # the tenant folder of the image
    jpeg = thumbs.get(rec.outputs[0], folder)   # bytes; made and stored on the first call only
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image

from falq.shared.jobs.records import StoredImage
from falq.shared.storage.s3 import Storage

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
        # reducing_gap 1.0: a box reduction by an integer factor first (1024 -> 512), then
        # Lanczos to the size; ~5 ms less per 1 MP PNG than Pillow's default 2.0, no visible loss.
        im.thumbnail((px, px), Image.Resampling.LANCZOS, reducing_gap=1.0)
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

    def __init__(self, storage: Storage, px: int, *, memory_bytes: int = 48 * 1024 * 1024,
                 max_making: int = 4) -> None:
        self.storage = storage
        self.px = int(px)
        self.memory = ByteLRU(memory_bytes)
        #: Bounds the images decoded at once (memory, CPU), for page views and making ahead alike.
        self._making = threading.BoundedSemaphore(max(1, int(max_making)))
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        #: How many thumbnails this process made (tests and the benchmark read it).
        self.made = 0

    def folder_of(self, endpoint: str, img: StoredImage) -> str:
        """The tenant folder the image was stored under ("" for none), read from its key.

        Images are stored at ``{FALQ_S3_PREFIX}[/{tenant prefix}]/{endpoint}/...``
        (:meth:`falq.shared.storage.s3.Storage.key_base`), so the folder is what stands between the
        bucket prefix and the endpoint. Reading it from the key (rather than the tenant's
        current settings) keeps a thumbnail beside its image even after a tenant's prefix changed.
        """
        rest = img.key
        if self.storage.prefix and rest.startswith(f"{self.storage.prefix}/"):
            rest = rest[len(self.storage.prefix) + 1:]
        at = rest.find(f"{endpoint}/")
        return rest[:at].strip("/") if at > 0 else ""

    def key(self, img: StoredImage, folder: str = "") -> str:
        """The thumbnail's object key: deterministic in the image's content, the size and its folder."""
        parts = [p for p in (self.storage.prefix, folder.strip("/"), "_thumbs") if p]
        return f"{'/'.join(parts)}/{self.px}/{img.sha256}.jpg"

    def cached(self, img: StoredImage, folder: str = "") -> bool:
        """Whether this process holds the thumbnail in memory (no I/O)."""
        return self.memory.get(self.key(img, folder)) is not None

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            if len(self._locks) > 10_000:
                self._locks.clear()
            return self._locks.setdefault(key, threading.Lock())

    def get(self, img: StoredImage, folder: str = "") -> bytes:
        """The thumbnail's JPEG bytes: from memory, else from S3, else made from the image (once).

        ``folder``: the image's tenant folder (:meth:`folder_of`). Raises :class:`NoPreview` for
        an object that is no readable image, and the storage's errors for S3 trouble.
        """
        return self.fetch(img, folder)[0]

    def fetch(self, img: StoredImage, folder: str = "", *, look_in_s3: bool = True) -> tuple[bytes, str]:
        """:meth:`get`, also telling where the bytes came from: ``memory``, ``s3`` or ``made``.

        ``look_in_s3=False`` skips the GET that finds a thumbnail made before: for an image that
        just completed, which none can have (making one again would only rewrite the same bytes).
        """
        key = self.key(img, folder)
        hit = self.memory.get(key)
        if hit is not None:
            return hit, "memory"
        with self._lock(key):  # one maker per thumbnail in this process; others wait and reuse it
            hit = self.memory.get(key)
            if hit is not None:
                return hit, "memory"
            # one GET: made before (by any replica)?
            data = self.storage.get_bytes_if_exists(key) if look_in_s3 else None
            source = "s3"
            if data is None:
                with self._making:
                    data = make_thumbnail(self.storage.get_bytes(img.key), self.px)
                self.storage.put_fileobj(key, io.BytesIO(data), content_type="image/jpeg",
                                         metadata={"source-sha256": img.sha256}, size=len(data))
                with self._locks_guard:
                    self.made += 1
                source = "made"
            self.memory.put(key, data)
            return data, source
