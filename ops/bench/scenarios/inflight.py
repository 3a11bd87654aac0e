"""In flight: how many jobs one worker process keeps waiting on fal, and at what memory.

Emulator latency 20 s (quick: 6 s), no concurrency cap. falq: one ``falq worker`` with one
greenlet per job; reference 3 (naive Celery, ``-P prefork -c 4``) whose in-flight count is
bounded by its process count. Jobs in flight are read from the emulator (requests in
progress), memory from ``/proc`` (the prefork parent and its children together).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from falq.ops.bench import references as ref
from falq.ops.bench.harness import Harness, children, rss_mb
from falq.ops.bench.model import REF_NAIVE, Goal, Row

NAME = "inflight"


def _sample(h: Harness, pid: int, until: Callable[[], bool], timeout: float) -> tuple[int, float]:
    """Peak emulator requests in progress and peak RSS of ``pid``'s tree until ``until()``."""
    peak_flight, peak_rss = 0, 0.0
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        snap = h.stack.emu.requests(since=time.time() + 3600)  # counters only
        peak_flight = max(peak_flight, int(snap["in_flight"]["overall"]), int(snap["peak_in_flight"]["overall"]))
        peak_rss = max(peak_rss, rss_mb(children(pid)))
        if until():
            break
        time.sleep(0.5)
    return peak_flight, peak_rss


def run(h: Harness) -> list[Row]:
    n, latency = (300, 6.0) if h.quick else (2000, 20.0)
    emulator = {"latency": f"fixed:{latency}", "stream_interval_s": 5.0}
    note = f"{n} jobs, latency {latency:.0f}s, 1 process" + (" (quick: scaled down)" if h.quick else "")

    h.reset(**emulator)
    (pid,) = h.start_falq_workers(1, n)
    idle = rss_mb([pid])
    h.enqueue(n, "inflight")
    flight, rss = _sample(h, pid, lambda: h.completed() >= n, latency * 4 + 120)

    h.reset(**emulator)
    naive_pid = ref.start_naive(h, 4)
    ref.naive_enqueue(h, 12, tag="inflight")
    t0 = time.monotonic()
    n_flight, n_rss = _sample(h, naive_pid, lambda: time.monotonic() - t0 > latency + 1, latency + 30)
    return [
        Row(NAME, "peak jobs in flight", "jobs", flight, n_flight, REF_NAIVE, Goal("falq", ">=", min(n, 2000)), note),
        Row(NAME, "worker RSS at peak", "MB", rss, n_rss, REF_NAIVE, Goal("falq", "<", 400),
            f"falq idle {idle:.0f} MB; naive: parent + 4 children"),
        Row(NAME, "RSS per job in flight", "MB/job", rss / max(flight, 1), n_rss / max(n_flight, 1), REF_NAIVE),
    ]
