"""falq.shared.fal.schemas: every input rule of the four Qwen-Image-2 endpoints, accepted and rejected.

The rules come from fal's model pages in the team kit (``../shared/seeds``); the tests at the
bottom read those pages directly, so a drift between the pages and the models shows up here.
Everything goes through :func:`falq.shared.fal.endpoints.validate_input`, the one entry point callers use.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
from PIL import Image
from pydantic import ValidationError

from falq.shared.errors import FieldError, InvalidInput
from falq.shared.fal.endpoints import validate_input
from falq.shared.fal.schemas import (
    EditInput,
    File,
    GenerateOutput,
    ImageSize,
    ImageSizePreset,
    OutputFormat,
    TextToImageInput,
)
from falq.shared.settings import Settings

T2I = "fal-ai/qwen-image-2/text-to-image"
PRO_T2I = "fal-ai/qwen-image-2/pro/text-to-image"
EDIT = "fal-ai/qwen-image-2/edit"
PRO_EDIT = "fal-ai/qwen-image-2/pro/edit"
T2I_ENDPOINTS = (T2I, PRO_T2I)
EDIT_ENDPOINTS = (EDIT, PRO_EDIT)
ALL_ENDPOINTS = T2I_ENDPOINTS + EDIT_ENDPOINTS
SHORT = {T2I: "t2i", PRO_T2I: "pro-t2i", EDIT: "edit", PRO_EDIT: "pro-edit"}

URL = "https://v3b.fal.media/files/b/0a90b2a1/i89tMXz0SmiwL0ZvbnUvS_image_00240.png"
PRESETS = ("square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9")
MB10 = 10 * 1024 * 1024
SEEDS_DIR = Path(__file__).resolve().parents[3] / "shared" / "seeds"

#: Phrases pydantic uses; a FieldError message must be in falq's own plain words instead.
RAW_PYDANTIC = ("Input should be", "String should have", "List should have", "Value error,")


def base(endpoint: str, **fields: Any) -> dict[str, Any]:
    """The smallest valid input of ``endpoint``, with ``fields`` laid over it."""
    data: dict[str, Any] = {"prompt": "a red fox in the snow"}
    if endpoint in EDIT_ENDPOINTS:
        data["image_urls"] = [URL]
    data.update(fields)
    return data


def rejected(endpoint: str, data: Any, field: str, words: tuple[str, ...], max_num_images: int | None = 4) -> None:
    """Assert ``data`` is refused with a FieldError on ``field`` whose message has all ``words``."""
    with pytest.raises(InvalidInput) as info:
        validate_input(endpoint, data, max_num_images=max_num_images)
    errors = info.value.errors
    assert errors, "InvalidInput carries no FieldError"
    assert all(isinstance(e, FieldError) for e in errors)
    for err in errors:
        for phrase in RAW_PYDANTIC:
            assert phrase not in err.message, f"raw pydantic wording in {err}"
    on_field = [e for e in errors if e.field == field]
    assert on_field, f"no error on {field!r}; got {errors}"
    assert any(all(w in e.message for w in words) for e in on_field), (
        f"no message on {field!r} contains {words}; got {[e.message for e in on_field]}"
    )
    assert field in str(info.value)


# --- images for data URIs (built lazily, cached: the big ones cost a few ms each) -------------


@functools.cache
def image(fmt: str, width: int, height: int, mode: str = "L", **save: Any) -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, (width, height))
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def uri(data: bytes, mime: str | None = "image/png") -> str:
    return f"data:{mime or ''};base64,{base64.b64encode(data).decode('ascii')}"


def png(width: int = 400, height: int = 400, mode: str = "L", **save: Any) -> str:
    return uri(image("PNG", width, height, mode, **save))


def padded_png(total: int) -> str:
    """A valid 400x400 PNG followed by zero bytes up to ``total`` bytes (Pillow reads headers)."""
    head = image("PNG", 400, 400, "L")
    return uri(head + b"\0" * (total - len(head)))


def palette_png_with_transparency() -> str:
    img = Image.new("P", (400, 400))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    return uri(buf.getvalue())


# === accepted inputs ==========================================================================


def test_text_to_image_defaults_follow_the_page() -> None:
    for endpoint in T2I_ENDPOINTS:
        model = validate_input(endpoint, {"prompt": "a red fox"})
        assert isinstance(model, TextToImageInput)
        assert model.prompt == "a red fox"
        assert model.negative_prompt == ""
        assert model.image_size == "square_hd"
        assert model.size_pixels() == (1024, 1024)
        assert model.enable_prompt_expansion is True
        assert model.seed is None
        assert model.enable_safety_checker is True
        assert model.sync_mode is False
        assert model.num_images == 1
        assert model.output_format == "png"


def test_edit_defaults_follow_the_page() -> None:
    for endpoint in EDIT_ENDPOINTS:
        model = validate_input(endpoint, {"prompt": "make it night", "image_urls": [URL]})
        assert isinstance(model, EditInput)
        assert model.image_urls == [URL]
        assert model.image_size is None  # unset: fal uses the size of the last input image
        assert model.size_pixels() is None
        assert model.negative_prompt == ""
        assert model.enable_prompt_expansion is True
        assert model.seed is None
        assert model.enable_safety_checker is True
        assert model.sync_mode is False
        assert model.num_images == 1
        assert model.output_format == "png"


ACCEPT_COMMON: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # (id, fields laid over the minimal input, expected attribute values)
    *[(f"image_size-{p}", {"image_size": p}, {"image_size": p}) for p in PRESETS],
    ("image_size-512x512", {"image_size": {"width": 512, "height": 512}}, {"size": (512, 512)}),
    ("image_size-2048x2048", {"image_size": {"width": 2048, "height": 2048}}, {"size": (2048, 2048)}),
    ("image_size-1280x720", {"image_size": {"width": 1280, "height": 720}}, {"size": (1280, 720)}),
    ("image_size-4096x1024-max-pixels", {"image_size": {"width": 4096, "height": 1024}}, {"size": (4096, 1024)}),
    ("image_size-1x262144-min-pixels", {"image_size": {"width": 1, "height": 262144}}, {"size": (1, 262144)}),
    ("image_size-empty-object-defaults-512", {"image_size": {}}, {"size": (512, 512)}),
    ("image_size-width-only-height-512", {"image_size": {"width": 1024}}, {"size": (1024, 512)}),
    ("negative_prompt-500", {"negative_prompt": "n" * 500}, {"negative_prompt": "n" * 500}),
    ("negative_prompt-empty", {"negative_prompt": ""}, {"negative_prompt": ""}),
    ("seed-0", {"seed": 0}, {"seed": 0}),
    ("seed-2147483647", {"seed": 2147483647}, {"seed": 2147483647}),
    ("seed-null", {"seed": None}, {"seed": None}),
    ("num_images-1", {"num_images": 1}, {"num_images": 1}),
    ("num_images-4-at-ceiling", {"num_images": 4}, {"num_images": 4}),
    *[(f"output_format-{f}", {"output_format": f}, {"output_format": f}) for f in ("jpeg", "png", "webp")],
    *[
        (f"{flag}-{value}".lower(), {flag: value}, {flag: value})
        for flag in ("enable_prompt_expansion", "enable_safety_checker", "sync_mode")
        for value in (True, False)
    ],
    ("prompt-unicode", {"prompt": "一只红狐狸 in the snow"}, {"prompt": "一只红狐狸 in the snow"}),
]


@pytest.mark.parametrize(
    ("endpoint", "fields", "expected"),
    [
        pytest.param(ep, fields, expected, id=f"{SHORT[ep]}-{cid}")
        for cid, fields, expected in ACCEPT_COMMON
        for ep in ALL_ENDPOINTS
    ],
)
def test_accepted_on_every_endpoint(endpoint: str, fields: dict[str, Any], expected: dict[str, Any]) -> None:
    model = validate_input(endpoint, base(endpoint, **fields), max_num_images=4)
    for name, value in expected.items():
        if name == "size":
            assert isinstance(model.image_size, ImageSize)
            assert model.size_pixels() == value
        else:
            assert getattr(model, name) == value
            assert type(getattr(model, name)) is type(value)  # no coercion


ACCEPT_SPECIFIC: list[Any] = [
    pytest.param(ep, base(ep, prompt="p" * n), None, {"prompt": "p" * n}, id=f"{SHORT[ep]}-prompt-{n}-no-max")
    for ep in T2I_ENDPOINTS
    for n in (801, 5000, 50_000)
] + [
    pytest.param(ep, base(ep, prompt="p" * 800), 4, {"prompt": "p" * 800}, id=f"{SHORT[ep]}-prompt-800")
    for ep in EDIT_ENDPOINTS
] + [
    pytest.param(ep, base(ep, prompt="狐" * 800), 4, {"prompt": "狐" * 800}, id=f"{SHORT[ep]}-prompt-800-cjk")
    for ep in EDIT_ENDPOINTS
] + [
    pytest.param(ep, base(ep, num_images=50), None, {"num_images": 50}, id=f"{SHORT[ep]}-num_images-50-no-ceiling")
    for ep in ALL_ENDPOINTS
] + [
    pytest.param(ep, base(ep, num_images=10), 10, {"num_images": 10}, id=f"{SHORT[ep]}-num_images-10-ceiling-10")
    for ep in (T2I, EDIT)
] + [
    pytest.param(ep, base(ep, image_urls=[URL] * 6), 4, {"image_urls": [URL] * 6}, id=f"{SHORT[ep]}-6-image_urls")
    for ep in EDIT_ENDPOINTS
] + [
    pytest.param(EDIT, base(EDIT, image_urls=[u]), 4, {"image_urls": [u]}, id=f"edit-url-{name}")
    for name, u in (
        ("http", "http://example.com/cat.png"),
        ("https-query", "https://example.com/cat.png?sig=abc&x=1"),
        ("uppercase-scheme", "HTTPS://EXAMPLE.COM/CAT.PNG"),
        ("port", "https://cdn.example.com:8443/a/b.webp"),
    )
]


@pytest.mark.parametrize(("endpoint", "data", "max_num_images", "expected"), ACCEPT_SPECIFIC)
def test_accepted_per_endpoint(
    endpoint: str, data: dict[str, Any], max_num_images: int | None, expected: dict[str, Any]
) -> None:
    model = validate_input(endpoint, data, max_num_images=max_num_images)
    for name, value in expected.items():
        assert getattr(model, name) == value


GOOD_IMAGES: list[Any] = [
    pytest.param(lambda: png(400, 400, "L"), id="png-L-400x400"),
    pytest.param(lambda: png(400, 400, "RGB"), id="png-RGB-400x400"),
    pytest.param(lambda: png(384, 384, "1"), id="png-384x384-min-sides"),
    pytest.param(lambda: png(5000, 384, "1"), id="png-5000x384-max-width"),
    pytest.param(lambda: png(384, 5000, "1"), id="png-384x5000-max-height"),
    pytest.param(lambda: uri(image("JPEG", 400, 400, "RGB"), "image/jpeg"), id="jpeg-400x400"),
    pytest.param(lambda: uri(image("JPEG", 400, 400, "L"), "image/jpg"), id="jpeg-as-image-jpg"),
    pytest.param(lambda: uri(image("WEBP", 400, 400, "RGB"), "image/webp"), id="webp-400x400"),
    pytest.param(lambda: uri(image("WEBP", 400, 400, "RGBA"), "image/webp"), id="webp-with-alpha"),
    pytest.param(lambda: padded_png(MB10), id="png-exactly-10MB"),
]


@pytest.mark.parametrize("make", GOOD_IMAGES)
def test_data_uri_images_accepted(make: Callable[[], str]) -> None:
    data_uri = make()
    for endpoint in EDIT_ENDPOINTS:
        model = validate_input(endpoint, base(endpoint, image_urls=[URL, data_uri]))
        assert isinstance(model, EditInput)
        assert model.image_urls == [URL, data_uri]


def test_six_data_uris_accepted() -> None:
    uris = [png(400, 400, "L"), uri(image("JPEG", 400, 400, "RGB"), "image/jpeg"), URL] * 2
    model = validate_input(EDIT, base(EDIT, image_urls=uris))
    assert isinstance(model, EditInput)
    assert len(model.image_urls) == 6


def test_per_job_ceiling_defaults_to_4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALQ_MAX_NUM_IMAGES", raising=False)
    ceiling = Settings(_env_file=None).max_num_images  # type: ignore[call-arg]
    assert ceiling == 4
    assert validate_input(T2I, base(T2I, num_images=4), max_num_images=ceiling).num_images == 4
    rejected(T2I, base(T2I, num_images=5), "num_images", ("at most 4",), max_num_images=ceiling)


# === rejected inputs ==========================================================================

PIXELS = ("512x512", "2048x2048")
ONE_OF = ("one of",)
BOOLEAN = ("boolean",)
INTEGER = ("integer",)

#: (id, fields laid over the minimal input, expected field, key words). Checked on all four.
REJECT_COMMON: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("prompt-empty", {"prompt": ""}, "prompt", ("empty",)),
    ("prompt-spaces", {"prompt": "   "}, "prompt", ("empty",)),
    ("prompt-whitespace-mix", {"prompt": " \n\t "}, "prompt", ("empty",)),
    ("prompt-null", {"prompt": None}, "prompt", ("string",)),
    ("prompt-int", {"prompt": 5}, "prompt", ("string",)),
    ("prompt-list", {"prompt": ["a"]}, "prompt", ("string",)),
    ("negative_prompt-501", {"negative_prompt": "n" * 501}, "negative_prompt", ("500",)),
    ("negative_prompt-null", {"negative_prompt": None}, "negative_prompt", ("string",)),
    ("negative_prompt-int", {"negative_prompt": 1}, "negative_prompt", ("string",)),
    ("image_size-unknown-preset", {"image_size": "huge"}, "image_size", ONE_OF),
    ("image_size-preset-wrong-case", {"image_size": "Square_HD"}, "image_size", ONE_OF),
    ("image_size-WxH-string", {"image_size": "1024x1024"}, "image_size", ONE_OF),
    ("image_size-int", {"image_size": 1024}, "image_size", ONE_OF),
    ("image_size-list", {"image_size": [1024, 1024]}, "image_size", ONE_OF),
    ("image_size-511x513", {"image_size": {"width": 511, "height": 513}}, "image_size", ("262143", *PIXELS)),
    ("image_size-1x262143", {"image_size": {"width": 1, "height": 262143}}, "image_size", PIXELS),
    ("image_size-2048x2049", {"image_size": {"width": 2048, "height": 2049}}, "image_size", ("4196352", *PIXELS)),
    ("image_size-4097x1024", {"image_size": {"width": 4097, "height": 1024}}, "image_size", PIXELS),
    ("image_size-256x256", {"image_size": {"width": 256, "height": 256}}, "image_size", PIXELS),
    ("image_size-width-only-too-small", {"image_size": {"width": 100}}, "image_size", PIXELS),
    ("image_size-width-0", {"image_size": {"width": 0, "height": 512}}, "image_size.width", ("greater than 0",)),
    ("image_size-height-0", {"image_size": {"width": 512, "height": 0}}, "image_size.height", ("greater than 0",)),
    # Both negative: the product would be 262144, inside the range; each side must still be > 0.
    ("image_size-both-negative", {"image_size": {"width": -512, "height": -512}}, "image_size.width", ("0",)),
    ("image_size-unknown-key", {"image_size": {"width": 512, "height": 512, "depth": 3}}, "image_size.depth",
     ("unknown",)),
    ("image_size-misspelt-key", {"image_size": {"widht": 1024, "height": 1024}}, "image_size.widht", ("unknown",)),
    ("image_size-width-string", {"image_size": {"width": "1024", "height": 1024}}, "image_size.width", INTEGER),
    ("image_size-height-string", {"image_size": {"width": 1024, "height": "1024"}}, "image_size.height", INTEGER),
    ("image_size-width-float", {"image_size": {"width": 1024.0, "height": 1024}}, "image_size.width", INTEGER),
    ("image_size-width-bool", {"image_size": {"width": True, "height": 262144}}, "image_size.width", INTEGER),
    ("image_size-width-null", {"image_size": {"width": None, "height": 1024}}, "image_size.width", INTEGER),
    ("seed-minus-1", {"seed": -1}, "seed", ("0",)),
    ("seed-2147483648", {"seed": 2147483648}, "seed", ("2147483647",)),
    ("seed-string", {"seed": "5"}, "seed", INTEGER),
    ("seed-float", {"seed": 5.0}, "seed", INTEGER),
    ("seed-bool", {"seed": True}, "seed", INTEGER),
    ("num_images-0", {"num_images": 0}, "num_images", ("1",)),
    ("num_images-negative", {"num_images": -3}, "num_images", ("1",)),
    ("num_images-5-over-ceiling-4", {"num_images": 5}, "num_images", ("at most 4",)),
    ("num_images-string", {"num_images": "2"}, "num_images", INTEGER),
    ("num_images-float", {"num_images": 2.0}, "num_images", INTEGER),
    ("num_images-bool", {"num_images": True}, "num_images", INTEGER),
    ("num_images-null", {"num_images": None}, "num_images", INTEGER),
    ("output_format-gif", {"output_format": "gif"}, "output_format", ("one of", "jpeg", "png", "webp")),
    ("output_format-PNG", {"output_format": "PNG"}, "output_format", ONE_OF),
    ("output_format-jpg", {"output_format": "jpg"}, "output_format", ONE_OF),
    ("output_format-empty", {"output_format": ""}, "output_format", ONE_OF),
    ("output_format-null", {"output_format": None}, "output_format", ONE_OF),
    *[
        (f"{flag}-{name}", {flag: value}, flag, BOOLEAN)
        for flag in ("enable_prompt_expansion", "enable_safety_checker", "sync_mode")
        for name, value in (("1", 1), ("0", 0), ("string-true", "true"), ("null", None))
    ],
    ("unknown-top-level-field", {"bogus": 1}, "bogus", ("unknown",)),
    ("unknown-capitalised-Prompt", {"Prompt": "x"}, "Prompt", ("unknown",)),
    ("unknown-guidance_scale", {"guidance_scale": 4.5}, "guidance_scale", ("unknown",)),
    # Unknown names that look like pydantic's union tags must still be named in the error.
    ("unknown-capitalised-Seed", {"Seed": 1}, "Seed", ("unknown",)),
    ("unknown-named-preset", {"preset": "square"}, "preset", ("unknown",)),
    ("unknown-named-custom", {"custom": {}}, "custom", ("unknown",)),
    ("image_size-unknown-capitalised-Width", {"image_size": {"Width": 1024, "height": 1024}}, "image_size.Width",
     ("unknown",)),
]


@pytest.mark.parametrize(
    ("endpoint", "fields", "field", "words"),
    [
        pytest.param(ep, fields, field, words, id=f"{SHORT[ep]}-{cid}")
        for cid, fields, field, words in REJECT_COMMON
        for ep in ALL_ENDPOINTS
    ],
)
def test_rejected_on_every_endpoint(endpoint: str, fields: dict[str, Any], field: str, words: tuple[str, ...]) -> None:
    rejected(endpoint, base(endpoint, **fields), field, words)


def _without(endpoint: str, key: str) -> dict[str, Any]:
    data = base(endpoint)
    del data[key]
    return data


REJECT_SPECIFIC: list[Any] = [
    *[pytest.param(ep, _without(ep, "prompt"), "prompt", ("required",), 4, id=f"{SHORT[ep]}-prompt-missing")
      for ep in ALL_ENDPOINTS],
    *[pytest.param(ep, base(ep, prompt="p" * 801), "prompt", ("800",), 4, id=f"{SHORT[ep]}-prompt-801")
      for ep in EDIT_ENDPOINTS],
    *[pytest.param(ep, base(ep, prompt="狐" * 801), "prompt", ("800",), 4, id=f"{SHORT[ep]}-prompt-801-cjk")
      for ep in EDIT_ENDPOINTS],
    *[pytest.param(ep, base(ep, image_urls=[URL]), "image_urls", ("unknown",), 4, id=f"{SHORT[ep]}-image_urls")
      for ep in T2I_ENDPOINTS],
    pytest.param(T2I, base(T2I, num_images=11), "num_images", ("at most 10",), 10, id="t2i-num_images-11-ceiling-10"),
    pytest.param(EDIT, base(EDIT, num_images=2), "num_images", ("at most 1",), 1, id="edit-num_images-2-ceiling-1"),
    pytest.param(T2I, base(T2I, num_images=0), "num_images", ("1",), None, id="t2i-num_images-0-no-ceiling"),
    # edit: image_urls, the list
    *[pytest.param(ep, _without(ep, "image_urls"), "image_urls", ("required",), 4, id=f"{SHORT[ep]}-urls-missing")
      for ep in EDIT_ENDPOINTS],
    *[pytest.param(ep, base(ep, image_urls=[]), "image_urls", ("at least 1",), 4, id=f"{SHORT[ep]}-0-urls")
      for ep in EDIT_ENDPOINTS],
    *[pytest.param(ep, base(ep, image_urls=[URL] * 7), "image_urls", ("at most 6",), 4, id=f"{SHORT[ep]}-7-urls")
      for ep in EDIT_ENDPOINTS],
    pytest.param(EDIT, base(EDIT, image_urls=URL), "image_urls", ("list",), 4, id="edit-urls-plain-string"),
    pytest.param(EDIT, base(EDIT, image_urls=None), "image_urls", ("list",), 4, id="edit-urls-null"),
    pytest.param(EDIT, base(EDIT, image_urls=[URL, 5]), "image_urls.1", ("string",), 4, id="edit-url-int"),
    pytest.param(EDIT, base(EDIT, image_urls=[URL, None]), "image_urls.1", ("string",), 4, id="edit-url-null"),
    pytest.param(EDIT, base(EDIT, image_url=URL), "image_url", ("unknown",), 4, id="edit-image_url-singular"),
    # the endpoint and the input itself
    *[pytest.param(ep, base(T2I), "endpoint", ("unknown endpoint",), 4, id=f"endpoint-{name}")
      for name, ep in (
          ("app-only", "fal-ai/qwen-image-2"),
          ("other-model", "fal-ai/flux/dev"),
          ("empty", ""),
          ("trailing-slash", T2I + "/"),
          ("null", None),
      )],
    *[pytest.param(T2I, data, "input", ("JSON object",), 4, id=f"input-{name}")
      for name, data in (
          ("list", [{"prompt": "a"}]),
          ("json-string", '{"prompt": "a"}'),
          ("null", None),
          ("int", 7),
      )],
]


@pytest.mark.parametrize(("endpoint", "data", "field", "words", "max_num_images"), REJECT_SPECIFIC)
def test_rejected_per_endpoint(
    endpoint: str, data: Any, field: str, words: tuple[str, ...], max_num_images: int | None
) -> None:
    rejected(endpoint, data, field, words, max_num_images=max_num_images)


HTTP_S = ("http(s)",)

#: (id, builder of the bad entry, key words). The bad entry is put at index 2, after two good ones.
BAD_URLS: list[Any] = [
    pytest.param(lambda: "ftp://example.com/cat.png", ("ftp", *HTTP_S), id="ftp"),
    pytest.param(lambda: "file:///etc/passwd", ("file", *HTTP_S), id="file"),
    pytest.param(lambda: "s3://bucket/cat.png", ("s3", *HTTP_S), id="s3"),
    pytest.param(lambda: "cat.png", HTTP_S, id="relative-path"),
    pytest.param(lambda: "./images/cat.png", HTTP_S, id="dot-relative-path"),
    pytest.param(lambda: "/home/me/cat.png", HTTP_S, id="absolute-path"),
    pytest.param(lambda: "//cdn.example.com/cat.png", HTTP_S, id="protocol-relative"),
    pytest.param(lambda: "javascript:alert(1)", ("javascript", *HTTP_S), id="javascript"),
    pytest.param(lambda: "", HTTP_S, id="empty-string"),
    pytest.param(lambda: "https://", HTTP_S, id="https-no-host"),
    pytest.param(lambda: "http:///cat.png", HTTP_S, id="http-empty-host"),
    pytest.param(lambda: "https://exa mple.com/cat.png", HTTP_S, id="https-with-space"),
    # data URIs: the envelope
    pytest.param(lambda: "data:", ("data URI",), id="data-empty"),
    pytest.param(lambda: "data:image/png;base64", ("data URI",), id="data-no-comma"),
    pytest.param(lambda: "data:image/png,iVBORw0KGgo=", ("base64",), id="data-not-base64-encoded"),
    pytest.param(lambda: "data:image/png;base64,!!!not base64!!!", ("base64",), id="data-malformed-base64"),
    pytest.param(lambda: "data:image/png;base64,iVBORw0KGgo", ("base64",), id="data-base64-bad-padding"),
    pytest.param(lambda: uri(b"hello world", "text/plain"), ("text/plain",), id="data-text-plain"),
    pytest.param(lambda: uri(image("GIF", 400, 400), "image/gif"), ("image/gif",), id="data-gif"),
    pytest.param(lambda: uri(image("GIF", 400, 400), "image/png"), ("JPEG, PNG or WEBP",), id="gif-labelled-png"),
    pytest.param(lambda: uri(image("BMP", 400, 400), "image/png"), ("JPEG, PNG or WEBP",), id="bmp-labelled-png"),
    pytest.param(lambda: uri(b"hello world", None), ("JPEG, PNG or WEBP",), id="data-no-mime-text"),
    pytest.param(lambda: uri(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10), ("readable",), id="png-signature-garbage"),
    # data URIs: fal's per-image rules
    pytest.param(lambda: png(383, 500), ("width", "383", "384-5000"), id="png-383x500-too-narrow"),
    pytest.param(lambda: png(500, 383), ("height", "383", "384-5000"), id="png-500x383-too-short"),
    pytest.param(lambda: png(5001, 400, "1"), ("width", "5001", "384-5000"), id="png-5001x400-too-wide"),
    pytest.param(lambda: png(400, 5001, "1"), ("height", "5001", "384-5000"), id="png-400x5001-too-tall"),
    pytest.param(lambda: uri(image("JPEG", 383, 383), "image/jpeg"), ("383", "384-5000"), id="jpeg-383x383"),
    pytest.param(lambda: uri(image("WEBP", 400, 300), "image/webp"), ("300", "384-5000"), id="webp-400x300"),
    pytest.param(lambda: png(400, 400, "RGBA"), ("alpha",), id="png-RGBA"),
    pytest.param(lambda: png(400, 400, "LA"), ("alpha",), id="png-LA"),
    pytest.param(palette_png_with_transparency, ("alpha",), id="png-palette-transparency"),
    pytest.param(lambda: padded_png(MB10 + 1), ("10 MB",), id="png-10MB-plus-1-byte"),
    pytest.param(lambda: uri(os.urandom(MB10 + 100 * 1024)), ("10 MB",), id="random-10.1MB"),
]


@pytest.mark.parametrize(("make", "words"), BAD_URLS)
def test_bad_image_url_rejected_naming_its_index(make: Callable[[], str], words: tuple[str, ...]) -> None:
    bad = make()
    for endpoint in EDIT_ENDPOINTS:
        rejected(endpoint, base(endpoint, image_urls=[URL, png(), bad]), "image_urls.2", words)
        rejected(endpoint, base(endpoint, image_urls=[bad]), "image_urls.0", words)


def test_every_bad_entry_is_reported_with_its_own_index() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_input(EDIT, base(EDIT, image_urls=["ftp://a/b.png", URL, "cat.png", png(383, 400)]))
    assert {e.field for e in info.value.errors} == {"image_urls.0", "image_urls.2", "image_urls.3"}


def test_every_broken_field_is_reported_in_plain_words() -> None:
    """Break every field at once: one FieldError each, none in pydantic's own wording."""
    data = {
        "prompt": "",
        "negative_prompt": "n" * 501,
        "image_size": {"width": "big", "height": 0, "depth": 1},
        "enable_prompt_expansion": "yes",
        "seed": -5,
        "enable_safety_checker": 1,
        "sync_mode": None,
        "num_images": 99,
        "output_format": "tiff",
        "image_urls": ["ftp://x/y.png", 3],
        "extra": True,
    }
    with pytest.raises(InvalidInput) as info:
        validate_input(PRO_EDIT, data, max_num_images=4)
    errors = info.value.errors
    assert {e.field for e in errors} == {
        "prompt",
        "negative_prompt",
        "image_size.width",
        "image_size.height",
        "image_size.depth",
        "enable_prompt_expansion",
        "seed",
        "enable_safety_checker",
        "sync_mode",
        "num_images",
        "output_format",
        "image_urls.0",
        "image_urls.1",
        "extra",
    }
    for err in errors:
        assert err.message.strip(), err
        for phrase in RAW_PYDANTIC:
            assert phrase not in err.message, err


# === fal's own pages (../shared/seeds) ========================================================


@functools.cache
def seed_pages() -> dict[str, str]:
    """endpoint id -> page text, for every seed page in the team kit."""
    assert SEEDS_DIR.is_dir(), f"fal's model pages are expected in {SEEDS_DIR} (the team kit's shared/seeds)"
    pages: dict[str, str] = {}
    for path in sorted(SEEDS_DIR.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        m = re.search(r"^(fal-ai/qwen-image-2/[\w/-]+)\s*$", text, re.M)
        if m:
            pages.setdefault(m.group(1), text)
    return pages


def page(endpoint: str) -> str:
    pages = seed_pages()
    assert endpoint in pages, f"no seed page for {endpoint}; have {sorted(pages)}"
    return pages[endpoint]


def json_after(text: str, start: int) -> Any:
    """The JSON value that begins at the first ``{`` at or after ``start``."""
    brace = text.index("{", start)
    value, _ = json.JSONDecoder().raw_decode(text, brace)
    return value


def example_input(text: str) -> dict[str, Any]:
    output = text.index("Output#")
    enum_line = text.rindex("Possible enum values: jpeg, png, webp", 0, output)
    value = json_after(text, enum_line)
    assert isinstance(value, dict)
    return value


def example_output(text: str) -> dict[str, Any]:
    value = json_after(text, text.index("Output#"))
    assert isinstance(value, dict)
    return value


def input_section(text: str) -> dict[str, str]:
    """Field name -> its documentation block, from the page's ``Input#`` section."""
    section = text[text.index("Input#") : text.index("Output#")]
    # Field headers read "name<mojibake nbsp>type": a name, then non-ASCII, then the type.
    heads = list(re.finditer(r"^([a-z_]+)[^\x00-\x7f]+\S*\s*(\S.*)$", section, re.M))
    return {
        h.group(1): section[h.start() : heads[i + 1].start() if i + 1 < len(heads) else len(section)]
        for i, h in enumerate(heads)
    }


SEED_EXAMPLES = [
    pytest.param(EDIT, EDIT, id="edit-page-on-edit"),
    pytest.param(EDIT, PRO_EDIT, id="edit-page-on-pro-edit"),
    pytest.param(PRO_T2I, PRO_T2I, id="pro-t2i-page-on-pro-t2i"),
    pytest.param(PRO_T2I, T2I, id="pro-t2i-page-on-t2i"),
]


@pytest.mark.parametrize(("page_of", "endpoint"), SEED_EXAMPLES)
def test_seed_page_example_input_accepted(page_of: str, endpoint: str) -> None:
    example = example_input(page(page_of))
    model = validate_input(endpoint, example, max_num_images=4)
    dumped = model.model_dump()
    for key, value in example.items():
        assert dumped[key] == value, key


def test_pro_example_is_long_and_custom_sized() -> None:
    """The pro infographic prompt is far past edit's 800 characters: only edit has that limit."""
    example = example_input(page(PRO_T2I))
    assert example["image_size"] == {"height": 2048, "width": 2048}
    assert len(example["prompt"]) > 800
    model = validate_input(PRO_T2I, example)
    assert model.size_pixels() == (2048, 2048)
    rejected(PRO_EDIT, {**example, "image_urls": [URL]}, "prompt", ("800",))


@pytest.mark.parametrize(
    ("page_of", "model"),
    [pytest.param(EDIT, EditInput, id="edit"), pytest.param(PRO_T2I, TextToImageInput, id="pro-t2i")],
)
def test_models_match_the_page_fields_defaults_and_enums(page_of: str, model: type[Any]) -> None:
    text = page(page_of)
    fields = input_section(text)
    assert set(fields) == set(model.model_fields)
    for name, block in fields.items():
        required = "* required" in block.splitlines()[0]
        assert model.model_fields[name].is_required() is required, name
        m = re.search(r"Default value: (.+)$", block, re.M)
        if m:
            raw = m.group(1).strip()
            try:
                documented = json.loads(raw)
            except json.JSONDecodeError:
                documented = raw  # bare enum value, e.g. square_hd
            assert model.model_fields[name].default == documented, name
    enums = re.findall(r"Possible enum values: (.+)$", text, re.M)
    assert [e.split(", ") for e in enums] == [list(get_args(ImageSizePreset)), list(get_args(OutputFormat))]
    other = text[text.index("Other types#") :]
    for side in ("width", "height"):
        assert re.search(rf"^{side}[^\x00-\x7f]+integer\n\n.*Default value: 512$", other, re.M)
        assert ImageSize.model_fields[side].default == 512


# === outputs ==================================================================================


@pytest.mark.parametrize("page_of", [pytest.param(EDIT, id="edit"), pytest.param(PRO_T2I, id="pro-t2i")])
def test_seed_page_example_output_accepted(page_of: str) -> None:
    example = example_output(page(page_of))
    out = GenerateOutput.model_validate(example)
    assert out.seed == 42
    assert [f.url for f in out.images] == [i["url"] for i in example["images"]]
    assert out.images[0].content_type is None


def test_output_ignores_extra_fields() -> None:
    answer = {
        "images": [
            {
                "url": "https://v3b.fal.media/files/b/x/out.png",
                "content_type": "image/png",
                "file_name": "out.png",
                "file_size": 123,
                "width": 1024,
                "height": 1024,
            }
        ],
        "seed": 7,
        "timings": {"inference": 1.5},
        "has_nsfw_concepts": [False],
        "prompt": "expanded prompt",
    }
    out = GenerateOutput.model_validate(answer)
    assert out.seed == 7
    assert out.images[0] == File(
        url="https://v3b.fal.media/files/b/x/out.png", content_type="image/png", file_name="out.png", file_size=123
    )
    assert not hasattr(out, "timings")
    assert "width" not in out.images[0].model_dump()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"images": [{}], "seed": 1}, id="file-without-url"),
        pytest.param({"images": [{"content_type": "image/png"}], "seed": 1}, id="file-only-content-type"),
        pytest.param({"images": [{"url": "https://a/b.png"}]}, id="no-seed"),
        pytest.param({"seed": 1}, id="no-images"),
    ],
)
def test_output_requires_url_images_and_seed(answer: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GenerateOutput.model_validate(answer)


def test_file_requires_url() -> None:
    with pytest.raises(ValidationError) as info:
        File.model_validate({"content_type": "image/png"})
    assert [e["loc"] for e in info.value.errors()] == [("url",)]
    assert File(url="https://a/b.png").url == "https://a/b.png"
