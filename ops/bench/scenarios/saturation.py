"""Saturation: does falq keep every one of fal's concurrency slots busy under a backlog?

Emulator concurrency 40, latency uniform 5-15 s (quick: 1-3 s), falq's outstanding cap
44, a backlog larger than the window can drain (2,000 jobs; quick: 400). The share of the
ideal throughput ``40 / mean latency`` is measured as slot occupancy at the emulator:
the seconds requests spent in progress inside a window, over ``40 x window``. Under a
backlog that equals achieved / ideal throughput, without the sampling noise of counting
completions. Reference 3 (naive Celery, 4 processes) is measured the same way.
"""

from __future__ import annotations

import time

from falq.ops.bench import references as ref
from falq.ops.bench.harness import Harness
from falq.ops.bench.model import REF_NAIVE, Goal, Row
from falq.shared.limits.store import write_config

NAME = "saturation"
SLOTS, CAP = 40, 44


def occupancy(reqs: list[dict[str, object]], start: float, end: float, slots: int = SLOTS) -> tuple[float, float]:
    """``(busy share of slots, completions/s)`` inside ``[start, end]`` (epoch seconds)."""
    busy, done = 0.0, 0
    for r in reqs:
        s, c = r.get("started_at"), r.get("completed_at")
        if not isinstance(s, float):
            continue
        c_end = c if isinstance(c, float) else end
        busy += max(0.0, min(c_end, end) - max(s, start))
        done += 1 if isinstance(c, float) and start <= c <= end else 0
    return busy / (slots * (end - start)), done / (end - start)


def _measure(h: Harness, warmup: float, window: float) -> tuple[float, float]:
    """Occupancy over ``window`` seconds starting ``warmup`` after the first request started."""
    since = time.time() - 600

    def first_start() -> float | None:
        starts = [r["started_at"] for r in h.emulator_requests(since) if r.get("started_at")]
        return min(starts) if starts else None

    h.wait_until(lambda: first_start() is not None, 60, 0.2, "the first request to start")
    begin = (first_start() or time.time()) + warmup
    time.sleep(max(0.0, begin + window + 0.3 - time.time()))
    return occupancy(h.emulator_requests(since), begin, begin + window)


def run(h: Harness) -> list[Row]:
    if h.quick:
        backlog, lo, hi, warmup, window, ref_window = 400, 1.0, 3.0, 1.0, 10.0, 4.0
    else:
        backlog, lo, hi, warmup, window, ref_window = 2000, 5.0, 15.0, 5.0, 150.0, 30.0
    emulator = {"latency": f"uniform:{lo:g},{hi:g}", "concurrency": SLOTS}
    ideal = SLOTS / ((lo + hi) / 2)
    note = (f"backlog {backlog}, latency uniform {lo:g}-{hi:g}s, window {window:.0f}s, ideal {ideal:.1f} jobs/s"
            + (" (quick: scaled down)" if h.quick else ""))

    h.reset(**emulator)
    write_config(h.falq().redis, h.falq().settings.key_prefix, {"max_outstanding": str(CAP)})
    h.start_falq_workers(1, 200, env={"FALQ_MAX_OUTSTANDING": str(CAP)})
    h.enqueue(backlog, "saturation")
    share, rate = _measure(h, warmup, window)

    h.reset(**emulator)
    ref.start_naive(h, 4)
    ref.naive_enqueue(h, 200, tag="saturation")
    n_share, n_rate = _measure(h, warmup, ref_window)
    return [
        Row(NAME, "share of ideal throughput", "share", share, n_share, REF_NAIVE, Goal("falq", ">=", 0.97), note),
        Row(NAME, "completions/s in window", "jobs/s", rate, n_rate, REF_NAIVE, None, f"ideal {ideal:.1f}/s"),
    ]
