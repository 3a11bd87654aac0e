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

The test bed's own CPU is reported too, as it shares the machine's cores with what is
measured: the emulator and the S3 stand-in (threads of this process: the process's CPU less
the producing thread's) and the Redis server (``INFO cpu``), per job, for falq and for the
fal-client script. Their sum with the worker's is the machine's CPU a job, which bounds jobs/s
wherever the cores are saturated (the ``overhead`` scenario).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from falq.ops.bench import references as ref
from falq.ops.bench.harness import Harness, children, cpu_s
from falq.ops.bench.model import REF_FAL_CLIENT, REF_NAIVE, REF_NOOP, Row
from falq.shared.jobs.records import STATES

NAME = "cost"


@dataclass(frozen=True)
class Bed:
    """CPU seconds of the test bed over a run: the emulator and S3 stand-in threads, Redis."""

    servers: float
    redis: float


def _bed_now(h: Harness) -> tuple[float, float, float]:
    info = h.redis.info("cpu")
    return cpu_s([os.getpid()]), time.thread_time(), float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _bed_since(h: Harness, start: tuple[float, float, float]) -> Bed:
    proc, thread, redis_cpu = _bed_now(h)
    return Bed(servers=max(0.0, (proc - start[0]) - (thread - start[1])), redis=redis_cpu - start[2])


def _measure(h: Harness, pid_list: list[int], produce: Callable[[], int],
             done: Callable[[], bool]) -> tuple[float, float, float, Bed]:
    """``(worker CPU s, producer CPU s, Redis commands, test bed)`` around producing and draining.

    ``produce`` enqueues the jobs and returns how many Redis commands one ``done()`` poll
    costs, so the harness' own polling is taken out of the count.
    """
    time.sleep(1.0)
    pids = [p for pid in pid_list for p in children(pid)]
    cpu0, cmd0, bed0 = cpu_s(pids), h.redis_commands(), _bed_now(h)
    t0 = time.thread_time()
    per_poll = produce()
    producer = time.thread_time() - t0
    polls = 0

    def finished() -> bool:
        nonlocal polls
        polls += 1
        return done()

    h.wait_until(finished, 300, 0.2, "cost jobs")
    cpu1, cmd1, bed = cpu_s(pids), h.redis_commands(), _bed_since(h, bed0)
    return cpu1 - cpu0, producer, cmd1 - cmd0 - 1 - polls * per_poll, bed


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

    w, p, c, bed = _measure(h, pids, produce_falq, lambda: h.completed() >= n)

    h.reset()
    pid = ref.start_naive(h, 4)
    nw, np_, nc, _ = _measure(h, [pid], produce_naive, lambda: ref.naive_done(h) >= n_naive)

    h.reset()
    noop = ref.noop_drain(h, n * 3, 1, 100)

    h.reset()
    bed0 = _bed_now(h)
    script = ref.fal_client_run(h, n, 100)
    script_bed = _bed_since(h, bed0)
    script_cpu = script["cpu_s"] * 1000 / n
    falq_machine = (w + bed.servers + bed.redis) * 1000 / n
    script_machine = script_cpu + (script_bed.servers + script_bed.redis) * 1000 / n
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
        Row(NAME, "test bed CPU per job: emulator + S3 stand-in", "ms", bed.servers * 1000 / n,
            script_bed.servers * 1000 / n, REF_FAL_CLIENT, None,
            "threads of the bench process serving fal's API, its CDN and S3: falq also PUTs each image "
            "and its job.json; the script makes no S3 copy"),
        Row(NAME, "test bed CPU per job: Redis server", "ms", bed.redis * 1000 / n, script_bed.redis * 1000 / n,
            REF_FAL_CLIENT, None, "INFO cpu; the script uses no Redis"),
        Row(NAME, "machine CPU per job (worker + test bed)", "ms", falq_machine, script_machine, REF_FAL_CLIENT,
            None, "what bounds jobs/s where the cores are saturated (overhead): the ratio's inverse is the "
                  "jobs/s ratio a saturated machine allows"),
    ]
