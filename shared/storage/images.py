"""Image byte rules: sniffing the real type, fal's input limits, and data URIs.

One place decides what counts as an acceptable image, for edit inputs (fal's rules:
384-5000 px per side, at most 10 MB, JPEG/PNG without alpha/WEBP) and for mirrored
outputs (the bytes must be the type they claim).

Example::

    info = check_input_image(Path("cat.png").read_bytes(), "image_urls.0")
    info.width, info.height, info.mime   # (1024, 768, 'image/png')
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

MIN_SIDE, MAX_SIDE = 384, 5000
MAX_INPUT_BYTES = 10 * 1024 * 1024
INPUT_MIMES = {"image/jpeg", "image/png", "image/webp"}
EXTENSIONS = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}
MIME_OF_FORMAT = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


@dataclass(frozen=True)
class ImageInfo:
    """What the bytes really are."""

    mime: str
    width: int
    height: int
    has_alpha: bool
    size: int


def sniff_mime(head: bytes) -> str | None:
    """The image type from magic bytes, or None when the bytes are not JPEG/PNG/WEBP."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def inspect_image(data: bytes) -> ImageInfo:
    """Sniff and measure ``data`` (reads headers only). Raises ValueError if not an image."""
    from PIL import Image, UnidentifiedImageError

    mime = sniff_mime(data[:16])
    if mime is None:
        raise ValueError("is not a JPEG, PNG or WEBP image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"is not a readable image ({exc.__class__.__name__})") from None
    return ImageInfo(mime=mime, width=width, height=height, has_alpha=alpha, size=len(data))


def check_input_image(data: bytes, *, allow_alpha: bool = False) -> ImageInfo:
    """Apply fal's edit-input rules to image bytes. Raises ValueError naming the rule."""
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"is {len(data)} bytes; fal accepts at most 10 MB ({MAX_INPUT_BYTES} bytes) per image")
    info = inspect_image(data)
    if info.mime not in INPUT_MIMES:
        raise ValueError("must be JPEG, PNG or WEBP")
    for side, value in (("width", info.width), ("height", info.height)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise ValueError(f"{side} is {value} px; fal accepts {MIN_SIDE}-{MAX_SIDE} px per side")
    if info.mime == "image/png" and info.has_alpha and not allow_alpha:
        raise ValueError("is a PNG with an alpha channel, which fal refuses; flatten it (falq edit --flatten-alpha)")
    return info


def parse_data_uri(uri: str, max_bytes: int = MAX_INPUT_BYTES) -> tuple[str | None, bytes]:
    """Split a base64 data URI into (mime, bytes). Raises ValueError if malformed or too big."""
    m = _DATA_URI.match(uri[:256])
    if not m:
        raise ValueError("is not a well-formed data URI (expected data:<mime>;base64,<data>)")
    if not m.group("b64"):
        raise ValueError("data URI must be base64-encoded (data:<mime>;base64,...)")
    payload = uri[m.end():]
    # base64 inflates by 4/3: refuse before decoding anything absurdly large.
    if len(payload) > (max_bytes * 4) // 3 + 8:
        raise ValueError(f"data URI holds more than {max_bytes // (1024 * 1024)} MB ({max_bytes} bytes)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data URI payload is not valid base64") from None
    return (m.group("mime") or None), data


def check_data_uri(uri: str) -> ImageInfo:
    """Validate an input image given as a data URI against fal's rules."""
    mime, data = parse_data_uri(uri)
    if mime is not None and mime.lower() not in INPUT_MIMES | {"image/jpg"}:
        raise ValueError(f"data URI type {mime!r} is not one of image/jpeg, image/png, image/webp")
    info = check_input_image(data)
    return info


def to_data_uri(data: bytes, mime: str) -> str:
    """Encode bytes as a base64 data URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
