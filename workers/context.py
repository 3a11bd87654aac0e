"""The clients one worker process shares between all the jobs it runs."""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING

import httpx

from falq.shared.egress import make_client
from falq.shared.fal.client import FalClient
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.redisconn import redis_client
from falq.shared.settings import Settings
from falq.shared.spend.pricing import Pricing
from falq.shared.storage.s3 import Storage
from falq.workers.lease import LeaseKeeper
from falq.workers.limits.admission import Admission, Unlimited
from falq.workers.media.download import make_media_client

if TYPE_CHECKING:
    from falq.workers.maintenance.reach import Reach
    from falq.workers.steps.fal_push import FalHookWaiter
from falq.workers.middleware import Middleware

log = logging.getLogger("falq.worker")


class WorkerContext:
    """Redis, the job store, leases, fal, S3 and admission for one worker process.

    Parameters:
        settings: falq settings.
        admission: the submit gate (global limits); unlimited by default.
    """

    def __init__(self, settings: Settings, admission: Admission | None = None) -> None:
        self.settings = settings
        self.redis = redis_client(settings.redis_url, max_connections=settings.worker_concurrency + 64,
                                  settings=settings)
        self.store = JobStore(self.redis, prefix=settings.key_prefix, ttl_s=settings.record_ttl_s,
                              archive=settings.catalogue)
        self.leases = LeaseKeeper(self.redis, prefix=settings.key_prefix, ttl_s=settings.lease_ttl_s)
        self.admission = admission or Unlimited()
        self.middleware: list[Middleware] = []
        self.shutting_down = threading.Event()
        #: This host's view of fal and S3 (workers.reach), started with the worker; None in-process.
        self.reach: Reach | None = None
        self._bucket_ready = False

    @cached_property
    def fal(self) -> FalClient:
        return FalClient(self.settings, max_connections=max(100, self.settings.worker_concurrency * 2))

    @cached_property
    def media_http(self) -> httpx.Client:
        # Separate from the fal client: never follows redirects by itself, connects only to
        # the addresses it checked (no environment proxy), bounds headers and body in total
        # (see workers.download), and has its own, longer read timeout for big images.
        return make_media_client(self.settings)

    @cached_property
    def callback_http(self) -> httpx.Client:
        # Per-job callbacks (falq.shared.egress): no redirects, no environment proxy (the
        # sender connects to the address it checked itself).
        return make_client(timeout=10.0, max_connections=max(100, self.settings.worker_concurrency))

    @cached_property
    def falhooks(self) -> FalHookWaiter:
        from falq.workers.steps.fal_push import FalHookWaiter

        return FalHookWaiter(self.redis, prefix=self.settings.key_prefix)

    @cached_property
    def pricing(self) -> Pricing:
        """The account's unit prices, shared through Redis (:mod:`falq.shared.spend.pricing`)."""
        return Pricing(self.redis, self.settings)

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings)

    def ensure_bucket(self) -> None:
        if not self._bucket_ready:
            self.storage.ensure_bucket()
            self._bucket_ready = True

    def notify_finished(self, rec: JobRecord) -> None:
        """Hook run once a job reached a terminal state (callbacks attach here).

        The save of the terminal state already put a job with a ``callback_url`` in the
        outbox (:mod:`falq.shared.callbacks.outbox`); this only wakes the delivery loop to send it now.
        """
        from falq.workers.callbacks.sender import wake

        if rec.callback_url:
            wake()
