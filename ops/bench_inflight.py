"""Benchmark: how many jobs one worker process keeps waiting on fal at once, and its memory.

    python -m falq.ops.bench_inflight [--jobs 2000] [--latency 20]

Starts the local stack with the emulator answering every request after ``--latency``
seconds (no concurrency cap), one ``falq worker`` process with ``--jobs`` greenlets, and
enqueues ``--jobs`` jobs. It samples the emulator's requests in progress and the worker's
resident memory (``/proc/PID/status``) every half second, and prints the peak of both.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m falq.ops.bench_inflight", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=20.0)
    args = parser.parse_args(argv)

    from falq.ops.stack import DevStack
    from falq.producers import Falq
    from falq.producers.client import JobRequest

    emulator = {"latency": f"fixed:{args.latency}", "concurrency": 0, "tiny_images": True, "stream_interval_s": 5}
    with DevStack(emulator=emulator) as stack:
        worker = stack.start_worker(concurrency=args.jobs)
        falq = Falq(stack.settings())
        time.sleep(3)
        idle_rss = rss_mb(worker.pid)
        reqs = [JobRequest("fal-ai/qwen-image-2/text-to-image", {"prompt": f"in flight {i}", "seed": i},
                           lane="bulk") for i in range(args.jobs)]
        t0 = time.monotonic()
        falq.submit_many(reqs)
        peak_flight, peak_rss = 0, idle_rss
        deadline = t0 + args.latency * 4 + 120
        while time.monotonic() < deadline:
            snap = stack.emu.requests(since=time.time() + 3600)  # counters only, no request list
            peak_flight = max(peak_flight, int(snap["in_flight"]["overall"]))
            peak_rss = max(peak_rss, rss_mb(worker.pid))
            if falq.store.counts()["completed"] >= args.jobs:
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        done = falq.store.counts()["completed"]
        emu_peak = stack.emu.requests(since=time.time() + 3600)["peak_in_flight"]["overall"]
        print(f"jobs {args.jobs}, emulator latency {args.latency:.0f}s, 1 worker process (gevent, -c {args.jobs})")
        print(f"  peak jobs in flight at fal (emulator's count) : {max(peak_flight, emu_peak)}")
        print(f"  worker RSS idle / peak                        : {idle_rss:.0f} MB / {peak_rss:.0f} MB")
        print(f"  completed {done}/{args.jobs} in {took:.1f}s; states {falq.store.counts()}")
        return 0 if done == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
