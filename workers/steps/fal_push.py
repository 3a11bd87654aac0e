"""Letting fal push completions: waiting for a fal webhook instead of following a request.

With ``FALQ_FAL_WEBHOOK_URL`` set (the public URL of the gateway's ``/_falq/fal-webhook``),
workers submit with ``?fal_webhook=`` and, for ``FALQ_FAL_WEBHOOK_WAIT_S`` after submit,
wait for the gateway to record fal's completion under ``{p}:falhook:{request_id}``
instead of holding a status stream open. One listener per worker process subscribes to
``{p}:falhook`` and wakes the waiting job at once; a one-key read every second covers a
missed notification. Requests whose webhook did not arrive in time are followed as usual.

Example::

    waiter = FalHookWaiter(redis_client, prefix="falq")
    doc = waiter.wait(request_id, timeout=1.0)   # {"status": "OK", ...} or None
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import redis

from falq.shared.keys import Keys
from falq.workers.loops import forever

log = logging.getLogger("falq.falhooks")


class FalHookWaiter:
    """Waits for fal webhook completions recorded by the gateway.

    Parameters:
        client: Redis connection.
        prefix: falq key prefix.
    """

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self.r = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None

    def key(self, request_id: str) -> str:
        return self.keys.falhook(request_id)

    def get(self, request_id: str) -> dict[str, Any] | None:
        raw = self.r.get(self.key(request_id))
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and doc.get("status") in ("OK", "ERROR") else None

    def wait(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        """The recorded completion of ``request_id``, waiting up to ``timeout`` seconds for it."""
        doc = self.get(request_id)
        if doc is not None:
            return doc
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            self._events[request_id] = event
        try:
            event.wait(timeout)
        finally:
            with self._lock:
                self._events.pop(request_id, None)
        return self.get(request_id)

    def _ensure_listener(self) -> None:
        if self._listener is None or not self._listener.is_alive():
            # Redis restarting: the listener subscribes again a second later; the per-second
            # reads of the recorded completion cover the gap.
            self._listener = forever("falq-falhooks", self._listen, logger=log, what="fal webhook listener")

    def _listen(self, _stop: threading.Event) -> None:
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.falhook_channel)
        for message in pubsub.listen():
            request_id = message.get("data")
            if isinstance(request_id, bytes):
                with self._lock:
                    event = self._events.get(request_id.decode(errors="replace"))
                if event is not None:
                    event.set()
