"""Paged reads of fal's platform API (``{FALQ_FAL_PLATFORM_URL}``: prices, billing events).

fal's platform list endpoints answer ``{..., "has_more", "next_cursor"}`` and take the cursor back
as ``cursor`` (https://fal.ai/docs/platform-apis/v1/models/pricing). The key goes only in the
Authorization header and never into an error's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from falq.shared.errors import RetryableError


def pages(client: httpx.Client, url: str, params: dict[str, str], *, key: str, what: str,
          error: type[RetryableError], max_pages: int,
          refused: str | None = None) -> Iterator[dict[str, Any]]:
    """Each page's JSON object, following ``next_cursor`` while ``has_more`` (at most ``max_pages``).

    ``what`` names the resource in errors ("fal's pricing API"); every failure raises ``error``:
    unreachable, a status other than 200 (``refused`` is the message for 401/403 when given), or
    an answer that is not a JSON object.
    """
    for _ in range(max_pages):
        try:
            r = client.get(url, params=params, headers={"Authorization": f"Key {key}"})
        except httpx.HTTPError as exc:
            raise error(f"{what} at {url} is unreachable ({type(exc).__name__})") from None
        if refused is not None and r.status_code in (401, 403):
            raise error(f"{refused} (HTTP {r.status_code})")
        if r.status_code != 200:
            raise error(f"{what} answered HTTP {r.status_code}")
        try:
            doc = r.json()
        except ValueError:
            raise error(f"{what} answered something that is not JSON") from None
        if not isinstance(doc, dict):
            raise error(f"{what} answered JSON that is not an object")
        yield doc
        cursor = doc.get("next_cursor")
        if not doc.get("has_more") or not isinstance(cursor, str) or not cursor:
            return
        params = {**params, "cursor": cursor}


__all__ = ["pages"]
