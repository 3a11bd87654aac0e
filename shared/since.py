"""Reading a ``--since`` value: ``10m``/``2h``/``1d`` ago, an ISO date(time), or epoch seconds.

Used by the CLI's listings and the gateway's searches alike.

Example::

    >>> parse_since("2h", now=7200.0)
    0.0
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from falq.shared.errors import FieldError, InvalidInput

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
        raise InvalidInput([FieldError("since", "must be a duration (30s, 10m, 2h, 1d), an ISO date/time "
                                       "or epoch seconds")]) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
