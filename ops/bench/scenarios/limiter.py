"""Limiter accuracy: 4 worker processes share one fal key's limit of 20 submissions/s.

Arrival times are read where fal counts them: the emulator's log of submissions. Figures:
the highest count in any one-second window (must not exceed the limit) and the mean
rate under a backlog (first to last submission). Reference 3 (naive Celery, prefork
``-c 4``) uses what a Celery user reaches for, the task's ``rate_limit="20/s"`` (a
per-worker token bucket), and polls every 0.05 s so its 4 processes can reach the rate.
This folds in ``ops/bench_limiter.py`` (its window and rate functions are reused).
"""

from __future__ import annotations

import time

from falq.ops.bench import references as ref
from falq.ops.bench.harness import Harness
from falq.ops.bench.model import REF_NAIVE, Goal, Row
from falq.ops.bench_limiter import max_in_window, mean_rate
from falq.shared.limits.store import write_config

NAME = "limiter"
RATE, WORKERS = 20, 4


def run(h: Harness) -> list[Row]:
    n = h.size("limiter.jobs", 80, 600)
    emulator = {"latency": "fixed:0.05"}
    note = f"{n}-job backlog, {WORKERS} processes" + (" (quick: scaled down)" if h.quick else "")

    h.reset(**emulator)
    write_config(h.redis, h.falq().settings.key_prefix, {"rate": repr(float(RATE)), "burst": "1",
                                                          "max_outstanding": "0"})
    h.start_falq_workers(WORKERS, 200, env={"FALQ_SLOT_LEASE_S": "5"})
    since = time.time() - 1
    h.enqueue(n, "limiter")
    h.wait_until(lambda: h.completed() >= n, 60 + 3 * n / RATE, 0.5, f"{n} limiter jobs")
    times = [r["submitted_at"] for r in h.emulator_requests(since)]

    h.reset(**emulator)
    ref.start_naive(h, WORKERS, rate_limit=f"{RATE}/s")
    since = time.time() - 1
    ref.naive_enqueue(h, n, poll_s=0.05, tag="limiter")
    h.wait_until(lambda: ref.naive_done(h) >= n, 60 + 3 * n / RATE, 0.5, f"{n} naive jobs")
    ref_times = [r["submitted_at"] for r in h.emulator_requests(since)]
    return [
        Row(NAME, "max submissions in any 1 s", "per s", max_in_window(times), max_in_window(ref_times), REF_NAIVE,
            Goal("falq", "<=", RATE), note + f"; limit {RATE}/s"),
        Row(NAME, "mean rate under backlog", "per s", mean_rate(times), mean_rate(ref_times), REF_NAIVE,
            Goal("falq", ">=", RATE - 1), "reference: Celery rate_limit on one prefork worker"),
    ]
