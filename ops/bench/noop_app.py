"""Reference 1, Celery's own ceiling: a no-op task on falq's Celery settings and broker.

The app is :func:`falq.shared.engine.celery_app.make_app` (every broker and worker setting falq uses) with
one task that only counts itself (an ``INCR``, so completions are visible without a
result backend). The harness runs it as ``celery -A ops.bench.noop_app worker -P gevent``,
the pool falq uses, against the stack's Redis.

``python -m falq.ops.bench.noop_app N`` publishes N no-op tasks one by one (what a user's loop
of ``task.delay()`` does) and prints the seconds it took, for the enqueue scenario.
"""

from __future__ import annotations

import sys
import time

import redis
from kombu import Queue

from falq.ops.bench.model import NOOP_COUNTER as COUNTER
from falq.ops.bench.model import NOOP_QUEUE as QUEUE
from falq.shared.engine.celery_app import make_app
from falq.shared.settings import get_settings

settings = get_settings()
app = make_app(settings)
app.conf.task_queues = [Queue(QUEUE)]
app.conf.task_default_queue = QUEUE
_redis = redis.Redis.from_url(settings.redis_url)


@app.task(name="bench.noop", ignore_result=True)
def noop(i: int = 0) -> None:
    """Do nothing but count the completion."""
    _redis.incr(COUNTER)


def publish(n: int) -> float:
    """Publish ``n`` no-op tasks through one producer; returns the seconds taken."""
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(n):
            noop.apply_async((i,), producer=producer)
    return time.perf_counter() - t0


if __name__ == "__main__":
    print(f"{publish(int(sys.argv[1])):.6f}")
