"""The three references falq is measured against, each run on the harness' stack.

1. :func:`noop_drain` -- Celery's own ceiling: no-op tasks (:mod:`falq.ops.bench.noop_app`)
   through the same Redis with falq's Celery settings and pool (gevent).
2. :func:`fal_client_run` -- the official ``fal-client`` from one asyncio process with a
   semaphore (:mod:`falq.ops.bench.falclient_script`), in its own process.
3. :func:`start_naive` / :func:`naive_enqueue` -- the naive Celery version: a prefork
   task that submits and polls (:mod:`falq.ops.bench.naive_app`).

Throughput is measured the same way for falq and every reference: the backlog is queued
first, then the consumers start, and the rate is ``(n - 1) / (last done - first done)``,
so neither the producer nor process start-up is in the figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from falq.ops.bench.harness import Harness, cpu_s
from falq.ops.bench.model import NAIVE_COUNTER, NAIVE_QUEUE, NOOP_COUNTER, NOOP_QUEUE, T2I
from falq.testing.stack import ROOT


def drain_rate(times: list[float]) -> float:
    """Completions per second between the first and the last completion."""
    ts = sorted(times)
    return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else float("nan")


def noop_drain(h: Harness, n: int, workers: int, concurrency: int) -> dict[str, float]:
    """Queue ``n`` no-op tasks, start ``workers`` gevent workers, time the drain.

    Returns ``rate`` (tasks/s), and per task the workers' CPU-ms and Redis commands
    (start-up excluded: both are read once the first task is done).
    """
    app = h.falq().app
    with app.producer_or_acquire() as producer:
        for i in range(n):
            app.send_task("bench.noop", args=(i,), queue=NOOP_QUEUE, producer=producer)
    pids = [h.start_celery("falq.ops.bench.noop_app", "gevent", concurrency, NOOP_QUEUE, events=True, wait=False)
            for _ in range(workers)]
    first = h.wait_until(lambda: int(h.redis.get(NOOP_COUNTER) or 0) > 0, 60, 0.01, "the first no-op task")
    done0, cpu0, cmd0 = int(h.redis.get(NOOP_COUNTER) or 0), cpu_s(pids), h.redis_commands()
    polls = 0

    def finished() -> bool:
        nonlocal polls
        polls += 1
        return int(h.redis.get(NOOP_COUNTER) or 0) >= n

    last = h.wait_until(finished, 120, 0.01, f"{n} no-op tasks")
    cpu1, cmd1 = cpu_s(pids), h.redis_commands()
    jobs = max(1, n - done0)
    return {"rate": (n - 1) / (last - first) if last > first else float("nan"),
            "cpu_ms_per_job": (cpu1 - cpu0) * 1000 / jobs, "redis_cmds_per_job": (cmd1 - cmd0 - polls - 1) / jobs}


def fal_client_run(h: Harness, n: int, concurrency: int, *, sequential: bool = False,
                   payload: dict[str, Any] | None = None, timeout: float = 300) -> dict[str, Any]:
    """Run :mod:`falq.ops.bench.falclient_script` for ``n`` jobs; returns its JSON plus ``rate``."""
    out = h.stack.workdir / f"fal-client-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "falq.ops.bench.falclient_script", "--url", h.stack.emu.url, "--n", str(n),
            "--concurrency", str(concurrency), "--payload", json.dumps(payload or {}), "--out", str(out)]
    subprocess.run(argv + (["--sequential"] if sequential else []), cwd=ROOT, env=h.env(), check=True,
                   timeout=timeout, stdout=subprocess.DEVNULL)
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["rate"] = drain_rate([r["done_at"] for r in doc["results"]])
    return doc


def start_naive(h: Harness, concurrency: int = 4, rate_limit: str | None = None, wait: bool = True) -> int:
    """Start the naive prefork worker (``-P prefork -c concurrency``); returns its pid."""
    env = {"BENCH_NAIVE_RATE_LIMIT": rate_limit} if rate_limit else None
    return h.start_celery("falq.ops.bench.naive_app", "prefork", concurrency, NAIVE_QUEUE, env=env, wait=wait)


def naive_enqueue(h: Harness, n: int, payload: dict[str, Any] | None = None, poll_s: float = 0.5,
                  tag: str = "naive") -> None:
    """Queue ``n`` naive jobs (submit + poll every ``poll_s`` + fetch)."""
    app = h.falq().app
    with app.producer_or_acquire() as producer:
        for i in range(n):
            body = {**(payload or {}), "prompt": f"{tag} {i}", "seed": i}
            app.send_task("bench.naive", args=(T2I, body, poll_s), queue=NAIVE_QUEUE, producer=producer)


def naive_done(h: Harness) -> int:
    """How many naive jobs have finished."""
    return int(h.redis.get(NAIVE_COUNTER) or 0)
