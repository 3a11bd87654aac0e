"""Edit inputs: URLs, data URIs, local paths or bytes, made reachable for fal.

URLs and data URIs are passed through (the schema validates them; a data URI's bytes are
checked against fal's image rules). Local files and raw bytes are checked against the
same rules here -- 384-5000 px per side, at most 10 MB, JPEG/PNG/WEBP, PNG without alpha
(refused, or flattened onto white with ``flatten_alpha``) -- and then handed to fal the
way the official clients do: uploaded to fal's storage (``FALQ_INPUT_UPLOAD=fal``, the
default), so the job record keeps a short URL instead of megabytes. With
``FALQ_INPUT_UPLOAD=data-uri`` they are inlined as data URIs instead (no upload; the
record then carries the image).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from falq.shared.errors import FieldError, InvalidInput
from falq.shared.settings import Settings
from falq.shared.storage.images import EXTENSIONS, check_input_image, to_data_uri


def prepare_images(images: list[Any], settings: Settings, *, flatten_alpha: bool = False) -> list[str]:
    """Turn each edit input into a URL or data URI fal can read; raise InvalidInput if bad."""
    errors: list[FieldError] = []
    out: list[str] = []
    for i, item in enumerate(images):
        field = f"image_urls.{i}"
        try:
            out.append(_prepare(item, settings, flatten_alpha))
        except ValueError as exc:
            errors.append(FieldError(field, str(exc)))
    if errors:
        raise InvalidInput(errors)
    return out


def _prepare(item: Any, settings: Settings, flatten_alpha: bool) -> str:
    if isinstance(item, str) and item[:8].lower().startswith(("http://", "https://", "data:")):
        return item
    if isinstance(item, str) and _has_scheme(item) and not Path(item).exists():
        from falq.shared.fal.schemas import check_image_url

        return check_image_url(item)  # raises ValueError naming the scheme
    if isinstance(item, bytes | bytearray):
        data, name = bytes(item), "image"
    elif isinstance(item, str | os.PathLike):
        path = Path(item)
        if not path.is_file():
            raise ValueError(f"local file {str(path)!r} does not exist or is not a file")
        if path.stat().st_size > 10 * 1024 * 1024:
            raise ValueError(f"local file is {path.stat().st_size} bytes; fal accepts at most 10 MB per image")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"local file cannot be read ({exc.strerror})") from None
        name = path.name
    else:
        raise ValueError(f"must be a URL, data URI, local path or bytes, not {type(item).__name__}")
    try:
        info = check_input_image(data, allow_alpha=flatten_alpha)
    except ValueError as exc:
        raise ValueError(f"image {exc!s}") from None
    if info.has_alpha and flatten_alpha:
        data = _flatten(data)
    mime = info.mime
    if settings.input_upload == "data-uri":
        return to_data_uri(data, mime)
    from falq.shared.fal.client import FalClient

    fal = FalClient(settings)
    try:
        stem = Path(name).stem or "image"
        return fal.upload(data, mime, f"{stem}.{EXTENSIONS[mime]}")
    finally:
        fal.close()


def _has_scheme(value: str) -> bool:
    head, sep, _ = value.partition(":")
    return bool(sep) and len(head) > 1 and head.replace("+", "").replace(".", "").replace("-", "").isalnum()


def _flatten(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        buf = io.BytesIO()
        flat.save(buf, format="PNG")
        return buf.getvalue()
