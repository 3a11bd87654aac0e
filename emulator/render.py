"""Deterministic stand-in images: the prompt drawn on a seed-coloured, textured background.

A person looking at an output can tell which job made it: the endpoint, the seed and the
(wrapped, possibly truncated) prompt are written on it, and a stripe of coloured cells
derived from the prompt hash makes different prompts differ even when the text is cut.
The same :class:`RenderSpec` always gives byte-identical files (Pillow's encoders are
deterministic), so specs are cached in a small thread-safe LRU and re-rendered on a miss.

Realistic size (the default): fal's real PNG outputs are typically 1-2 MB at one megapixel,
while a flat-colour PNG is 25-55 KB, so a downloader or uploader tested against flat
images never sees real transfer sizes. By default the background is a photographic-like
texture: a few octaves of smooth colour blobs (tiny noise images blown up bicubically) and
a fine film grain, all drawn from SHAKE-256 of the spec (prompt, seed, endpoint, index), so
the same spec still gives the same bytes on every machine (Pillow's own ``effect_noise``
uses C ``rand()`` and is not seedable, hence the hash stream).

Measured on the 2-core dev machine (``Renderer(0).render`` of 1024x1024 specs, 5 seeds, a
70-character prompt): PNG 1.66 MB in 0.12-0.14 s including encoding (zlib level 1), JPEG
(q85) 0.20 MB in 0.05 s, WebP (q80) 0.10 MB in 0.07 s; flat ones are 24-54 KB PNG,
36-70 KB JPEG, 16-36 KB WebP depending on the prompt's length. 1.66 MB sits in the middle
of the 1-2 MB that fal's 1 MP PNGs typically weigh; a 2048x2048 PNG is 6.4 MB in 0.5 s.
The JPEG/WebP figures are smaller than real photos at those qualities would be (the grain
is what JPEG throws away); evidence on fal's own JPEG sizes is thin, so we did not tune them.
``small`` specs keep the old flat rendering (fast tests); ``tiny_max_px`` specs are always flat.

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
    small: bool = False  # True: the flat background of old (25-55 KB per 1 MP PNG)

    @property
    def textured(self) -> bool:
        """Whether this spec gets the realistic-size texture (not small, not tiny)."""
        return not self.small and self.tiny_max_px <= 0

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


# Texture strengths, tuned by measurement (see the module docstring) so that a 1 MP PNG lands
# near 1.7 MB: the blobs give the colour variation of a photo, the grain gives the per-pixel
# entropy that makes real photos compress poorly. More grain means bigger files.
_TEXTURE_MIX = 0.45  # share of the blob field against the flat seed colour
_DETAIL_MIX = 0.10  # share of the half-resolution luminance detail
_GRAIN_MIX = 0.025  # share of full-resolution RGB grain (about ±3 levels)


def _noise(key: bytes, tag: bytes, mode: str, size: tuple[int, int]) -> Image.Image:
    """Deterministic uniform noise: SHAKE-256 bytes of ``key + tag`` as pixels (C speed)."""
    n = size[0] * size[1] * len(mode)
    return Image.frombytes(mode, size, hashlib.shake_256(key + tag).digest(n))


def _texture(spec: RenderSpec, width: int, height: int, bg: tuple[int, int, int]) -> Image.Image:
    """A photographic-like background around ``bg``: colour blobs, fine detail and grain.

    Only whole-image Pillow operations (resize, blend) on SHAKE-256 bytes, no per-pixel
    Python: about 35 ms at 1 MP on a 2-core machine, the rest of the time is encoding.
    """
    key = hashlib.sha256(f"{spec.endpoint}\n{spec.seed}\n{spec.index}\n{spec.prompt}".encode()).digest()
    size = (width, height)
    blobs = Image.blend(
        _noise(key, b"coarse", "RGB", (4, 4)).resize(size, Image.Resampling.BICUBIC),
        _noise(key, b"medium", "RGB", (24, 24)).resize(size, Image.Resampling.BICUBIC),
        0.35,
    )
    img = Image.blend(Image.new("RGB", size, bg), blobs, _TEXTURE_MIX)
    half = (max(1, width // 2), max(1, height // 2))
    detail = _noise(key, b"detail", "L", half).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    img = Image.blend(img, detail, _DETAIL_MIX)
    return Image.blend(img, _noise(key, b"grain", "RGB", size), _GRAIN_MIX)


def _render_image(spec: RenderSpec) -> Image.Image:
    width, height = spec.pixel_size()
    bg = seed_color(spec.seed)
    textured = spec.textured and min(width, height) >= 8
    img = _texture(spec, width, height, bg) if textured else Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    # On a texture the text gets an outline in the opposite colour so it stays readable
    # wherever the blobs drift towards the ink colour; flat images keep their old bytes.
    outline = (255 - ink[0], 255 - ink[1], 255 - ink[2])
    stripe = max(2, min(width, height) // 24)
    _draw_stripe(draw, spec.prompt, width, height - stripe, stripe)
    if min(width, height) < 96:  # too small for text: colour + stripe only
        return img
    margin = max(4, width // 40)
    head_size = max(10, min(width, height) // 40)
    head_font = _font(head_size)
    head_stroke = max(1, head_size // 12) if textured else 0
    draw.text((margin, margin), spec.endpoint, fill=ink, font=head_font, stroke_width=head_stroke, stroke_fill=outline)
    info = f"seed {spec.seed}   image {spec.index + 1}/{spec.count}   {width}x{height} {spec.fmt}"
    draw.text((margin, margin + round(head_size * 1.3)), info, fill=ink, font=head_font,
              stroke_width=head_stroke, stroke_fill=outline)  # fmt: skip
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
    body_stroke = max(1, size // 12) if textured else 0
    for line in lines:
        draw.text((margin, y), line, fill=ink, font=body_font, stroke_width=body_stroke, stroke_fill=outline)
        y += line_h
    return img


def encode(img: Image.Image, fmt: str, textured: bool = False) -> bytes:
    """Encode with fixed options so the bytes are reproducible.

    Textured PNGs use zlib level 1: on grainy data level 6 costs 3-6x the time (0.3-0.6 s
    per megapixel, measured) for files only ~15% smaller, and realistic size is the point.
    """
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1 if textured else 6)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=85)
    else:
        img.save(buf, _PIL_FORMATS[fmt], quality=80, method=0)
    return buf.getvalue()


class Renderer:
    """Renders :class:`RenderSpec` to bytes with a thread-safe LRU cache.

    Call :meth:`render` from a worker thread (``loop.run_in_executor``): a textured 1 MP PNG
    takes about 0.13 s, a 2048x2048 one about 0.5 s (flat ones tens of milliseconds).

    The cache is bounded by entries (``cache_size``) and by bytes (``cache_bytes``, 0 = no
    byte bound): at realistic sizes 128 entries would otherwise hold over 200 MB.
    """

    def __init__(self, cache_size: int = 128, cache_bytes: int = 256 * 2**20) -> None:
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[RenderSpec, bytes] = OrderedDict()
        self._held = 0  # bytes in the cache
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def cached(self, spec: RenderSpec) -> bytes | None:
        """The rendered bytes if the cache holds them (cheap: callable on the event loop)."""
        with self._lock:
            data = self._cache.get(spec)
            if data is not None:
                self._cache.move_to_end(spec)
                self.hits += 1
            return data

    def render(self, spec: RenderSpec) -> bytes:
        data = self.cached(spec)
        if data is not None:
            return data
        data = encode(_render_image(spec), spec.fmt, spec.textured)
        with self._lock:
            self.misses += 1
            if self.cache_size > 0 and spec not in self._cache:
                self._cache[spec] = data
                self._held += len(data)
                while len(self._cache) > self.cache_size or (
                    self.cache_bytes > 0 and self._held > self.cache_bytes and len(self._cache) > 1
                ):
                    self._held -= len(self._cache.popitem(last=False)[1])
        return data

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._held = 0


RENDERER = Renderer()
