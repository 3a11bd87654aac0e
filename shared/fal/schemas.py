"""Pydantic models of the Qwen-Image-2 endpoints on fal, field for field.

The source of truth is fal's model pages for these endpoints (https://fal.ai/models/fal-ai/qwen-image-2/...):

* ``fal-ai/qwen-image-2/text-to-image`` and ``fal-ai/qwen-image-2/pro/text-to-image``
  share :class:`TextToImageInput`;
* ``fal-ai/qwen-image-2/edit`` and ``fal-ai/qwen-image-2/pro/edit`` share :class:`EditInput`;
* all four answer with :class:`GenerateOutput`.

Inputs are strict: unknown fields and wrong types are rejected, not coerced or dropped.
Use :func:`falq.shared.fal.endpoints.validate_input` rather than the models directly: it turns pydantic's errors into
:class:`~falq.shared.errors.InvalidInput` with one plain-words message per field.

Example::

    >>> from falq.shared.fal.endpoints import validate_input
    >>> validate_input("fal-ai/qwen-image-2/text-to-image", {"prompt": "a red fox"}).image_size
    'square_hd'
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from falq.shared.errors import FieldError

ImageSizePreset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
OutputFormat = Literal["jpeg", "png", "webp"]

#: Pixel sizes of the presets, as fal renders them.
PRESET_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

MIN_PIXELS = 512 * 512
MAX_PIXELS = 2048 * 2048
MAX_SEED = 2_147_483_647
EDIT_PROMPT_MAX = 800
NEGATIVE_PROMPT_MAX = 500
MIN_IMAGE_URLS, MAX_IMAGE_URLS = 1, 6



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ImageSize(_Strict):
    """A custom output size. Its pixel count must lie within 512x512 .. 2048x2048."""

    width: int = Field(512, gt=0)
    height: int = Field(512, gt=0)

    @model_validator(mode="after")
    def _pixel_count(self) -> ImageSize:
        pixels = self.width * self.height
        if not MIN_PIXELS <= pixels <= MAX_PIXELS:
            raise ValueError(
                f"width x height is {pixels} pixels; it must be between 512x512 ({MIN_PIXELS}) "
                f"and 2048x2048 ({MAX_PIXELS}) inclusive"
            )
        return self


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _size_branch(value: Any) -> str:
    return "custom" if isinstance(value, dict | ImageSize) else "preset"


#: A preset name or ``{width, height}``; the discriminator makes an error speak about the
#: branch the caller meant (a string is judged as a preset, an object as a custom size).
SizeField = Annotated[
    Annotated[ImageSizePreset, Tag("preset")] | Annotated[ImageSize, Tag("custom")],
    Discriminator(_size_branch),
]


class _CommonInput(_Strict):
    prompt: str
    negative_prompt: Annotated[str, StringConstraints(max_length=NEGATIVE_PROMPT_MAX)] = ""
    image_size: SizeField | None = None
    enable_prompt_expansion: bool = True
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    enable_safety_checker: bool = True
    sync_mode: bool = False
    num_images: Annotated[int, Field(ge=1)] = 1
    output_format: OutputFormat = "png"

    _check_prompt = field_validator("prompt")(classmethod(lambda cls, v: _non_empty(v)))

    @field_validator("num_images")
    @classmethod
    def _ceiling(cls, value: int, info: ValidationInfo) -> int:
        # fal gives no maximum; falq applies a per-job ceiling (a spend guard) when the
        # caller passes one in the validation context. The emulator passes none.
        ceiling = (info.context or {}).get("max_num_images")
        if ceiling is not None and value > ceiling:
            raise ValueError(f"must be at most {ceiling} (falq's per-job ceiling, FALQ_MAX_NUM_IMAGES)")
        return value

    def size_pixels(self) -> tuple[int, int] | None:
        """The output size in pixels, or None when it follows the input image (edit)."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, ImageSize):
            return self.image_size.width, self.image_size.height
        return PRESET_SIZES[self.image_size]


class TextToImageInput(_CommonInput):
    """Input of ``qwen-image-2/text-to-image`` and ``qwen-image-2/pro/text-to-image``.

    The pro page gives no maximum prompt length, so none is enforced. ``image_size``
    defaults to ``square_hd``.
    """

    image_size: SizeField | None = "square_hd"


class EditInput(_CommonInput):
    """Input of ``qwen-image-2/edit`` and ``qwen-image-2/pro/edit``.

    ``image_urls`` holds 1 to 6 http(s) URLs or data URIs. ``image_size`` left unset means
    "the size of the last input image", which is fal's default.
    """

    prompt: Annotated[str, StringConstraints(max_length=EDIT_PROMPT_MAX)]
    image_urls: Annotated[
        list[Annotated[str, AfterValidator(lambda url: check_image_url(url))]],
        Field(min_length=MIN_IMAGE_URLS, max_length=MAX_IMAGE_URLS),
    ]


def check_image_url(url: str) -> str:
    """Reject anything but an http(s) URL with a host or a well-formed image data URI.

    Data URIs carry their bytes, so those bytes are checked against fal's image rules
    (size per side, 10 MB, format, no alpha) right here.
    """
    lowered = url[:16].lower()
    if lowered.startswith(("http://", "https://")):
        host = url.split("://", 1)[1].split("/", 1)[0]
        if not host or any(c.isspace() for c in url):
            raise ValueError("is not a valid http(s) URL (no host, or contains spaces)")
        return url
    if lowered.startswith("data:"):
        from falq.shared.storage.images import check_data_uri  # Pillow is only needed here

        check_data_uri(url)
        return url
    scheme = url.split(":", 1)[0] if ":" in url else ""
    shown = f"scheme '{scheme}:'" if scheme else "no scheme"
    raise ValueError(f"has {shown}; only http(s) URLs and data URIs are accepted")


class File(BaseModel):
    """A file fal returns. Only ``url`` is required."""

    model_config = ConfigDict(extra="ignore")

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


class GenerateOutput(BaseModel):
    """fal's answer for all four endpoints: the images and the seed used."""

    model_config = ConfigDict(extra="ignore")

    images: list[File]
    seed: int


def format_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Turn pydantic errors into plain-words :class:`FieldError` entries."""
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for i, p in enumerate(err["loc"]) if not _is_union_tag(err["loc"], i)]
        field = ".".join(([prefix] if prefix else []) + loc)
        msg = _plain(err)
        entry = FieldError(field, msg)
        if entry not in out:
            out.append(entry)
    return out


def _is_union_tag(loc: tuple[int | str, ...], i: int) -> bool:
    # image_size's discriminator puts its branch tag right after the field; a user thinks in
    # field names, so drop only that tag.
    return i == 1 and loc[0] == "image_size" and loc[i] in ("preset", "custom")


def _plain(err: Any) -> str:
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "is not a field of this endpoint (unknown fields are rejected)"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "value_error":
        return str(ctx.get("error", msg)).removeprefix("Value error, ")
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return msg.replace("Input should be", "must be")
    if kind in ("too_long", "too_short", "string_too_long", "string_too_short"):
        return msg.replace("String should have", "must have").replace("List should have", "must have")
    got = type(err.get("input")).__name__
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return msg.replace("Input should be", "must be") + f" (got {got})"
    return msg.replace("Input should be", "must be")
