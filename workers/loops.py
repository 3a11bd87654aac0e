"""The worker's background loops: one helper instead of a copied start/try/log template.

A loop is a named daemon thread (a greenlet under gevent) that calls a function until an
:class:`threading.Event` is set. It survives every exception (logs the type and goes on): a
dead lease keeper would let every lease it holds lapse, a dead maintenance pass would strand work.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

log = logging.getLogger("falq.loops")


def every(name: str, interval_s: float | Callable[[], float], fn: Callable[[], object],
          stop: threading.Event | None = None, *, jitter: float = 0.0, logger: logging.Logger | None = None,
          what: str | None = None) -> threading.Thread:
    """Start a daemon thread ``name`` that waits ``interval_s`` (times a random factor in
    ``1 +- jitter``) then calls ``fn``, until ``stop`` is set. Exceptions are logged, never fatal.

    ``interval_s`` may be a callable read before each wait (a cadence that changes at run time).
    """
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
    event = stop if stop is not None else threading.Event()
    logger = logger or log
    label = what or name

    def period() -> float:
        base = interval_s() if callable(interval_s) else interval_s
        return base * random.uniform(1.0 - jitter, 1.0 + jitter) if jitter else base

    def loop() -> None:
        while not event.wait(period()):
            try:
                fn()
            except Exception as exc:  # never let the loop die; the next round tries again
                logger.warning("%s failed: %s", label, type(exc).__name__)

    return _start(name, loop)


def forever(name: str, fn: Callable[[threading.Event], object], stop: threading.Event | None = None, *,
            retry_s: float = 1.0, logger: logging.Logger | None = None, what: str | None = None
            ) -> threading.Thread:
    """Start a daemon thread ``name`` that runs ``fn(stop)`` (a consumer loop that paces
    itself, e.g. by blocking reads) until ``stop`` is set; if ``fn`` raises or returns early it
    is logged and started again after ``retry_s``."""
    event = stop if stop is not None else threading.Event()
    logger = logger or log
    label = what or name

    def loop() -> None:
        while not event.is_set():
            try:
                fn(event)
            except Exception as exc:  # never let the loop die
                logger.warning("%s failed: %s", label, type(exc).__name__)
            event.wait(retry_s)

    return _start(name, loop)


def _start(name: str, target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


__all__ = ["every", "forever"]
