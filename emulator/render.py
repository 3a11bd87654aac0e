"""Deterministic stand-in images: the prompt drawn on a seed-coloured background.

A person looking at an output can tell which job made it: the endpoint, the seed and the
(wrapped, possibly truncated) prompt are written on it, and a stripe of coloured cells
derived from the prompt hash makes different prompts differ even when the text is cut.
The same :class:`RenderSpec` always gives byte-identical files (Pillow's encoders are
deterministic), so specs are cached in a small thread-safe LRU and re-rendered on a miss.

Example::

    >>> spec = RenderSpec("a red fox", "fal-ai/qwen-image-2/text-to-image", 42, 512, 512, "png")
    >>> data = RENDERER.render(spec)
    >>> data[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import hashlib
import io
import textwrap
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class RenderSpec:
    """What to draw. ``index``/``count`` tell images of one request apart."""

    prompt: str
    endpoint: str
    seed: int
    width: int
    height: int
    fmt: str
    index: int = 0
    count: int = 1
    tiny_max_px: int = 0  # >0: shrink so neither side exceeds this (benchmarks)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]

    def pixel_size(self) -> tuple[int, int]:
        """The size actually rendered (smaller than requested when tiny)."""
        if self.tiny_max_px <= 0 or max(self.width, self.height) <= self.tiny_max_px:
            return self.width, self.height
        scale = self.tiny_max_px / max(self.width, self.height)
        return max(1, round(self.width * scale)), max(1, round(self.height * scale))


def seed_color(seed: int) -> tuple[int, int, int]:
    """A stable mid-saturation colour for a seed."""
    h = hashlib.sha256(f"seed:{seed}".encode()).digest()
    return 40 + h[0] % 176, 40 + h[1] % 176, 40 + h[2] % 176


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: identical on every machine, no system fonts needed.
    return ImageFont.load_default(size=size)


def _draw_stripe(draw: ImageDraw.ImageDraw, prompt: str, width: int, top: int, cell: int) -> None:
    digest = hashlib.sha256(prompt.encode()).digest()
    n = max(1, min(32, width // max(1, cell)))
    w = width / n
    for i in range(n):
        b = digest[(3 * i) % 30 : (3 * i) % 30 + 3]
        draw.rectangle([round(i * w), top, round((i + 1) * w) - 1, top + cell - 1], fill=(b[0], b[1], b[2]))


def _layout(
    prompt: str, size: int, width: int, height: int
) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int, int, int, list[str]]:
    font = _font(size)
    avg = font.getlength("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ") / 37 or size * 0.55
    per_line = max(8, int(width / avg))
    line_h = round(size * 1.3)
    lines: list[str] = []
    for para in prompt.splitlines() or [""]:
        lines.extend(textwrap.wrap(para, per_line) or [""])
    return font, per_line, line_h, max(1, height // line_h), lines


def _render_image(spec: RenderSpec) -> Image.Image:
    width, height = spec.pixel_size()
    bg = seed_color(spec.seed)
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    stripe = max(2, min(width, height) // 24)
    _draw_stripe(draw, spec.prompt, width, height - stripe, stripe)
    if min(width, height) < 96:  # too small for text: colour + stripe only
        return img
    margin = max(4, width // 40)
    head_size = max(10, min(width, height) // 40)
    head_font = _font(head_size)
    draw.text((margin, margin), spec.endpoint, fill=ink, font=head_font)
    info = f"seed {spec.seed}   image {spec.index + 1}/{spec.count}   {width}x{height} {spec.fmt}"
    draw.text((margin, margin + round(head_size * 1.3)), info, fill=ink, font=head_font)
    y = margin + round(head_size * 3.2)
    size = max(10, min(width, height) // 14)
    for _ in range(12):  # shrink until the whole prompt fits, down to a readable minimum
        body_font, per_line, line_h, max_lines, lines = _layout(
            spec.prompt, size, width - 2 * margin, height - stripe - y - margin
        )
        if len(lines) <= max_lines or size <= 10:
            break
        size = max(10, int(size * 0.85))
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1][: per_line - 1] + "\u2026"]
    for line in lines:
        draw.text((margin, y), line, fill=ink, font=body_font)
        y += line_h
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    """Encode with fixed options so the bytes are reproducible."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=85)
    else:
        img.save(buf, _PIL_FORMATS[fmt], quality=80, method=0)
    return buf.getvalue()


class Renderer:
    """Renders :class:`RenderSpec` to bytes with a thread-safe LRU cache.

    Call :meth:`render` from a worker thread (``loop.run_in_executor``): a 2048x2048 PNG
    takes tens of milliseconds.
    """

    def __init__(self, cache_size: int = 128) -> None:
        self.cache_size = cache_size
        self._cache: OrderedDict[RenderSpec, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def render(self, spec: RenderSpec) -> bytes:
        with self._lock:
            data = self._cache.get(spec)
            if data is not None:
                self._cache.move_to_end(spec)
                self.hits += 1
                return data
        data = encode(_render_image(spec), spec.fmt)
        with self._lock:
            self.misses += 1
            if self.cache_size > 0:
                self._cache[spec] = data
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return data

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


RENDERER = Renderer()
