"""Bringing back the messages of workers that died (Redis broker only).

Celery's gevent pool never runs kombu's unacked sweep (``QoS.restore_visible``), so falq runs it
itself, in one greenlet per worker process; kombu's own mutex serialises the sweeps of all
workers. See docs/internals/recovery.md.
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
