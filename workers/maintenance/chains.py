"""The chain loop of a worker: release (or end) the children of jobs that just ended.

Reads the end-of-job stream (:mod:`falq.shared.jobs.ended`) through the consumer group
``chains`` (an entry a dead worker read is taken over after ``FALQ_CHAIN_CLAIM_IDLE_S``), evaluates each child
(:meth:`falq.shared.batches.chains.Chains.evaluate`, idempotent) and only then acknowledges. The sweep
of children a crash left waiting (:func:`chain_sweep`, every ``FALQ_CHAIN_SWEEP_S``) is a cleanup of
the maintenance pass, under its lock. See docs/internals/job-lifecycle.md ("Waiting children and chains").

Example::

    start_chains(ctx.store, ctx.settings, app, stop=ctx.shutting_down)   # once per worker
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from celery import Celery

from falq.shared.batches.chains import GROUP, Chains
from falq.shared.fairshare.scheduler import FairShare
from falq.shared.jobs.ended import Ended, GroupReader
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.settings import Settings
from falq.workers.consumers import Consumers, Part
from falq.workers.loops import forever

log = logging.getLogger("falq.chains")
#: How long one read of the stream blocks when it is empty.
BLOCK_MS = 1000
#: Entries read (or taken over) at once.
COUNT = 100


def make_runnable(app: Celery, settings: Settings, store: JobStore, *,
                  dispatch: bool = True) -> Callable[[JobRecord], None]:
    """The hand-off of a job that just became ``queued``: THE one path producers use too
    (:meth:`falq.shared.fairshare.scheduler.FairShare.make_ready`: its tenant's ready set with fair
    dispatch, else its broker message at once). ``dispatch=False`` leaves the dispatch to the
    caller (the chain loop dispatches once per round of released children)."""
    fair = FairShare(store.r, settings)

    def runnable(rec: JobRecord) -> None:
        fair.make_ready(rec, app, dispatch=dispatch)

    return runnable


class ChainLoop:
    """One worker's reader of the end-of-job stream, for the jobs that have children.

    Parameters:
        store: the job store.
        settings: the chain settings (claim idle time, sweep interval).
        runnable: the hand-off of released children (:func:`make_runnable`).
    """

    def __init__(self, store: JobStore, settings: Settings, runnable: Callable[[JobRecord], None],
                 *, consumer: str | None = None, after_round: Callable[[], object] | None = None) -> None:
        self.store = store
        self.r = store.r
        self.s = settings
        self.keys = store.keys
        self.chains = Chains(store, settings, runnable=runnable)
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.after_round = after_round
        self.ended = GroupReader(store.r, store.keys, GROUP, self.consumer, legacy=store.keys.chain_done,
                                 count=COUNT, claim_idle_ms=int(settings.chain_claim_idle_s * 1000))
        self._last_claim = 0.0

    def tick(self, block_ms: int = BLOCK_MS) -> int:
        """Handle what is due: taken-over entries, then new entries. Returns entries handled."""
        handled = 0
        now = time.monotonic()
        if now - self._last_claim >= self.s.chain_claim_idle_s / 2:
            self._last_claim = now
            handled += self._handle(self.ended.claim_stale())
        handled += self._handle(self.ended.read(block_ms=block_ms or None))  # BLOCK 0 would wait for ever
        return handled

    def _handle(self, events: list[Ended]) -> int:
        """Evaluate the children of each ended parent -- side by side (threads are greenlets in
        a worker: the work is Redis and S3 round trips) -- then acknowledge the entries that
        were handled (and those with no children), and dispatch the released children once."""
        if not events:
            return 0
        handled: list[Ended] = [ev for ev in events if not (ev.children and ev.job_id)]
        todo = [ev for ev in events if ev.children and ev.job_id]

        def one(ev: Ended) -> None:
            try:
                outcomes = self.chains.on_parent_done(ev.job_id)
                if outcomes:
                    log.info("parent %s ended: %s", ev.job_id, _summary(outcomes))
                handled.append(ev)
            except Exception as exc:  # left unacknowledged: taken over and evaluated again
                log.warning("children of %s not handled yet (%s)", ev.job_id, type(exc).__name__)

        threads = [threading.Thread(target=one, args=(ev,), name="falq-chain", daemon=True) for ev in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if todo and self.after_round is not None:
            self.after_round()
        self.ended.ack(handled)
        return len(handled)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # Redis may be restarting; try next round
                log.warning("chain pass failed: %s", type(exc).__name__)
                stop.wait(1.0)


def _summary(outcomes: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def chain_sweep(app: Celery, store: JobStore, settings: Settings) -> Callable[[], dict[str, int]]:
    """The maintenance pass's cleanup for chains (:meth:`Chains.sweep`): children a crash left
    waiting are released or ended, then dispatched. The pass runs it on one worker at a time."""
    fair = FairShare(store.r, settings)
    chains = Chains(store, settings, runnable=make_runnable(app, settings, store, dispatch=False))

    def sweep() -> dict[str, int]:
        # Children waiting longer than a sweep interval (at most 5 s): a fresh one is the stream's.
        stats = chains.sweep(older_than_s=max(1.0, min(5.0, settings.chain_sweep_s)))
        if stats["released"] or stats["ended"] or stats["relinked"] or stats["finished"]:
            log.warning("chain sweep re-drove waiting children: %s", stats)
            if fair.enabled:
                fair.try_dispatch(app)
        return stats

    return sweep


def start_chains(store: JobStore, settings: Settings, app: Celery,
                 stop: threading.Event | None = None, *, into: Consumers | None = None) -> ChainLoop:
    """Run this worker's chain consumer of the end-of-job stream: as a part of the consumer loop ``into`` (reads
    without blocking), else in a loop of its own (a daemon thread) until ``stop`` is set."""
    fair = FairShare(store.r, settings)
    loop = ChainLoop(store, settings, make_runnable(app, settings, store, dispatch=False),
                     after_round=(lambda: fair.try_dispatch(app)) if fair.enabled else None)
    if into is not None:
        into.add(Part("chain pass", lambda: loop.tick(block_ms=0), max_backoff_s=1.0))
    else:
        forever("falq-chains", loop.run, stop, logger=log, what="chain loop")
    return loop


__all__ = ["ChainLoop", "chain_sweep", "make_runnable", "start_chains"]
