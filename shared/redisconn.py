"""The one way falq connects to Redis (job records, leases, limits): a client that rides out
a Redis restart instead of failing the step, shared by workers, producers and the gateway.

Example::

    r = redis_client("redis://127.0.0.1:6379/0")
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def redis_client(url: str, *, max_connections: int = 64) -> redis.Redis:
    """A Redis client that rides out a Redis restart instead of failing the step.

    A blocking pool: when every connection is busy, a caller waits for one (up to 30 s)
    instead of failing -- redis-py's default pool raises at 100 connections, which a
    gevent worker with 1,000 jobs in flight would hit.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        socket_timeout=15,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    return redis.Redis(connection_pool=pool)
