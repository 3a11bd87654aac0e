"""The emulator's file store: rendered outputs and uploads, served at ``/files/{name}``.

Rendered outputs are kept as their :class:`~falq.emulator.render.RenderSpec` only (a few
hundred bytes); the bytes come from the renderer's LRU cache or are rendered again,
identically. Uploads (fal storage emulation) keep their bytes.

Upload flows emulated (base URL = the emulator root for REST and CDN alike):

* JS client: ``POST /storage/upload/initiate?storage_type=fal-cdn-v3`` with
  ``{content_type, file_name}`` -> ``{upload_url, file_url}``; ``PUT upload_url`` with the bytes.
* Python client: ``POST /storage/auth/token`` -> ``{token, token_type, base_url, expires_at}``,
  then ``POST /files/upload`` (raw body, ``X-Fal-File-Name``) -> ``{access_url}``.

Restricted file access (``file_access`` forbid/hide): a file URL passes with a signature from
:meth:`FileStore.sign` (``?identity=<expiry>.<hmac>``), what ``POST /v1/storage/files/sign``
hands out, as fal's platform API does.

Example::

    >>> store = FileStore()
    >>> name = store.new_name("cat.png")
    >>> store.put_bytes(name, b"...", "image/png")
    >>> store.get(name).content_type
    'image/png'
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from falq.emulator.render import RenderSpec

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class StoredFile:
    """One file: either raw bytes (uploads) or a render spec (outputs)."""

    content_type: str
    data: bytes | None = None
    spec: RenderSpec | None = None
    size: int = 0


class FileStore:
    """Name -> :class:`StoredFile`, plus pending upload slots. Thread-safe."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._pending: dict[str, tuple[str, str]] = {}  # upload token -> (name, content_type)
        self._lock = threading.Lock()
        self._sign_key = secrets.token_bytes(32)

    def sign(self, name: str, expires_in_s: int) -> str:
        """The ``identity`` query value that opens file ``name`` for ``expires_in_s`` seconds."""
        expires = int(time.time()) + expires_in_s
        mac = hmac.new(self._sign_key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def signature_ok(self, name: str, identity: str | None) -> bool:
        """Whether ``identity`` is an unexpired signature of ``name`` from :meth:`sign`."""
        expires, _, mac = (identity or "").partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        want = hmac.new(self._sign_key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, mac)

    @staticmethod
    def new_name(file_name: str | None = None, ext: str | None = None) -> str:
        """A fresh unguessable name, keeping a sanitised original name or an extension."""
        token = secrets.token_hex(8)
        if file_name:
            return f"{token}_{_SAFE.sub('_', file_name)[-80:]}"
        return f"{token}.{ext}" if ext else token

    def put_bytes(self, name: str, data: bytes, content_type: str) -> None:
        with self._lock:
            self._files[name] = StoredFile(content_type, data=data, size=len(data))

    def put_spec(self, name: str, spec: RenderSpec, size: int) -> None:
        with self._lock:
            self._files[name] = StoredFile(spec.content_type, spec=spec, size=size)

    def get(self, name: str) -> StoredFile | None:
        return self._files.get(name)

    def open_upload(self, file_name: str | None, content_type: str) -> tuple[str, str]:
        """Reserve an upload slot; returns (upload token, file name)."""
        token, name = secrets.token_hex(12), self.new_name(file_name or "upload.bin")
        with self._lock:
            self._pending[token] = (name, content_type)
        return token, name

    def complete_upload(self, token: str, data: bytes, content_type: str | None) -> str | None:
        """Store the bytes of a reserved slot; returns the file name or None if unknown."""
        with self._lock:
            slot = self._pending.pop(token, None)
        if slot is None:
            return None
        name, declared = slot
        self.put_bytes(name, data, content_type or declared)
        return name

    def name_from_url(self, url: str, own_netlocs: set[str]) -> str | None:
        """The stored file a URL points at, if it is one of ours (``/files/{name}``)."""
        parts = urlsplit(url)
        if parts.netloc not in own_netlocs or not parts.path.startswith("/files/"):
            return None
        name = parts.path[len("/files/") :]
        return name if name in self._files else None

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self._pending.clear()

    def __len__(self) -> int:
        return len(self._files)
