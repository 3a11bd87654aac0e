"""The worker's one consumer loop (``falq-consumers``): the consumers of the end-of-job stream
(:mod:`falq.shared.jobs.ended`: the callback sender, the chain loop, the archiver), in turn, in
one thread (a greenlet under gevent).

Each part returns how many entries it handled. A part that raises is logged and rests (backing
off on repeated failures) while the others go on. When a round handled nothing the loop waits
up to :data:`IDLE_S`, or less when :meth:`Consumers.wake` is called (a job ended here: its
callback is due now). A part with ``every_s`` runs at most that often (the archive, whose reads
are not latency-bound).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from falq.workers.backoff import backoff_delay
from falq.workers.loops import forever

log = logging.getLogger("falq.consumers")

IDLE_S = 0.25
"""How long an idle round waits: the latency of a chain's children and of a callback queued elsewhere."""


@dataclass
class Part:
    """One consumer of the loop.

    Attributes:
        name: names it in logs.
        fn: one round; returns the entries handled.
        every_s: run at most this often (0: every round).
        on_error: called after a failure (e.g. re-create a consumer group).
        max_backoff_s: the longest rest after repeated failures.
    """

    name: str
    fn: Callable[[], int]
    every_s: float = 0.0
    on_error: Callable[[], object] | None = None
    max_backoff_s: float = 30.0
    failures: int = 0
    next_at: float = field(default=0.0)


class Consumers:
    """The parts and the loop that runs them."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._wake = threading.Event()

    def add(self, part: Part) -> None:
        self.parts.append(part)

    def wake(self) -> None:
        """Run a round now (a job ended in this process)."""
        self._wake.set()

    def round(self) -> int:
        """One round over the parts that are due; returns the entries handled."""
        handled = 0
        for p in self.parts:
            now = time.monotonic()
            if now < p.next_at:
                continue
            try:
                handled += p.fn()
                p.failures = 0
                p.next_at = now + p.every_s
            except Exception as exc:  # Redis, the database or S3 may be restarting: rest, then go on
                p.failures += 1
                # At least a second (or the part's longest rest): a broken part never spins.
                floor = min(1.0, p.max_backoff_s)
                delay = max(floor, backoff_delay(p.failures, base_s=0.5, max_s=p.max_backoff_s))
                p.next_at = now + delay
                log.warning("%s paused %.1fs: %s", p.name, delay, type(exc).__name__)
                if p.on_error is not None:
                    p.on_error()
        return handled

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.round():
                self._wake.wait(IDLE_S)
                self._wake.clear()

    def start(self, stop: threading.Event | None = None) -> threading.Thread:
        return forever("falq-consumers", self.run, stop, logger=log, what="consumer loop")


__all__ = ["IDLE_S", "Consumers", "Part"]
