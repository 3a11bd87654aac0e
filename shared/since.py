"""Reading a ``--since`` value: ``10m``/``2h``/``1d`` ago, an ISO date(time), or epoch seconds.

Used by the CLI's listings and the gateway's searches alike. :data:`Since` is the same rule as
a pydantic type (a request model's ``since`` field), :func:`validate_since` as a function.

Example::

    >>> parse_since("2h", now=7200.0)
    0.0
    >>> validate_since(None) is None
    True
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, TypeAdapter, ValidationError

from falq.shared.errors import FieldError, InvalidInput
from falq.shared.validation import number

SINCE_RULE = "must be a duration (30s, 10m, 2h, 1d), an ISO date/time or epoch seconds"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")


def parse_since(text: str, now: float | None = None) -> float:
    """``10m``/``2h``/``1d`` ago, an ISO date(time) (UTC unless it says), or epoch seconds."""
    t = text.strip()
    m = _DURATION.match(t.lower())
    if m:
        return (now or time.time()) - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise InvalidInput([FieldError("since", SINCE_RULE)]) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _since(value: Any) -> float | None:
    """Epoch seconds from a ``since`` as text or epoch seconds; a finite time, never blank."""
    if value is None:
        return None
    found: float | None
    if isinstance(value, str):
        try:
            found = parse_since(value) if value.strip() else None
        except (InvalidInput, OverflowError, ValueError):
            found = None
    else:
        found = number(value)
    if found is None or not math.isfinite(found):
        raise ValueError(SINCE_RULE)
    return found


#: A ``since`` field of a request model: epoch seconds, or ``None`` when not given.
Since = Annotated[float | None, BeforeValidator(_since)]
_SINCE: TypeAdapter[float | None] = TypeAdapter(Since)


def validate_since(since: Any) -> float | None:
    """Epoch seconds from a ``since`` (text, or a number of epoch seconds); ``None`` stays ``None``.

    Raises :class:`InvalidInput` (``since: ...``) for anything else, a blank text included.
    """
    try:
        return _SINCE.validate_python(since)
    except ValidationError:
        raise InvalidInput([FieldError("since", SINCE_RULE)]) from None
