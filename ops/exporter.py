"""``falq metrics``: a Prometheus endpoint with what Flower cannot know about falq.

Flower's ``/metrics`` counts Celery events (tasks received/succeeded, runtimes, workers
online). A falq job is many Celery tasks (one per step), and Flower knows nothing about
fal or S3, so this exporter adds falq's view. It holds no state: each scrape reads Redis
(the counters and histograms the workers' :class:`~falq.workers.metrics.MetricsMiddleware`
writes, job counts, queue lengths), so one exporter serves any number of workers.

Metrics (all prefixed ``falq_``):

=====================================  =========  ==============================================
``falq_jobs{state}``                   gauge      jobs per state (job records in Redis)
``falq_queue_depth{lane}``             gauge      messages waiting in each lane's broker queue
``falq_broker_unacked_messages``       gauge      messages delivered to workers, not yet acked
``falq_fal_outstanding``               gauge      requests outstanding at fal
``falq_fal_outstanding_cap``           gauge      the configured cap (when one is configured)
``falq_limiter_slots_in_use{key}``     gauge      the limiter's slots per fal key (when it keeps them)
``falq_jobs_finished_total``           counter    ``{state, endpoint}``: completed / failed / cancelled
``falq_transitions_total{from,to}``    counter    every saved state change
``falq_retries_total{reason}``         counter    retryable errors, by error type
``falq_failures_total{reason}``        counter    failed jobs, by their final error type
``falq_waits_total{reason}``           counter    waits (retry backoff, limiter, budget)
``falq_wait_seconds_total{reason}``    counter    seconds waited
``falq_spend_dollars_total{endpoint}`` counter    estimated $ of requests fal finished
``falq_tenant_jobs_finished_total``    counter    ``{state, tenant}`` (bounded: a tenant no longer
                                                  in the store counts as ``other``)
``falq_tenant_spend_dollars_total``    counter    ``{tenant}``: estimated $ of requests fal finished
``falq_spend_today_dollars{source}``   gauge      spend this UTC day (budget's figure or estimate)
``falq_fal_queue_wait_seconds``        histogram  ``{endpoint}`` time in fal's queue
``falq_fal_inference_seconds``         histogram  inference time reported by fal
``falq_mirror_seconds``                histogram  fal completion -> image in S3
``falq_job_duration_seconds``          histogram  enqueue -> completed
``falq_redis_up``                      gauge      1 if Redis answered this scrape
``falq_budget_daily_dollars``          gauge      the daily budget (when one is set)
``falq_fal_key_paused{key}``           gauge      1 while a fal key's submissions are paused (locked)
``falq_limiter_waiting_jobs{reason}``  gauge      jobs the limiter holds back: budget, locked, ...
``falq_archive_lag``                   gauge      finished jobs not yet copied to the SQL catalogue
``falq_tenant_spend_today_dollars``    gauge      ``{tenant}``: reserved spend this UTC day (fair share)
``falq_tenant_ready_jobs``             gauge      ``{tenant, lane}``: jobs waiting in its ready sets
``falq_tenant_dispatched_jobs``        gauge      ``{tenant}``: dispatched, not yet done at fal
``falq_tenant_fal_outstanding``        gauge      ``{tenant}``: its requests outstanding at fal
=====================================  =========  ==============================================

``falq_catalogue_outside_shared_history{host, role}`` (gauge) is 1 for each live worker or
gateway whose catalogue is not the deployment's shared history (its archiver stands aside,
:mod:`falq.shared.catalogue.registry`); no series means one history.

Counters the alert rules (``ops/prometheus/alerts.yml``) divide are exported as 0 before
their first increment (finished per state and endpoint, content-policy failures, mirror
retries): Prometheus' ``rate()`` cannot see a series' first value as an increase, so a
counter that appears at 3 would hide its first 3 events from every alert.

Authentication is on by default: ``Authorization: Bearer $FALQ_METRICS_TOKEN`` (or basic
auth with that token as the password). Without a token the exporter refuses to start
unless ``--unauthenticated`` is given. ``/healthz`` answers without auth.

Example::

    FALQ_METRICS_TOKEN=s3cret falq metrics --port 9808
    curl -H 'Authorization: Bearer s3cret' http://127.0.0.1:9808/metrics
"""

from __future__ import annotations

import base64
import hmac
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import click
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from falq.shared.catalogue.registry import CatalogueRegistry
from falq.shared.commands import HELP_OPTIONS, verbatim
from falq.shared.commands import run as run_command
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.metrics import FINISHED, HISTOGRAMS, Snapshot, read_snapshot
from falq.shared.settings import Settings

log = logging.getLogger("falq.exporter")

_HIST_NAMES = {
    "queue_wait": "falq_fal_queue_wait_seconds",
    "inference": "falq_fal_inference_seconds",
    "mirror": "falq_mirror_seconds",
    "end_to_end": "falq_job_duration_seconds",
}
_COUNTERS: dict[str, tuple[str, str, list[str]]] = {
    # kind in shared.metrics -> (metric name without _total, help, label names)
    "finished": ("falq_jobs_finished", "Jobs that reached a terminal state", ["state", "endpoint"]),
    "transition": ("falq_transitions", "Saved state changes of jobs", ["from", "to"]),
    "retry": ("falq_retries", "Retryable errors (each one is retried), by error type", ["reason"]),
    "failure": ("falq_failures", "Jobs that failed, by their final error type", ["reason"]),
    "waits": ("falq_waits", "Waits before a job could go on (retry backoff, limiter, budget)", ["reason"]),
    "wait_s": ("falq_wait_seconds", "Seconds jobs were told to wait", ["reason"]),
    "spend": ("falq_spend_dollars", "Estimated dollars of requests fal finished (billed)", ["endpoint"]),
    # The tenant label is bounded: tenants not in the store are folded into "other" (Snapshot.labelled).
    "tenant_finished": ("falq_tenant_jobs_finished_total", "Jobs that reached a final state, by tenant",
                        ["state", "tenant"]),
    "tenant_spend": ("falq_tenant_spend_dollars", "Estimated dollars of requests fal finished, by tenant",
                     ["tenant"]),
}
#: Label values exported as 0 until first counted (see the module docstring), by counter kind.
_SEEDED: dict[str, list[tuple[str, ...]]] = {
    "finished": [(state, endpoint) for state in FINISHED for endpoint in ENDPOINTS],
    "failure": [("content_policy",), ("storage",), ("mirror_rejected",)],
    "retry": [("storage_transient",), ("media_truncated",)],
}


class FalqCollector(Collector):
    """Reads falq's figures from Redis on every scrape (nothing is kept in this process).

    Parameters:
        settings: falq settings (Redis URL, key prefix, queue names).
        client: a Redis client; one is made from ``settings.redis_url`` by default.

    Example::

        registry = CollectorRegistry(auto_describe=False)
        registry.register(FalqCollector(settings))
        print(generate_latest(registry).decode())
    """

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.r = client or redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("falq_redis_up", "1 if Redis answered this scrape")
        try:
            snap = read_snapshot(self.r, self.settings)
        except redis.RedisError as exc:
            log.warning("scrape: Redis unreachable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from gauges(snap)
        yield from counters(snap)
        yield from histograms(snap)
        try:
            yield from catalogue_gauges(self.r, self.settings)
        except redis.RedisError as exc:
            log.warning("scrape: catalogue registry unreadable (%s)", type(exc).__name__)


def gauges(snap: Snapshot) -> Iterable[Metric]:
    jobs = GaugeMetricFamily("falq_jobs", "Jobs per state (job records in Redis)", labels=["state"])
    for state, n in snap.states.items():
        jobs.add_metric([state], n)
    yield jobs
    if snap.queue_depth:
        depth = GaugeMetricFamily("falq_queue_depth", "Messages waiting in each lane's broker queue",
                                  labels=["lane"])
        for lane, n in snap.queue_depth.items():
            depth.add_metric([lane], n)
        yield depth
    if snap.unacked is not None:
        yield GaugeMetricFamily("falq_broker_unacked_messages",
                                "Messages delivered to workers and not yet acked (running or countdown)",
                                value=snap.unacked)
    yield GaugeMetricFamily("falq_fal_outstanding", "Requests outstanding at fal", value=snap.outstanding)
    if snap.outstanding_cap is not None:
        yield GaugeMetricFamily("falq_fal_outstanding_cap", "Configured cap on requests outstanding at fal",
                                value=snap.outstanding_cap)
    if snap.limiter_slots:
        slots = GaugeMetricFamily("falq_limiter_slots_in_use", "The limiter's slots in use per fal key id",
                                  labels=["key"])
        for key, n in snap.limiter_slots.items():
            slots.add_metric([key], n)
        yield slots
    spend = GaugeMetricFamily("falq_spend_today_dollars", "Spend this UTC day", labels=["source"])
    spend.add_metric([snap.spend_source], snap.spend_today)
    yield spend
    if snap.budget_daily is not None:
        yield GaugeMetricFamily("falq_budget_daily_dollars", "The daily budget (USD per UTC day)",
                                value=snap.budget_daily)
    paused = GaugeMetricFamily("falq_fal_key_paused",
                               "1 while submissions for a fal key are paused (fal answered 'User is locked')",
                               labels=["key"])
    for key, flag in sorted(snap.paused_keys.items()):
        paused.add_metric([key], flag)
    yield paused
    waiting = GaugeMetricFamily("falq_limiter_waiting_jobs", "Jobs the limiter holds back, by why",
                                labels=["reason"])
    for why, n in sorted(snap.waiting.items()):
        waiting.add_metric([why], n)
    yield waiting
    yield from tenant_gauges(snap)
    yield GaugeMetricFamily("falq_archive_lag", "Finished jobs not yet copied into the SQL catalogue",
                            value=snap.archive_lag)


def catalogue_gauges(client: redis.Redis, settings: Settings) -> Iterable[Metric]:
    """Hosts whose catalogue is not the deployment's shared history (0 series: none)."""
    outside = GaugeMetricFamily(
        "falq_catalogue_outside_shared_history",
        "1 per live worker/gateway whose catalogue is not the shared history (history split across hosts)",
        labels=["host", "role"])
    for reg in CatalogueRegistry(client, prefix=settings.key_prefix).outside():
        outside.add_metric([reg.host, reg.role], 1)
    yield outside


def tenant_gauges(snap: Snapshot) -> Iterable[Metric]:
    """Fair-share figures per tenant (bounded: only tenants in the store, see Snapshot.fair)."""
    spend = GaugeMetricFamily("falq_tenant_spend_today_dollars", "Reserved spend this UTC day, by tenant",
                              labels=["tenant"])
    ready = GaugeMetricFamily("falq_tenant_ready_jobs", "Jobs waiting in the tenant's ready sets, by lane",
                              labels=["tenant", "lane"])
    dispatched = GaugeMetricFamily("falq_tenant_dispatched_jobs", "Jobs dispatched, not yet done at fal, by tenant",
                                   labels=["tenant"])
    outstanding = GaugeMetricFamily("falq_tenant_fal_outstanding", "Requests outstanding at fal, by tenant",
                                    labels=["tenant"])
    for f in snap.fair:
        spend.add_metric([f.tenant], f.spend_today_usd)
        for lane, n in f.ready.items():
            ready.add_metric([f.tenant, lane], n)
        dispatched.add_metric([f.tenant], f.dispatched)
        outstanding.add_metric([f.tenant], f.outstanding)
    yield from (spend, ready, dispatched, outstanding)


def counters(snap: Snapshot) -> Iterable[Metric]:
    for kind, (name, help_text, labels) in _COUNTERS.items():
        family = CounterMetricFamily(name, help_text, labels=labels)
        values_seen = {**dict.fromkeys(_SEEDED.get(kind, []), 0.0), **snap.labelled(kind)}
        for values, v in sorted(values_seen.items()):
            if len(values) == len(labels):
                family.add_metric(list(values), v)
        yield family


def histograms(snap: Snapshot) -> Iterable[Metric]:
    for key, help_text in HISTOGRAMS.items():
        family = HistogramMetricFamily(_HIST_NAMES[key], help_text, labels=["endpoint"])
        for endpoint, h in sorted(snap.histograms.get(key, {}).items()):
            family.add_metric([endpoint], buckets=h.cumulative(), sum_value=h.sum)
        yield family


# --- HTTP ----------------------------------------------------------------------------------------

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def authorized(header: str, token: str) -> bool:
    """``Bearer <token>``, or basic auth whose password is the token (any user name)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


def make_app(registry: CollectorRegistry, token: str | None) -> WSGIApp:
    """The WSGI app: ``/metrics`` (auth unless ``token`` is None) and ``/healthz`` (no auth)."""
    from prometheus_client import make_wsgi_app

    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if token is not None and not authorized(environ.get("HTTP_AUTHORIZATION", ""), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                 ("WWW-Authenticate", 'Basic realm="falq metrics"')])
            return [b"authentication required\n"]
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(settings: Settings, *, address: str, port: int, token: str | None) -> _Server:
    """Start serving (returns the server; call ``serve_forever``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FalqCollector(settings))
    return make_server(address, port, make_app(registry, token), server_class=_Server,  # type: ignore[return-value]
                       handler_class=_QuietHandler)


@click.command(name="metrics", help=verbatim(__doc__ or ""), short_help="Serve falq's Prometheus metrics.",
               context_settings=HELP_OPTIONS)
@click.option("--port", type=int, default=None, help="default FALQ_METRICS_PORT (9808)")
@click.option("--address", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--unauthenticated", is_flag=True,
              help="serve /metrics without authentication (only on a trusted network)")
def command(port: int | None, address: str, unauthenticated: bool) -> int:
    from falq.shared.settings import get_settings

    s = get_settings()
    token = s.metrics_token.get_secret_value() if s.metrics_token else None
    if token is None and not unauthenticated:
        print("falq metrics: refusing to start without authentication. Set FALQ_METRICS_TOKEN, "
              "or pass --unauthenticated on a trusted network.", file=sys.stderr)
        return 2
    port = port if port is not None else s.metrics_port
    server = serve(s, address=address, port=port, token=token)
    print(f"falq metrics on http://{address}:{port}/metrics "
          f"({'bearer token' if token else 'NO authentication'})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run :data:`command` (what ``falq metrics`` runs) on ``argv``; returns the exit code (2: no token configured)."""
    return run_command(command, argv, prog_name="falq metrics")
