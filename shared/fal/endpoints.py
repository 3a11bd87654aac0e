"""The four Qwen-Image-2 endpoints falq knows, and what differs between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from falq.shared.errors import FieldError, InvalidInput
from falq.shared.fal.schemas import EditInput, TextToImageInput, format_errors
from falq.shared.settings import Settings


@dataclass(frozen=True)
class Endpoint:
    """One fal endpoint.

    Parameters:
        id: fal's endpoint id, e.g. ``fal-ai/qwen-image-2/edit``.
        input_model: the pydantic model of its input.
        tier: ``standard`` or ``pro``; selects the price in settings.
        kind: ``text-to-image`` or ``edit``.
    """

    id: str
    input_model: type[TextToImageInput] | type[EditInput]
    tier: str
    kind: str

    @property
    def app(self) -> str:
        """``owner/app``: the base fal uses for status, result and cancel URLs."""
        return "/".join(self.id.split("/")[:2])


ENDPOINTS: dict[str, Endpoint] = {
    e.id: e
    for e in (
        Endpoint("fal-ai/qwen-image-2/text-to-image", TextToImageInput, "standard", "text-to-image"),
        Endpoint("fal-ai/qwen-image-2/pro/text-to-image", TextToImageInput, "pro", "text-to-image"),
        Endpoint("fal-ai/qwen-image-2/edit", EditInput, "standard", "edit"),
        Endpoint("fal-ai/qwen-image-2/pro/edit", EditInput, "pro", "edit"),
    )
}


#: The endpoint ids by kind and tier.
TEXT_TO_IMAGE = {"standard": "fal-ai/qwen-image-2/text-to-image", "pro": "fal-ai/qwen-image-2/pro/text-to-image"}
EDIT = {"standard": "fal-ai/qwen-image-2/edit", "pro": "fal-ai/qwen-image-2/pro/edit"}


def get_endpoint(endpoint: str) -> Endpoint:
    """Look up an endpoint id; raise :class:`InvalidInput` naming the known ones if unknown."""
    try:
        return ENDPOINTS[endpoint]
    except (KeyError, TypeError):
        known = ", ".join(ENDPOINTS)
        raise InvalidInput([FieldError("endpoint", f"unknown endpoint {endpoint!r}; known: {known}")]) from None


def unit_price(endpoint: str, settings: Settings) -> float | None:
    """USD per billed unit of ``endpoint`` (``FALQ_PRICE_STANDARD`` / ``FALQ_PRICE_PRO``).

    fal reports ``x-fal-billable-units`` on results; for these image endpoints a unit is
    taken to be one image, as fal's pricing of them is per image. Evidence is thin (fal
    documents no unit per endpoint), so records say which figure they hold
    (``cost_source``). None for an unknown endpoint.
    """
    spec = ENDPOINTS.get(endpoint)
    return settings.price_for(spec.tier) if spec is not None else None


def validate_input(endpoint: str, data: Any, *, max_num_images: int | None = None) -> TextToImageInput | EditInput:
    """Validate ``data`` as the input of ``endpoint``; raise :class:`InvalidInput` if it is not.

    Parameters:
        endpoint: one of the four Qwen-Image-2 endpoint ids.
        data: the input as a JSON-like dict.
        max_num_images: falq's per-job ceiling on ``num_images`` (None: no ceiling).
    """
    spec = get_endpoint(endpoint)
    if not isinstance(data, dict):
        raise InvalidInput([FieldError("input", f"must be a JSON object, not {type(data).__name__}")])
    context = {"max_num_images": max_num_images}
    try:
        return spec.input_model.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidInput(format_errors(exc)) from None
