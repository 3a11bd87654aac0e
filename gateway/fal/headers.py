"""fal's request headers, as a client sends them to the gateway's fal routes: checked, then passed on.

A client written for fal sets these on its submit (fal's
"common parameters" page). The gateway honours each one by sending it with the job's submit
to fal, over falq's own default for it (:func:`falq.shared.fal.client.submit_headers`):

* ``X-Fal-Queue-Priority``: ``normal`` or ``low``; ``low`` also puts the job in falq's bulk lane.
* ``X-Fal-Request-Start-Timeout`` (and fal's older name ``X-Fal-Request-Timeout``; the newer
  wins when both are sent): seconds above 1; fal drops the request, unbilled, if no runner
  started it in time.
* ``X-Fal-Store-IO``: ``0`` or ``1``; ``0`` keeps the payloads out of fal's 30-day history.
* ``X-Fal-Object-Lifecycle-Preference``: a JSON object; how long fal keeps the generated media.
  An ``expiration_duration_seconds`` under 60 is refused: falq copies the media after the
  request ends, and a shorter life could lose a paid output.
* ``x-fal-no-retry``: ``1/true/yes`` turns fal's server-side retries off (``0/false/no``
  leaves falq's ``FALQ_FAL_NO_RETRY``).
* ``X-Fal-Runner-Hint``: up to 256 printable characters, fal's routing hint.

A malformed value is a 422 naming the header; nothing is enqueued.

Example::

    passed, detail = fal_headers_of(request.headers)
    # passed == {"X-Fal-Queue-Priority": "low", "X-Fal-Store-IO": "0"}, detail == []
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["PASSED_ON", "fal_headers_of"]

#: The headers passed on, in the spelling falq's own submit uses (so a client's value replaces falq's).
PASSED_ON = ("X-Fal-Queue-Priority", "X-Fal-Request-Start-Timeout", "X-Fal-Request-Timeout", "X-Fal-Store-IO",
             "X-Fal-Object-Lifecycle-Preference", "x-fal-no-retry", "X-Fal-Runner-Hint")
_MAX_START_TIMEOUT_S = 24 * 3600.0
_MAX_JSON = 4096


def _bad(detail: list[dict[str, Any]], header: str, msg: str) -> None:
    detail.append({"loc": ["header", header.lower()], "msg": msg, "type": "value_error"})


def fal_headers_of(headers: Mapping[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """``(headers to send to fal, 422 detail entries)`` from a submit's request headers."""
    low = {k.lower(): v.strip() for k, v in headers.items()}
    out: dict[str, str] = {}
    detail: list[dict[str, Any]] = []
    priority = low.get("x-fal-queue-priority")
    if priority:  # empty: falq's default for the lane, as before
        if priority.lower() in ("normal", "low"):
            out["X-Fal-Queue-Priority"] = priority.lower()
        else:
            _bad(detail, "X-Fal-Queue-Priority", "must be 'normal' or 'low'")
    # The newer name wins when both are sent (fal's docs, sync/run-path); both are passed on with
    # that value, so it replaces falq's own start timeout whichever name falq sends.
    for name in ("X-Fal-Request-Start-Timeout", "X-Fal-Request-Timeout"):
        raw = low.get(name.lower())
        if raw is None:
            continue
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and 1 < seconds <= _MAX_START_TIMEOUT_S):
            _bad(detail, name, f"must be a number of seconds above 1 and at most {_MAX_START_TIMEOUT_S:.0f}")
            continue
        value = str(float(seconds))
        out["X-Fal-Request-Start-Timeout"] = out["X-Fal-Request-Timeout"] = value
        break
    store_io = low.get("x-fal-store-io")
    if store_io is not None:
        if store_io.lower() in ("0", "false"):
            out["X-Fal-Store-IO"] = "0"
        elif store_io.lower() in ("1", "true"):
            out["X-Fal-Store-IO"] = "1"
        else:
            _bad(detail, "X-Fal-Store-IO", "must be 0 or 1")
    lifecycle = low.get("x-fal-object-lifecycle-preference")
    if lifecycle is not None:
        _lifecycle(lifecycle, out, detail)
    no_retry = low.get("x-fal-no-retry")
    if no_retry is not None:
        if no_retry.lower() in ("1", "true", "yes"):
            out["x-fal-no-retry"] = "1"
        elif no_retry.lower() not in ("0", "false", "no"):
            _bad(detail, "x-fal-no-retry", "must be 1, true, yes, 0, false or no")
    hint = low.get("x-fal-runner-hint")
    if hint is not None:
        if 0 < len(hint) <= 256 and hint.isprintable():
            out["X-Fal-Runner-Hint"] = hint
        else:
            _bad(detail, "X-Fal-Runner-Hint", "must be 1-256 printable characters")
    return out, detail


def _lifecycle(raw: str, out: dict[str, str], detail: list[dict[str, Any]]) -> None:
    name = "X-Fal-Object-Lifecycle-Preference"
    try:
        value = json.loads(raw) if len(raw) <= _MAX_JSON else None
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        _bad(detail, name, f"must be a JSON object of at most {_MAX_JSON} characters")
        return
    expiry = value.get("expiration_duration_seconds")
    if expiry is not None and (not isinstance(expiry, int) or isinstance(expiry, bool) or expiry < 60):
        # falq copies the media after the request ends: a shorter life could lose a paid output.
        _bad(detail, name, "expiration_duration_seconds must be an integer of at least 60")
        return
    out[name] = json.dumps(value, separators=(",", ":"))
