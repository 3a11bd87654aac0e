"""The Celery application and every broker/worker setting falq depends on.

Celery on Redis loses or duplicates long tasks unless it is configured with care (Celery's
"Redis caveats" documentation). Each setting below says which failure it
prevents. falq's own design carries the rest: a job's fal ``request_id`` is persisted
before anything else happens after submit, each task run is a bounded *step* that
re-publishes the job when more work remains, and a per-job lease stops two deliveries of
one job from working at once.

Producers publish through the same app (:mod:`falq.shared.engine.publish`), so both sides agree
on queues, serializer and transport; the worker adds its task (:mod:`falq.workers.app`).

Example::

    app = make_app(settings)
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

from celery import Celery
from kombu import Queue

from falq.shared.redisconn import is_sentinel_url, parse_sentinel_url
from falq.shared.settings import Settings, get_settings


def make_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app for ``settings`` (by default the process settings)."""
    s = settings or get_settings()
    broker, sentinel_options = broker_url_and_options(s)
    app = Celery("falq", broker=broker, set_as_current=True)
    transport = {
        # One visibility timeout everywhere. A message not acked within it is handed to
        # another worker, so it must exceed the longest step (a step is capped at half of
        # it, see workers.step) and the longest countdown we publish (capped likewise).
        # Recovery after a SIGKILL takes at most this long, so it is minutes, not Celery's
        # default hour.
        "visibility_timeout": s.visibility_timeout_s,
        # Fixed queue order instead of round-robin: a worker that listens on both lanes
        # always drains the interactive queue first.
        "queue_order_strategy": "priority",
        # kombu sweeps for messages whose worker died only every interval x throttle
        # seconds (100 s by default) and restores 10 per sweep. Sweep every few seconds and
        # restore a whole dead worker's worth at once, so recovery takes about the
        # visibility timeout, not many minutes.
        "unacked_restore_interval": max(1, min(10, s.visibility_timeout_s // 6)),
        "unacked_restore_throttle": 1,
        "unacked_restore_limit": max(1000, s.worker_concurrency * 2),
        # A worker killed while holding the restore mutex must not block restores for
        # kombu's default 5 minutes.
        "unacked_mutex_expire": 30,
        # The channel's Redis connections. kombu's default is 10 and its pool does not wait:
        # the 11th greenlet to ack at once gets MaxConnectionsError, which Celery takes for a
        # lost broker connection, cancelling every running step of the worker (their jobs
        # wait for the visibility timeout). Each running step acks or publishes over at most
        # one connection at a time, so the worker's concurrency plus the consumer's own
        # (BRPOP, the restore sweep, heartbeats) can never run out: the size of falq's own
        # pool (falq.workers.context). Connections open only when used at once.
        "max_connections": s.worker_concurrency + 64,
        # Sentinel: which master to ask the sentinels for (and their own credentials).
        **sentinel_options,
    }
    app.conf.update(
        broker_transport_options=transport,
        # Same value for the result backend's transport, per Celery's Redis caveats; falq
        # keeps no Celery results (job records live in Redis under falq's own keys).
        result_backend_transport_options=transport,
        task_ignore_result=True,
        # Ack after the step ran, not before: a worker that dies mid-step leaves the
        # message unacked and it is redelivered.
        task_acks_late=True,
        # With acks_late Celery still acks a message whose worker process died (to avoid
        # poison loops). We want it redelivered; loops are bounded by job attempts.
        task_reject_on_worker_lost=True,
        # An unexpected exception is handled inside the task (re-published with backoff),
        # so a failed step must never be acked-and-forgotten by Celery itself.
        task_acks_on_failure_or_timeout=False,
        # Fetch one message per free slot: the first worker to start must not hoard the
        # backlog that other hosts could run.
        worker_prefetch_multiplier=1,
        # If the broker connection drops, the unacked messages come back to the queue;
        # cancel our copies instead of running both in parallel.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Soft shutdown: on SIGTERM, running steps get this long to notice (they check a
        # shutdown flag, re-publish their job and return) before the cold shutdown.
        worker_soft_shutdown_timeout=min(30.0, s.lease_ttl_s * 1.5),
        worker_enable_soft_shutdown_on_idle=True,
        # Countdown (ETA) messages are held unacked in worker memory; bound them.
        worker_eta_task_limit=max(1000, s.worker_concurrency * 2),
        # Events for Flower: task-sent as well, so queued jobs are visible before pickup.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        # JSON only: a foreign pickle on the queue must never execute.
        task_serializer="json",
        accept_content=["json"],
        # Keep retrying the broker at startup instead of crashing a worker host.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_default_queue=s.queue_interactive,
        task_queues=[Queue(s.queue_interactive), Queue(s.queue_bulk)],
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_heartbeat=30,
    )
    scheme = broker.split("://", 1)[0]
    if scheme == "sentinel":
        # kombu's Sentinel transport, hardened the same way (falq.shared.engine.broker).
        from falq.shared.engine.broker import SENTINEL_TRANSPORT

        app.conf.broker_transport = SENTINEL_TRANSPORT
    elif scheme in ("redis", "rediss"):
        # kombu's Redis transport ends the worker on a queue item it cannot decode (random
        # bytes, JSON that is not an envelope); this one logs and drops it.
        from falq.shared.engine.broker import TRANSPORT

        app.conf.broker_transport = TRANSPORT
        if scheme == "rediss":
            # kombu switches TLS on by itself only for the transport *named* "rediss", which
            # the line above replaces. Turn it on here, verifying the server's certificate as
            # redis-py does for job records; ssl_* parameters in the URL take precedence.
            app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return app


def broker_url_and_options(s: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL for kombu and the Sentinel transport options it needs, if any.

    A ``redis+sentinel://`` URL (what ``FALQ_BROKER_URL`` follows by default) becomes kombu's
    ``sentinel://[:pw@]h1:26379/db;sentinel://[:pw@]h2:26379/db`` with ``master_name``; a
    kombu ``sentinel://`` URL takes its master from ``FALQ_REDIS_SENTINEL_MASTER`` (or from
    a ``redis+sentinel://`` ``FALQ_REDIS_URL``). Other URLs pass unchanged.
    """
    url = s.broker
    if is_sentinel_url(url):
        u = parse_sentinel_url(url)
        if u.tls:
            raise ValueError("a TLS Sentinel broker is not supported; use a sentinel:// broker URL with broker_use_ssl")
        creds = ""
        if u.password is not None:
            creds = f"{quote(u.username or '', safe='')}:{quote(u.password, safe='')}@"
        elif u.username:
            creds = f"{quote(u.username, safe='')}@"
        url = ";".join(f"sentinel://{creds}{_netloc(h, p)}/{u.db}" for h, p in u.sentinels)
        return url, _sentinel_options(s.redis_sentinel_master or u.service, u.sentinel_password, u.sentinel_username)
    if url.split("://", 1)[0] == "sentinel":
        master = s.redis_sentinel_master
        if not master and is_sentinel_url(s.redis_url):
            master = parse_sentinel_url(s.redis_url).service
        if not master:
            raise ValueError("a sentinel:// broker needs FALQ_REDIS_SENTINEL_MASTER (the monitored master's name)")
        return url, _sentinel_options(master, None, None)
    return url, {}


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sentinel_options(master: str, password: str | None, username: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {"master_name": master}
    if password is not None:
        options["sentinel_kwargs"] = {"password": password, **({"username": username} if username else {})}
    return options
