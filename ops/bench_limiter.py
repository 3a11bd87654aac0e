"""Benchmark of the global rate limit: 4 worker processes share one fal key's limit.

Starts a DevStack (real Redis, moto S3, the fal emulator), sets the shared rate, enqueues a
backlog of bulk jobs and lets 4 workers drain it. Reads every submission's arrival time
from the emulator's log and prints the highest count in any one-second window and the mean
rate between the first and last submission.

Run::

    .venv/bin/python -m falq.ops.bench_limiter --rate 20 --jobs 600 --workers 4
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command
from falq.testing.stack import DevStack


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
    from falq.shared.limits.store import write_config

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


@click.command(name="bench-limiter", help=(__doc__ or "").split("\n\n")[0], context_settings=HELP_OPTIONS)
@click.option("--rate", type=float, default=20.0, show_default=True, help="the shared rate (submissions per second)")
@click.option("--jobs", type=int, default=600, show_default=True, help="bulk jobs in the backlog")
@click.option("--workers", type=int, default=4, show_default=True, help="worker processes")
@click.option("--concurrency", type=int, default=200, show_default=True, help="jobs in flight per worker")
@click.option("--max-outstanding", type=int, default=0, show_default=True,
              help="0: no cap (measure the rate alone)")
def command(rate: float, jobs: int, workers: int, concurrency: int, max_outstanding: int) -> int:
    res = run(rate, jobs, workers, concurrency, max_outstanding)
    for k, v in res.items():
        print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    ok = res["max_in_any_1s_window"] <= rate and res["mean_share_of_rate"] >= 0.95
    print("PASS" if ok else "FAIL", "(max window <= rate, mean >= 95% of rate)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run :data:`command` on ``argv``; exit code 0 if the limit held, 1 if not."""
    return run_command(command, argv, prog_name="python -m falq.ops.bench_limiter")


if __name__ == "__main__":
    sys.exit(main())
