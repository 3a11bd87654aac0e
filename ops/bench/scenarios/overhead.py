"""Overhead: what falq's durable state and S3 copy cost when fal answers at once.

Emulator latency 0, no concurrency cap, 1 KB images (``tiny_images``), limits out of the
way. The same backlog is drained by falq (2 gevent workers), by Celery no-op tasks on the
same settings and pool (reference 1), and by the fal-client asyncio script (reference 2).
Then one job at a time measures latency: falq's producer submit to the image in S3,
beside fal-client's submit to result in hand.
"""

from __future__ import annotations

import os
from itertools import pairwise

from falq.ops.bench import references as ref
from falq.ops.bench.harness import Harness
from falq.ops.bench.model import REF_FAL_CLIENT, REF_NOOP, Goal, Row, percentile

NAME = "overhead"


def _cpu_ticks() -> tuple[int, int]:
    """``(all, idle)`` jiffies of the whole machine since boot (/proc/stat's first line)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]  # idle + iowait
PHASES = ("queued", "submitting", "in_queue", "in_progress", "mirroring", "completed")
WORKERS, CONCURRENCY = 2, 100


def run(h: Harness) -> list[Row]:
    n, k = h.size("overhead.jobs", 300, 2000), h.size("overhead.sequential", 10, 40)
    note = f"{n} jobs, 2 workers x {CONCURRENCY}" + (" (quick: scaled down)" if h.quick else "")

    h.reset()
    noop = ref.noop_drain(h, n * 2, WORKERS, CONCURRENCY)

    h.reset()
    script = ref.fal_client_run(h, n, WORKERS * CONCURRENCY)
    seq = ref.fal_client_run(h, k, 1, sequential=True)
    script_lat = [r["done_at"] - r["started"] for r in seq["results"]]

    h.reset()
    falq = h.falq()
    ids = h.enqueue(n, "overhead")
    h.start_falq_workers(WORKERS, CONCURRENCY, wait=False)
    h.wait_until(lambda: h.completed() >= n // 10, 120, 0.02, "the first falq jobs")
    all0, idle0 = _cpu_ticks()
    h.wait_until(lambda: h.completed() >= n * 9 // 10, 120 + n / 10, 0.02, f"{n} falq jobs")
    all1, idle1 = _cpu_ticks()
    h.wait_until(lambda: h.completed() >= n, 120 + n / 10, 0.1, f"{n} falq jobs")
    cores = os.cpu_count() or 1
    busy = (1 - (idle1 - idle0) / max(1, all1 - all0)) * cores
    recs = [r for r in falq.store.get_many(ids) if r is not None]
    rate = ref.drain_rate([r.timestamps["completed"] for r in recs])
    lat = []
    phases: dict[str, list[float]] = {}
    for i in range(k):
        rec = falq.generate(f"latency {i}", seed=i).wait(60, poll_s=0.01)
        lat.append(rec.timestamps["completed"] - rec.timestamps["queued"])
        seen = [s for s in PHASES if s in rec.timestamps]
        for a, b in pairwise(seen):
            phases.setdefault(f"{a}->{b}", []).append(rec.timestamps[b] - rec.timestamps[a])
    # Where one job's time goes (the record's state timestamps): the reference makes no S3 copy.
    split = ", ".join(f"{name} {percentile(v, 50) * 1000:.1f}" for name, v in
                      sorted(phases.items(), key=lambda kv: PHASES.index(kv[0].split("->")[0])) if len(v) * 2 > k)
    return [
        Row(NAME, "jobs/s vs Celery no-op", "jobs/s", rate, noop["rate"], REF_NOOP, Goal("ratio", ">=", 0.3),
            note + f"; no-op: {n * 2} tasks"),
        Row(NAME, "jobs/s vs fal-client", "jobs/s", rate, script["rate"], REF_FAL_CLIENT, Goal("ratio", ">=", 0.8),
            note),
        Row(NAME, "submit-to-S3 p50 (1 job at a time)", "ms", percentile(lat, 50) * 1000,
            percentile(script_lat, 50) * 1000, REF_FAL_CLIENT, None,
            f"{k} sequential jobs; reference: submit to result in hand, no S3; p50 ms by phase: {split}"),
        Row(NAME, "cores busy while falq drains", "cores", busy, cores, "this machine's cores", None,
            "/proc/stat from the 10th to the 90th percent of the jobs done: workers, Redis, the emulator and "
            "the S3 stand-in together; at 1.0x jobs/s is bound by the machine's CPU a job (cost)"),
    ]
