"""Retry delays: exponential backoff with full jitter, honouring ``Retry-After``."""

from __future__ import annotations

import random


def backoff_delay(
    tries: int, *, base_s: float, max_s: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before try number ``tries + 1``.

    Full jitter (uniform between 0 and ``min(max_s, base_s * 2**tries)``) spreads a herd
    of workers that failed together. A server's ``Retry-After`` is a floor, capped at
    ``max_s`` so a hostile header cannot park a job for a day.

    Example::

        >>> 0 <= backoff_delay(3, base_s=1, max_s=60) <= 8
        True
    """
    ceiling = min(max_s, base_s * (2 ** min(tries, 30)))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_s))
    return delay
