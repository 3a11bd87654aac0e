"""Benchmark of the global rate limit: 4 worker processes share one fal key's limit.

Starts a DevStack (real Redis, moto S3, the fal emulator), sets the shared rate, enqueues a
backlog of bulk jobs and lets 4 workers drain it. Reads every submission's arrival time
from the emulator's log and prints the highest count in any one-second window and the mean
rate between the first and last submission.

Run::

    .venv/bin/python -m falq.ops.bench_limiter --rate 20 --jobs 600 --workers 4
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from falq.ops.stack import DevStack


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """Largest number of events in any half-open window ``[t_i, t_i + width)``."""
    ts = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while j < len(ts) and ts[j] < t + width:
            j += 1
        best = max(best, j - i)
    return best


def mean_rate(times: list[float]) -> float:
    """Submissions per second between the first and the last one."""
    ts = sorted(times)
    return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0


def wait_ready(falq: Any, workers: int, timeout: float = 60.0) -> None:
    """Wait until ``workers`` worker processes answer a Celery ping (started and consuming)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(falq.app.control.ping(timeout=1.0) or []) >= workers:
            return
    raise RuntimeError(f"{workers} workers did not start within {timeout:.0f}s")


def run(rate: float, jobs: int, workers: int, concurrency: int, max_outstanding: int) -> dict[str, Any]:
    from falq.producers.client import TEXT_TO_IMAGE, Falq, JobRequest
    from falq.shared.limits import write_config

    emulator = {"latency": "fixed:0.05", "concurrency": 0, "tiny_images": True, "log_steps": 0}
    with DevStack(emulator=emulator) as stack:
        falq = Falq(stack.settings())
        write_config(falq.redis, falq.settings.key_prefix,
                     {"rate": repr(rate), "burst": "1", "max_outstanding": str(max_outstanding)})
        for _ in range(workers):
            stack.start_worker(concurrency=concurrency, env={"FALQ_SLOT_LEASE_S": "5"})
        wait_ready(falq, workers)
        reqs = [JobRequest(TEXT_TO_IMAGE["standard"], {"prompt": f"bench {i}", "seed": i}, "bulk")
                for i in range(jobs)]
        t0 = time.monotonic()
        ids = [job_id for job_id, _ in falq.submit_many(reqs)]
        while True:
            counts = falq.store.counts()
            if counts["completed"] + counts["failed"] >= jobs or time.monotonic() - t0 > 30 + 3 * jobs / rate:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        times = [r["submitted_at"] for r in stack.emu.requests()["requests"]]
        recs = [r for r in falq.store.get_many(ids) if r is not None]
        return {
            "rate": rate, "jobs": jobs, "workers": workers, "submissions": len(times),
            "completed": sum(1 for r in recs if r.state == "completed"),
            "max_in_any_1s_window": max_in_window(times), "mean_rate": mean_rate(times),
            "mean_share_of_rate": mean_rate(times) / rate, "elapsed_s": elapsed,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m falq.ops.bench_limiter", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--jobs", type=int, default=600)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--max-outstanding", type=int, default=0, help="0: no cap (measure the rate alone)")
    a = p.parse_args(argv)
    res = run(a.rate, a.jobs, a.workers, a.concurrency, a.max_outstanding)
    for k, v in res.items():
        print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    ok = res["max_in_any_1s_window"] <= a.rate and res["mean_share_of_rate"] >= 0.95
    print("PASS" if ok else "FAIL", "(max window <= rate, mean >= 95% of rate)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
