"""Bringing back the messages of workers that died (Redis broker only).

With the Redis transport an unacked message sits in kombu's ``unacked`` index until some
consumer's sweep (``QoS.restore_visible``) moves it back to its queue once it is older
than the visibility timeout. Celery's gevent pool consumes through a code path that never
runs that sweep (measured: after a SIGKILL the messages of the dead worker stayed unacked
indefinitely), so falq runs the sweep itself, in one greenlet per worker process. Redis
serialises the sweeps of all workers with kombu's own mutex.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

log = logging.getLogger("falq.recovery")


def start_sweeper(app: Celery, interval_s: float) -> threading.Thread | None:
    """Start the sweep loop for ``app``'s broker; returns None for brokers that need none."""
    if not str(app.conf.broker_url).startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        return None  # AMQP brokers requeue a dead consumer's messages by themselves
    thread = threading.Thread(target=_loop, args=(app, interval_s), name="falq-unacked-sweeper", daemon=True)
    thread.start()
    return thread


def sweep_once(app: Celery) -> None:
    """Restore every unacked message older than the visibility timeout to its queue."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        limit = channel.unacked_restore_limit or 1000
        channel.qos.restore_visible(num=limit, interval=1)


def _loop(app: Celery, interval_s: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval_s):
        try:
            sweep_once(app)
        except Exception as exc:  # the broker may be restarting; try again next round
            log.warning("unacked sweep failed: %s", type(exc).__name__)
