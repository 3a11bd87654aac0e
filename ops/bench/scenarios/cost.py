"""Cost of a job: CPU-ms of falq per job (workers and producer) and Redis commands per job.

Emulator latency 0, 1 KB images, workers started and idle before the counters are read
(start-up excluded). Worker CPU comes from ``/proc`` (utime + stime of the process tree),
producer CPU is the producing thread's own CPU time (``time.thread_time``, so the
emulator and S3 threads of this process are not counted), Redis commands from ``INFO``
(``total_commands_processed``, minus the harness' own polling). Beside falq: reference 3
(naive Celery: the same fal round trip, no durable state, no S3), reference 1 (a
Celery no-op task: the floor of any Celery task) and reference 2 (the fal-client asyncio
script: its process's CPU per job for the same fal requests, polled to COMPLETED by
``handle.get()``; no durable state, no S3).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from falq.ops.bench import references as ref
from falq.ops.bench.harness import Harness, children, cpu_s
from falq.ops.bench.model import REF_FAL_CLIENT, REF_NAIVE, REF_NOOP, Row
from falq.shared.jobs.records import STATES

NAME = "cost"


def _measure(h: Harness, pid_list: list[int], produce: Callable[[], int],
             done: Callable[[], bool]) -> tuple[float, float, float]:
    """``(worker CPU s, producer CPU s, Redis commands)`` around producing and draining.

    ``produce`` enqueues the jobs and returns how many Redis commands one ``done()`` poll
    costs, so the harness' own polling is taken out of the count.
    """
    time.sleep(1.0)
    pids = [p for pid in pid_list for p in children(pid)]
    cpu0, cmd0 = cpu_s(pids), h.redis_commands()
    t0 = time.thread_time()
    per_poll = produce()
    producer = time.thread_time() - t0
    polls = 0

    def finished() -> bool:
        nonlocal polls
        polls += 1
        return done()

    h.wait_until(finished, 300, 0.2, "cost jobs")
    cpu1, cmd1 = cpu_s(pids), h.redis_commands()
    return cpu1 - cpu0, producer, cmd1 - cmd0 - 1 - polls * per_poll


def run(h: Harness) -> list[Row]:
    n, n_naive = h.size("cost.jobs", 200, 1000), h.size("cost.naive_jobs", 24, 200)
    note = f"falq {n} jobs (1 worker), naive {n_naive} jobs" + (" (quick: scaled down)" if h.quick else "")

    h.reset()
    pids = h.start_falq_workers(1, 100)

    def produce_falq() -> int:
        h.enqueue(n, "cost")
        return len(STATES)  # one poll: a pipeline of ZCARDs

    def produce_naive() -> int:
        ref.naive_enqueue(h, n_naive, tag="cost")
        return 1  # one poll: a GET

    w, p, c = _measure(h, pids, produce_falq, lambda: h.completed() >= n)

    h.reset()
    pid = ref.start_naive(h, 4)
    nw, np_, nc = _measure(h, [pid], produce_naive, lambda: ref.naive_done(h) >= n_naive)

    h.reset()
    noop = ref.noop_drain(h, n * 3, 1, 100)

    h.reset()
    script = ref.fal_client_run(h, n, 100)
    return [
        Row(NAME, "worker CPU per job", "ms", w * 1000 / n, nw * 1000 / n_naive, REF_NAIVE, None, note),
        Row(NAME, "worker CPU per job", "ms", w * 1000 / n, noop["cpu_ms_per_job"], REF_NOOP, None,
            "no-op: 1 gevent worker, drain of a backlog"),
        Row(NAME, "worker CPU per job", "ms", w * 1000 / n, script["cpu_s"] * 1000 / n, REF_FAL_CLIENT, None,
            f"fal-client script: {n} jobs, 100 at a time, its process's CPU (no durable state, no S3)"),
        Row(NAME, "producer CPU per job", "ms", p * 1000 / n, np_ * 1000 / n_naive, REF_NAIVE, None,
            "reference: send_task loop"),
        Row(NAME, "Redis commands per job", "cmds", c / n, nc / n_naive, REF_NAIVE),
        Row(NAME, "Redis commands per job", "cmds", c / n, noop["redis_cmds_per_job"], REF_NOOP),
    ]
