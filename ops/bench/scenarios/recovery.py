"""Recovery: how long the jobs a SIGKILLed worker held sit still before another worker resumes them.

One worker holds jobs at fal (emulator latency 10 s; quick: 6 s) and is SIGKILLed; a new worker
starts at once. Per job that was not finished at the kill, the delay is from the kill to the
first new write to its record (a new delivery working on it). falq takes a job over once its
lease expires (``FALQ_LEASE_TTL_S``, 20 s) through the holders sweep (``workers/maintenance/reaper.py``).
The reference is the same falq with the takeover off (``FALQ_TAKEOVER=false``), which is
Celery's own behaviour with falq's settings: the dead worker's unacked messages come back
after the visibility timeout. Both runs use a 60 s visibility timeout (quick: 30 s; the default
is 600 s, which would make the reference ten minutes long; falq's figure does not depend on it).
"""

from __future__ import annotations

import time

from falq.ops.bench.harness import Harness
from falq.ops.bench.model import Goal, Row, percentile

NAME = "recovery"
REF_CELERY = "celery redelivery"


def _kill_and_measure(h: Harness, n: int, latency: float, env: dict[str, str], timeout: float) -> list[float]:
    h.reset(latency=f"fixed:{latency:g}", concurrency=40)
    falq = h.falq()
    ids = h.enqueue(n, "recovery", lane="interactive")
    h.start_falq_workers(1, 200, env=env)
    h.wait_until(lambda: sum(1 for r in falq.store.get_many(ids) if r and r.state in ("in_queue", "in_progress"))
                 >= n // 2, 60, 0.2, "jobs held at fal")
    before = {r.id: r.updated_at for r in falq.store.get_many(ids) if r is not None and not r.terminal}
    h.stop_all()  # SIGKILL (process group)
    killed = time.time()
    h.start_falq_workers(1, 200, env=env, wait=False)
    delays: dict[str, float] = {}
    end = time.monotonic() + timeout
    while len(delays) < len(before) and time.monotonic() < end:
        for rec in falq.store.get_many(list(before)):
            if rec is not None and rec.id not in delays and rec.updated_at > max(before[rec.id], killed):
                delays[rec.id] = rec.updated_at - killed
        time.sleep(0.2)
    return [delays.get(j, float("inf")) for j in before]


def run(h: Harness) -> list[Row]:
    n, latency, visibility = (30, 6.0, 30) if h.quick else (60, 10.0, 60)
    env = {"FALQ_VISIBILITY_TIMEOUT_S": str(visibility), "FALQ_LEASE_TTL_S": "20"}
    falq = _kill_and_measure(h, n, latency, env, 120)
    celery = _kill_and_measure(h, n, latency, {**env, "FALQ_TAKEOVER": "false"}, 200)
    note = f"{n} jobs, latency {latency:g}s, lease 20 s, visibility {visibility} s" + (
        " (quick: scaled down)" if h.quick else "")
    return [
        Row(NAME, "p100 recovery after SIGKILL", "s", max(falq), max(celery), REF_CELERY,
            Goal("falq", "<=", 35.0), note + f"; {len(falq)} jobs held at the kill"),
        Row(NAME, "p50 recovery after SIGKILL", "s", percentile(falq, 50), percentile(celery, 50), REF_CELERY),
    ]
