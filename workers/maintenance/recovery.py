"""Bringing back the messages of workers that died (Redis broker only).

Celery's gevent pool never runs kombu's unacked sweep (``QoS.restore_visible``), so falq runs it
itself, as a cleanup of the maintenance pass (:mod:`falq.workers.maintenance.housekeeping`,
at most once per ``unacked_restore_interval`` across the workers); kombu's own mutex serialises
sweeps too. See docs/internals/recovery.md.
"""

from __future__ import annotations

import logging

from celery import Celery

log = logging.getLogger("falq.recovery")


def needs_sweeper(app: Celery) -> bool:
    """Whether ``app``'s broker needs falq's unacked sweep (AMQP brokers requeue a dead
    consumer's messages by themselves)."""
    return str(app.conf.broker_url).startswith(("redis://", "rediss://", "unix://", "sentinel://"))


def sweep_once(app: Celery) -> None:
    """Restore every unacked message older than the visibility timeout to its queue."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        limit = channel.unacked_restore_limit or 1000
        channel.qos.restore_visible(num=limit, interval=1)

