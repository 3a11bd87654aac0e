"""Reference 3, the naive Celery version: a prefork task that submits, polls, fetches.

What a user writes without falq: Celery's defaults, ``-P prefork -c 4`` (one process per
core and then some), and a task that POSTs the job to fal's queue API, polls its
``status_url`` every ``poll_s`` seconds (0.5 by default) until ``COMPLETED``, then GETs
the result. No durable job state, no S3 copy, no global limits: only Celery's own
per-worker ``rate_limit`` when ``BENCH_NAIVE_RATE_LIMIT`` is set (e.g. ``20/s``), which
is what such a user reaches for. Each completion is counted with an ``INCR``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import redis
from celery import Celery

from falq.ops.bench.model import NAIVE_COUNTER as COUNTER
from falq.ops.bench.model import NAIVE_QUEUE as QUEUE

app = Celery("naive", broker=os.environ["FALQ_REDIS_URL"])
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE, worker_hijack_root_logger=False)
_clients: dict[int, tuple[httpx.Client, redis.Redis]] = {}


def _client() -> tuple[httpx.Client, redis.Redis]:
    """One HTTP client and one Redis client per pool process (created after the fork)."""
    pid = os.getpid()
    if pid not in _clients:
        http = httpx.Client(timeout=60, headers={"Authorization": f"Key {os.environ['FAL_KEY']}"})
        _clients[pid] = (http, redis.Redis.from_url(os.environ["FALQ_REDIS_URL"]))
    return _clients[pid]


@app.task(name="bench.naive", ignore_result=True, rate_limit=os.environ.get("BENCH_NAIVE_RATE_LIMIT") or None)
def naive(endpoint: str, payload: dict[str, Any], poll_s: float = 0.5) -> None:
    """Submit one request to fal, poll until it is done, fetch the result."""
    http, r = _client()
    base = os.environ["FALQ_FAL_QUEUE_URL"].rstrip("/")
    resp = http.post(f"{base}/{endpoint}", json=payload)
    resp.raise_for_status()
    sub = resp.json()
    while http.get(sub["status_url"]).json()["status"] != "COMPLETED":
        time.sleep(poll_s)
    http.get(sub["response_url"]).raise_for_status()
    r.incr(COUNTER)
