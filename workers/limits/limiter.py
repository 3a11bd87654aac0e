"""The worker side of the global limits: admission, slot renewal, and the locked-account pause.

:class:`LimitsAdmission` plugs :class:`falq.shared.limits.store.Limiter` into the runner's
:class:`~falq.workers.limits.admission.Admission` seam:

* ``admit`` asks the limiter. Admitted: sleep until the reserved token's time (at most a
  few hundred ms) and go. Refused: return how long to wait. A rate or slot wait is the
  limiter's hint plus jitter spread over the number of waiters, so waiting jobs neither
  spin on Redis nor burn an attempt; the runner waits in place or re-publishes with a
  countdown, never holding a broker message past the visibility timeout. Budget and
  locked-account waits set ``rec.paused`` and poll every ``FALQ_PAUSE_POLL_S`` (jittered).
  A job whose *tenant* is over its own daily budget is parked instead: it shows
  ``paused: budget``, goes back to its tenant's ready set (:meth:`FairShare.park`) and the step
  ends, so it holds no dispatch room while the other tenants go on; the dispatcher skips the
  tenant while it is marked paused (``{p}:fair:paused:{tenant}``, set by the limiter).
* ``following`` (a step starts following a request at fal, also after a redelivery)
  re-counts the job's slot unless this process already renews it, so a slot that lapsed while
  nobody followed the job is held again before the job is followed further.
* ``release`` frees the slot; the cost reserved at admission is refunded only when fal never
  accepted the request (no ``request_id``). A request fal accepted stays counted even if it
  later fails: falq cannot tell from the answer whether fal billed it, so the estimate errs
  high, never low. The release frees the job's fair-dispatch room in the same Lua step and says
  whether any tenant has a ready job; if one has, the worker dispatches the next fair pick at
  once (:func:`falq.workers.maintenance.dispatcher.room_freed`).

:class:`SlotKeeper` (one per process, like :class:`falq.workers.lease.LeaseKeeper`) renews the
slot of every job whose job lease this process holds, every third of ``FALQ_SLOT_LEASE_S``,
in pipelined Lua calls. A SIGKILLed worker stops renewing, and its slots are free again
within the slot lease.

Example::

    ctx.admission = LimitsAdmission(ctx)    # what build_admission(ctx) does
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from typing import TYPE_CHECKING

import redis

from falq.shared.errors import FalAccountLocked
from falq.shared.fairshare.scheduler import FairShare
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.jobs.records import JobRecord
from falq.shared.limits.store import Limiter, micro
from falq.shared.spend.batch_cap import PAUSED_REASON, BatchCaps
from falq.workers.limits.admission import Admission
from falq.workers.loops import every
from falq.workers.maintenance.dispatcher import fair_for, room_freed
from falq.workers.steps.step import Stop

if TYPE_CHECKING:
    from falq.workers.context import WorkerContext
    from falq.workers.lease import LeaseKeeper

log = logging.getLogger("falq.limits")


class SlotKeeper:
    """Renews the slots of the jobs this process follows.

    Parameters:
        limiter: the key's limiter.
        owner: this process' lease owner prefix (``host:pid``), see :class:`LeaseKeeper`.
        leases: the process' lease keeper, whose loop then renews the slots too (one renewal
            loop per worker); without it the slots get a loop of their own.
    """

    def __init__(self, limiter: Limiter, owner: str, leases: LeaseKeeper | None = None) -> None:
        self.limiter = limiter
        self.owner = owner
        self.leases = leases
        self._tracked: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, job_id: str) -> None:
        with self._lock:
            self._tracked.add(job_id)
        if self.leases is not None:
            self.leases.ride(self.renew_now, self.limiter.lease_ms / 3000)
        elif self._thread is None or not self._thread.is_alive():
            self._thread = every("falq-slot-keeper", self.limiter.lease_ms / 3000, self.renew_now, self._stop,
                                 logger=log, what="slot renewal")

    def holds(self, job_id: str) -> bool:
        """Whether this process renews the job's slot (admitted or re-counted here, and not
        found gone by a renewal since)."""
        with self._lock:
            return job_id in self._tracked

    def untrack(self, job_id: str) -> None:
        with self._lock:
            self._tracked.discard(job_id)

    def tracked(self) -> set[str]:
        with self._lock:
            return set(self._tracked)

    def renew_now(self) -> None:
        ids = sorted(self.tracked())
        if not ids or self._stop.is_set():
            return
        chunks = [ids[i:i + 500] for i in range(0, len(ids), 500)]
        pipe = self.limiter.r.pipeline(transaction=False)
        for chunk in chunks:
            self.limiter.renew(chunk, self.owner, pipe)
        gone = [j for chunk, res in zip(chunks, pipe.execute(), strict=True)
                for j, ok in zip(chunk, res, strict=True) if not ok]
        with self._lock:
            self._tracked.difference_update(gone)

    def stop(self) -> None:
        self._stop.set()


class LimitsAdmission(Admission):
    """Admission through the shared limits of the worker's fal key.

    Parameters:
        ctx: the worker context (Redis, settings, lease owner).
    """

    def __init__(self, ctx: WorkerContext) -> None:
        self.s = ctx.settings
        self.ctx = ctx
        self.limiter = Limiter(ctx.redis, ctx.settings)
        self.fair = FairShare(ctx.redis, ctx.settings)
        self.keeper = SlotKeeper(self.limiter, ctx.leases.owner, ctx.leases)
        self.caps = BatchCaps(ctx.redis, prefix=ctx.settings.key_prefix)
        self._budget_logged = ""
        #: job id -> (Redis ms of its send confirmation, local time the confirm was asked)
        self._sent: dict[str, tuple[int, float]] = {}
        try:
            self.limiter.register_key()
        except redis.RedisError:
            log.warning("could not register the fal key id %s for `falq limits show`", self.limiter.kid)

    def cost_micro(self, rec: JobRecord) -> int:
        """The job's estimate at the account's price (:mod:`falq.shared.spend.pricing`): num_images x unit price."""
        if rec.endpoint not in ENDPOINTS:
            return micro(rec.cost_estimate)
        n = int(rec.input.get("num_images", 1) or 1)
        return micro(self.ctx.pricing.quote(rec.endpoint).unit_price * n)

    def admit(self, rec: JobRecord) -> float | None:
        cost = self.cost_micro(rec)
        if rec.batch_id and not self.caps.reserve(rec.batch_id, rec.id, cost):
            # Its batch's spend cap: nothing of the batch is submitted past it. The job waits in
            # place and asks again; raising the cap (falq batches set-cap) lets it through. While
            # it waits it holds no dispatch room: other batches, tenants and lanes go on.
            rec.paused = PAUSED_REASON
            if fair_for(self.ctx).free(rec.id):
                room_freed(self.ctx)
            return self.s.pause_poll_s * random.uniform(0.5, 1.5)
        self._sent.pop(rec.id, None)  # only this admission's own send check may stand for the POST's
        asked = time.time()
        ans = self.limiter.acquire(rec.id, rec.endpoint, rec.lane, cost, tenant=rec.tenant)
        if ans.ok:
            if ans.sent_ms:
                self._sent[rec.id] = (ans.sent_ms, asked)  # the send check passed with the admission
            self.keeper.track(rec.id)
            if ans.delay_s > 0:
                time.sleep(ans.delay_s)  # the token is reserved for then (cheap under gevent)
            return None
        poll = self.s.pause_poll_s * random.uniform(0.5, 1.5)
        if ans.status == "budget":
            rec.paused = "budget"
            day = time.strftime("%Y-%m-%d", time.gmtime())
            if self._budget_logged != day:
                self._budget_logged = day
                log.warning("daily budget reached for today (UTC): new submissions wait, paused: budget "
                            "(raise it with `falq budget --set USD`)")
            return poll
        if ans.status == "tenant_budget":
            was, rec.paused = rec.paused, "budget"
            self._park(rec, was)
            return poll
        if ans.status == "locked":
            rec.paused = "account_locked"
            return max(0.2, min(ans.wait_s + random.uniform(0, 1), poll))
        rec.paused = None
        return max(0.05, ans.wait_s + random.uniform(0, ans.spread_s))

    def _park(self, rec: JobRecord, was: str | None) -> None:
        """The job's tenant is over its own budget: show ``paused: budget``, put the job back into
        its ready set and end the step (``Stop``: the message is acked, the ready entry is the
        job's hand-off), so it holds no room. Without fair dispatch it waits in place, as before."""
        if not self.fair.park(rec):
            return

        def paused(r: JobRecord) -> bool:
            if r.terminal or r.paused == "budget":
                return False
            r.paused = "budget"
            return True

        if was != "budget":
            self.ctx.store.update(rec.id, paused)
        room_freed(self.ctx)
        raise Stop()

    def sending(self, rec: JobRecord) -> None:
        """The last check, right before the POST: keeps every 1-second window *at fal* within
        the rate even when a starved worker sends late (see shared/lua/limiter.lua). The
        admission makes it already when it passes then (limiter.acquire): no round trip here."""
        if rec.id in self._sent:
            return
        while self.s.rate_strict:
            asked = time.time()
            wait_ms, confirmed_ms = self.limiter.confirm(rec.id)
            if wait_ms <= 0:
                self._sent[rec.id] = (confirmed_ms, asked)
                return
            time.sleep(wait_ms / 1000)

    def _answered(self, rec: JobRecord, answer_at: float) -> bool | None:
        """Log the answer of the job's POST; returns whether any tenant has a ready job (None:
        nothing was logged, nothing is known)."""
        sent = self._sent.pop(rec.id, None)
        if sent is None:
            return None
        confirmed_ms, asked = sent
        # No earlier than the POST's arrival at fal, on Redis' clock: Redis ran the
        # confirm after `asked`, and the answer was in by `answer_at` (local clock).
        return self.limiter.answered(rec.id, confirmed_ms + math.ceil(max(0.0, answer_at - asked) * 1000) + 1)

    def submitted(self, rec: JobRecord) -> None:
        # rec.submitted_at was taken right after fal's answer, before the record was saved.
        if self._answered(rec, rec.submitted_at or time.time()) is not False:
            room_freed(self.ctx)  # admitted: under a rate limit, the next job may wait for a token

    def following(self, rec: JobRecord) -> None:
        # A slot this process renews is held; counting it again would cost a round trip per job.
        # A job new to this process (a redelivery, a restart) has its slot counted again.
        if not self.keeper.holds(rec.id):
            self.limiter.hold(rec.id, rec.endpoint, rec.tenant)
        self.keeper.track(rec.id)

    def account_locked(self, rec: JobRecord, exc: FalAccountLocked) -> None:
        """Pause every submission of the key for ``FALQ_LOCKED_PAUSE_S`` (renewed by each further
        refusal); logged at ERROR once per pause, naming only the key's suffix and the job whose
        submit was refused (fal has been seen sending the lock text for a filtered prompt)."""
        message = str(exc)
        if self.limiter.pause(message, self.s.locked_pause_s):
            log.error(
                "FAL ACCOUNT LOCKED: fal refused key %s (%s) on job %s. ALL submissions for this key are paused "
                "for %.0fs (renewed while fal keeps refusing); jobs wait as `paused: account_locked`, none fail. "
                "Top up or unlock the account, then run `falq limits set --resume`. If the balance is fine, "
                "look at that job's prompt.",
                self.s.key_suffix(), message[:300], rec.id, self.s.locked_pause_s,
            )
        rec.paused = "account_locked"

    def housekeeping(self) -> None:
        """Expired waiting and slot entries go (admission counts only live ones; this frees their memory)."""
        self.limiter.state()
        self.limiter.trim_expired()

    def billed(self, rec: JobRecord) -> None:
        """fal said what the job cost: its batch's reservation becomes that amount."""
        if rec.batch_id and rec.cost_billed is not None:
            try:
                self.caps.settle(rec.batch_id, rec.id, rec.cost_billed)
            except redis.RedisError as exc:
                log.warning("could not settle the batch spend of %s (%s)", rec.id, type(exc).__name__)

    def release(self, rec: JobRecord) -> None:
        self.keeper.untrack(rec.id)
        try:
            if rec.request_id is None:  # a POST that failed has been answered too (or given up on)
                self._answered(rec, time.time())
                if rec.batch_id:
                    self.caps.refund(rec.batch_id, rec.id)
            _, ready = self.limiter.release_and_look(rec.id, refund=rec.request_id is None)
        except redis.RedisError as exc:
            log.warning("could not release the slot of %s (%s); it expires by itself", rec.id, type(exc).__name__)
            return
        if ready:
            room_freed(self.ctx)  # the slot and its dispatch room are free: the next fair pick goes now
