"""Per-job leases: at most one worker works on a job at any moment.

A delivery of a job first takes the job's lease (``SET NX PX``). One keeper per worker
process renews every lease it holds in a single pipelined Lua call every third of the
lease time, and on the same round trip learns which of its jobs a producer asked to
cancel. A worker that dies stops renewing, so its jobs become free within
``FALQ_LEASE_TTL_S`` and the redelivered message takes over.

A holder that could not renew (its lease was taken over, or Redis was out of reach for a
whole TTL, so it may have expired) counts the lease as lost at once: :meth:`still_held`
turns false and the step stops, so two workers never go on working one job.

**Fencing.** Stopping is not enough on its own: a save already on its way when the lease ran
out (a host cut off from Redis, its redis-py call retried once the link heals) would land
after the new holder's. So every save of a step carries the lease's key and token
(:meth:`falq.shared.jobs.store.JobStore.save` ``fence=``) and the save script checks, in the same
atomic step, that the lease still holds that token; a stale holder gets ``LeaseLost`` and
writes nothing (:class:`falq.workers.steps.step.Fenced`). Limiter slots are renewed only for jobs
whose lease this process holds, so a stale holder cannot keep a slot alive either.

Example::

    keeper = LeaseKeeper(redis_client, prefix="falq", ttl_s=20)
    lease = keeper.acquire(job_id)
    if lease:
        try: ...
        finally: keeper.release(lease)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from falq.shared.keys import Keys
from falq.shared.scripts import register
from falq.workers.loops import every

log = logging.getLogger("falq.lease")

@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str


class LeaseKeeper:
    """Takes, renews and releases job leases for one worker process.

    Parameters:
        client: Redis connection.
        prefix: falq key prefix.
        ttl_s: lease lifetime; a dead holder's jobs are free again after this long.
    """

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: float) -> None:
        self.r = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.ttl_ms = int(ttl_s * 1000)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._held: dict[str, str] = {}
        #: job id -> time.monotonic() of its last successful renewal (or acquisition)
        self._renewed: dict[str, float] = {}
        self._cancelled: set[str] = set()
        self._deleted: set[str] = set()
        self._lock = threading.Lock()
        self._renew = register(client, "lease.renew")
        self._acquire = register(client, "lease.acquire")
        self._release = register(client, "lease.release")
        self._claim = register(client, "lease.claim_orphan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: other renewals that ride on this keeper's loop (the limiter's slots): fn, every (s)
        self._riders: list[tuple[Callable[[], object], float]] = []

    def key(self, job_id: str) -> str:
        return self.keys.lease(job_id)

    def acquire(self, job_id: str) -> Lease | None:
        """Take the job's lease, or return None if a live worker holds it."""
        token = self._token()
        if not self._acquire(keys=[self.key(job_id), self.keys.holders],
                             args=[token, self.ttl_ms, job_id]):
            return None
        return self._taken(job_id, token)

    def acquire_queued(self, pipe: redis.client.Pipeline, job_id: str) -> str:  # type: ignore[type-arg]
        """Queue :meth:`acquire` on ``pipe`` (a step takes the lease with its first reads, in one
        round trip); :meth:`acquired` turns the reply into the lease. Returns the token asked for."""
        token = self._token()
        pipe.evalsha(self._acquire.sha, 2, self.key(job_id), self.keys.holders,
                     *self._acquire.argv([token, self.ttl_ms, job_id]))
        return token

    def acquired(self, job_id: str, token: str, reply: object) -> Lease | None:
        """The lease from an :meth:`acquire_queued` reply (a pipeline run with
        ``raise_on_error=False``). Redis without the script (a restart, a failover: EVALSHA
        answers NOSCRIPT, and a pipeline does not load it) is asked again through :meth:`acquire`."""
        if isinstance(reply, redis.exceptions.NoScriptError):
            return self.acquire(job_id)
        if isinstance(reply, Exception):
            raise reply
        return self._taken(job_id, token) if reply else None

    def retake(self, lease: Lease) -> bool:
        """Take ``lease`` again, with its own token, if nobody holds the job's lease: for a step
        that knows Redis lost its last writes (a restart, a failover), the lease with them.
        Returns whether the lease is this step's again."""
        if not self._acquire(keys=[self.key(lease.job_id), self.keys.holders],
                             args=[lease.token, self.ttl_ms, lease.job_id]):
            return False
        self._taken(lease.job_id, lease.token)
        log.warning("job %s: its lease was lost with Redis' last writes; taken again", lease.job_id)
        return True

    def _token(self) -> str:
        return f"{self.owner}:{uuid.uuid4().hex[:8]}"

    def _taken(self, job_id: str, token: str) -> Lease:
        with self._lock:
            self._held[job_id] = token
            self._renewed[job_id] = time.monotonic()
        self._ensure_running()
        return Lease(job_id, token)

    def release(self, lease: Lease, *, steady: bool = False) -> None:
        """Give the lease back. ``steady``: the step ran to its end after steps that crashed, so
        the job's streak of crashed steps (:func:`falq.workers.tasks.crashed`) ends in the same
        call (the caller read the streak with the record; none to end, no command for it)."""
        with self._lock:
            if self._held.get(lease.job_id) == lease.token:
                self._held.pop(lease.job_id, None)
                self._renewed.pop(lease.job_id, None)
            self._cancelled.discard(lease.job_id)
            self._deleted.discard(lease.job_id)
        try:
            streak = self.keys.job(lease.job_id) if steady else ""
            self._release(keys=[self.key(lease.job_id), self.keys.holders, streak],
                          args=[lease.token, lease.job_id])
        except redis.RedisError:
            log.warning("could not release lease of %s; it expires by itself", lease.job_id)

    def still_held(self, lease: Lease) -> bool:
        """False once the lease is known lost, or not renewed for a whole TTL (it may be gone)."""
        with self._lock:
            if self._held.get(lease.job_id) != lease.token:
                return False
            return time.monotonic() - self._renewed.get(lease.job_id, 0.0) < self.ttl_ms / 1000

    def cancel_seen(self, job_id: str) -> bool:
        """True once the keeper saw a cancel request for this job (no Redis call)."""
        return job_id in self._cancelled

    def deleted_seen(self, job_id: str) -> bool:
        """True once the keeper saw the job's record gone (deleted under a running job)."""
        return job_id in self._deleted

    def orphans(self, *, grace_s: float = 0.0, limit: int = 5000) -> list[str]:
        """Jobs whose holder died: a lease that ran out (``grace_s`` ago or more, on Redis'
        clock) without a release. Each is claimed (removed from ``{p}:holders``) for this
        caller alone.

        Only entries past their end are read. Entries written by an older falq scored the
        lease's start, so they look past their end until released; the ``EXISTS`` test below
        keeps them, as it keeps a lease renewed between the read and the test.
        """
        sec, usec = self.r.time()
        now = sec + usec / 1_000_000
        ids = [x.decode() for x in self.r.zrangebyscore(self.keys.holders, "-inf", now - grace_s,
                                                        start=0, num=limit)]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for j in ids:
            pipe.exists(self.key(j))
        free = [j for j, held in zip(ids, pipe.execute(), strict=True) if not held]
        return [j for j in free if self._claim(keys=[self.key(j), self.keys.holders], args=[j])]

    def holder(self, job_id: str) -> str | None:
        raw = self.r.get(self.key(job_id))
        return raw.decode() if raw else None

    # --- background renewal -------------------------------------------------------------------
    def ride(self, fn: Callable[[], object], every_s: float) -> None:
        """Also call ``fn`` from this keeper's loop, at least every ``every_s`` (one renewal loop
        per process: the loop then runs at the shortest of the cadences). Starts the loop."""
        with self._lock:
            # ``==``, not ``is``: a bound method is a new object at every attribute access.
            if all(f != fn for f, _ in self._riders):
                self._riders.append((fn, every_s))
        self._ensure_running()

    def _period(self) -> float:
        with self._lock:
            return min([self.ttl_ms / 3000, *(s for _, s in self._riders)])

    def _round(self) -> None:
        with self._lock:
            riders = list(self._riders)
        try:
            self.renew_now()
        finally:  # a rider's renewal never waits for, nor stops, the leases' (nor the other way)
            for fn, _ in riders:
                try:
                    fn()
                except Exception as exc:
                    log.warning("renewal failed: %s", type(exc).__name__)

    def _ensure_running(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            # Under gevent this is a greenlet (threading is monkey-patched): one per process.
            # Keep trying whatever fails: if Redis is back before the TTL runs out, nobody noticed.
            # Not only RedisError: a connection torn down mid-read surfaces as ValueError from
            # redis-py's socket buffer, and a keeper that died would let every lease it holds lapse.
            self._thread = every("falq-lease-keeper", self._period, self._round, self._stop, logger=log,
                                 what="lease renewal")

    def renew_now(self) -> None:
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        ids = list(held)
        asked = time.monotonic()
        pipe = self.r.pipeline(transaction=False)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            self._renew(keys=[*(self.key(j) for j in chunk), self.keys.holders],
                        args=[self.ttl_ms, *[held[j] for j in chunk], *chunk], client=pipe)
        for j in ids:
            # The record (gone: deleted) with its cancel field; and the cancel key a producer of
            # the release before wrote (read here only, until that release is gone).
            pipe.hmget(self.keys.job(j), "state", "cancel")
            pipe.exists(self.keys.cancel(j))
        results = pipe.execute()
        renewed = [bool(x) for chunk in results[:-2 * len(ids)] for x in chunk]
        flags = results[-2 * len(ids):]
        with self._lock:
            for j, ok in zip(ids, renewed, strict=True):
                if self._held.get(j) != held[j]:
                    continue  # released (or taken again) meanwhile
                if ok:
                    self._renewed[j] = asked
                else:
                    log.warning("lease of job %s was lost (another worker holds it now); stopping its step", j)
                    self._held.pop(j, None)
                    self._renewed.pop(j, None)
            for i, j in enumerate(ids):
                (state, cancel), legacy_cancel = flags[2 * i], flags[2 * i + 1]
                if cancel is not None or legacy_cancel:
                    self._cancelled.add(j)
                if state is None:
                    self._deleted.add(j)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop renewing; waits up to ``timeout_s`` for a renewal in flight to end."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
