"""Whether this worker host reaches fal and S3, and whether other hosts do: handing jobs back.

Every worker probes fal's queue host and the S3 endpoint every :data:`INTERVAL_S` (a TCP
connect) and publishes what it reaches in ``{p}:reach``. A dependency that failed every probe for
:data:`CUT_AFTER_S` is *cut*: a step that needs it stops with ``unreachable`` and re-publishes the
job, but only when another host reaches it (when nobody does, jobs wait in place). A delivery
that comes back to the cut host is handed on at most :data:`BOUNCES` times. See
docs/internals/recovery.md ("Network partitions").

Example::

    reach = Reach(redis_client, settings, owner=leases.owner).start()
    if reach.hand_back("fal"):   # cut from fal, and someone else is not
        ...
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import redis

from falq.shared.keys import Keys
from falq.shared.settings import Settings
from falq.workers.loops import every

log = logging.getLogger("falq.reach")

#: Seconds between probes.
INTERVAL_S = 2.0
#: Seconds one TCP connect may take.
PROBE_TIMEOUT_S = 2.0
#: A dependency failing every probe this long is cut.
CUT_AFTER_S = 6.0
#: How recent another host's report must be to count.
FRESH_S = 10.0
#: Times a job is handed on by this host while it stays cut (then it waits here).
BOUNCES = 2


def _address(url: str, default_port: int) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else default_port)
    return parts.hostname, port


class Reach:
    """Probes fal and S3 for one worker process and tells its steps when to hand jobs back.

    Parameters:
        client: Redis (for ``{p}:reach``).
        settings: fal's queue URL and the S3 endpoint (``s3.<region>.amazonaws.com`` when unset).
        owner: this process' lease owner (``host:pid``).
    """

    def __init__(self, client: redis.Redis, settings: Settings, *, owner: str) -> None:
        self.r = client
        self.key = Keys(settings.key_prefix).reach
        self.owner = owner
        s3 = settings.s3_endpoint_url or f"https://s3.{settings.s3_region}.amazonaws.com"
        self.targets = {dep: addr for dep, addr in (("fal", _address(settings.fal_queue_url, 443)),
                                                    ("s3", _address(s3, 443))) if addr is not None}
        self.cut: set[str] = set()
        self._failing_since: dict[str, float] = {}
        self._others: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._bounced: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # --- probing -----------------------------------------------------------------------------
    def probe_once(self) -> None:
        now = time.monotonic()
        for dep, (host, port) in self.targets.items():
            try:
                with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                    pass
                ok = True
            except OSError:
                ok = False
            with self._lock:
                if ok:
                    self._failing_since.pop(dep, None)
                    if dep in self.cut:
                        log.warning("%s is reachable again from this host", dep)
                        self.cut.discard(dep)
                        self._bounced.clear()
                else:
                    since = self._failing_since.setdefault(dep, now)
                    if now - since >= CUT_AFTER_S and dep not in self.cut:
                        log.warning("%s unreachable from this host for %.0fs: handing its jobs to other hosts",
                                    dep, now - since)
                        self.cut.add(dep)
        with self._lock:
            cut = sorted(self.cut)
        with contextlib.suppress(redis.RedisError):  # Redis out of reach: the leases tell that story
            self.r.hset(self.key, self.owner, json.dumps({"at": time.time(), "cut": cut}))

    def start(self) -> Reach:
        every("falq-reach", INTERVAL_S, self.probe_once, self._stop, logger=log, what="reach probe")
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.r.hdel(self.key, self.owner)

    # --- deciding ----------------------------------------------------------------------------
    def is_cut(self, dep: str) -> bool:
        with self._lock:
            return dep in self.cut

    def others_reach(self, dep: str) -> bool:
        """Whether another host reported, within :data:`FRESH_S`, that it reaches ``dep``."""
        stamp, docs = self._others
        if time.monotonic() - stamp > INTERVAL_S:
            try:
                raw = self.r.hgetall(self.key)
            except redis.RedisError:
                return False
            docs = {}
            stale = []
            for field, value in raw.items():
                name = field.decode() if isinstance(field, bytes) else str(field)
                try:
                    doc = json.loads(value)
                    at = float(doc["at"])
                except (ValueError, TypeError, KeyError):
                    continue
                if not isinstance(doc, dict) or not isinstance(doc.get("cut"), list):
                    continue
                if time.time() - at > 60:
                    stale.append(name)  # a host gone for a minute: forget it
                docs[name] = doc
            if stale:
                with contextlib.suppress(redis.RedisError):
                    self.r.hdel(self.key, *stale)
            self._others = (time.monotonic(), docs)
        now = time.time()
        return any(name != self.owner and now - float(doc.get("at", 0)) <= FRESH_S and dep not in doc.get("cut", [])
                   for name, doc in docs.items())

    def hand_back(self, dep: str) -> bool:
        """True when a step needing ``dep`` should give its job to another host now."""
        return self.is_cut(dep) and self.others_reach(dep)

    def bounce(self, job_id: str, dep: str) -> bool:
        """For a delivery that just arrived: hand it on unrun (True), at most :data:`BOUNCES` times."""
        if not self.hand_back(dep):
            return False
        with self._lock:
            n = self._bounced.get(job_id, 0)
            if n >= BOUNCES:
                return False
            self._bounced[job_id] = n + 1
            if len(self._bounced) > 100_000:
                self._bounced.clear()
        return True


#: The dependency a step in each state needs (mirroring's images come from fal's CDN, a
#: different host than its queue; S3 is what a host cut from it cannot do).
NEEDS = {"queued": "fal", "submitting": "fal", "in_queue": "fal", "in_progress": "fal", "mirroring": "s3"}
