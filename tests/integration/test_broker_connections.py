"""The broker channel's Redis connections: enough for every step of a worker to ack at once.

kombu's Redis channel keeps a pool of 10 connections by default, and its pool does not
wait: one more user at once gets ``MaxConnectionsError``, which Celery takes for a lost
broker connection (it cancels every running step of the worker). A gevent worker runs up to
``FALQ_WORKER_CONCURRENCY`` steps, and each acks over a connection of this pool when it ends,
so a burst of steps ending together must fit.
"""

from __future__ import annotations

import threading

import pytest
import redis

from falq.shared.engine.celery_app import make_app
from falq.shared.settings import Settings

pytestmark = pytest.mark.timeout(60)


def _burst(url: str, users: int, **options: object) -> list[BaseException]:
    """``users`` threads each hold one of the broker channel's connections at the same time
    (a 0.3 s BLPOP on an empty list, where an ack's pipeline is much shorter); returns what
    they raised."""
    app = make_app(Settings(fal_key="k", redis_url=url, worker_concurrency=users))
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, **options}
    errors: list[BaseException] = []
    start = threading.Barrier(users)
    with app.connection_for_read() as conn:
        channel = conn.default_channel

        def use() -> None:
            start.wait()
            try:
                with channel.conn_or_acquire() as client:
                    client.blpop(["falq-test-nothing"], timeout=0.3)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=use) for _ in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return errors


def test_every_step_of_a_worker_can_ack_at_once(redis_server: str) -> None:
    assert _burst(redis_server, 40) == []


def test_kombus_own_pool_size_would_not_do(redis_server: str) -> None:
    """The same burst on kombu's default of 10 connections fails: the setting is what holds."""
    errors = _burst(redis_server, 40, max_connections=10)
    assert errors and all(isinstance(e, redis.exceptions.MaxConnectionsError) for e in errors)


def test_the_pool_follows_the_worker_concurrency() -> None:
    app = make_app(Settings(fal_key="k", worker_concurrency=1000))
    assert app.conf.broker_transport_options["max_connections"] >= 1000
