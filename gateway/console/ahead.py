"""Thumbnails made ahead: the gateway makes a completed job's thumbnail before anyone asks.

Without this, the first gallery view of new images makes each thumbnail while the browser
waits (decode a 1-2 MB PNG, resize, encode, write to S3: about 40 ms of CPU per image on the
2-core dev machine, seconds for a page of 60). The workers are not asked to do it: their job
path stays as lean as it is. Instead each gateway process follows the completions in Redis
and makes their thumbnails in the background, so that by the time a person opens the gallery
the page answers from memory.

How, and what bounds it:

* **Source**: the state index ``{p}:state:completed`` (a zset scored by the time of the last
  save), polled twice a second with one ``ZREVRANGEBYSCORE`` from a little before the
  newest score seen (``LOOKBACK_S``: a worker whose clock lags still gets its jobs seen; ids
  already seen are skipped). It exists with the catalogue on or off, unlike ``{p}:archive``,
  and reading it takes nothing from anyone (the archive stream's consumers ack their entries).
  On start the newest ``backfill`` completions are taken too, so a restarted gateway has the
  first page in memory again (from S3: nothing is remade).
* **Work**: ``workers`` threads (``FALQ_CONSOLE_THUMBS_AHEAD_WORKERS``, default 2; 0 turns it
  off) share the making bound of :class:`~falq.gateway.console.thumbs.Thumbnails` with page
  views, so the gateway never decodes more than a handful of images at once.
* **Memory**: at most ``queue`` images wait (``FALQ_CONSOLE_THUMBS_AHEAD_QUEUE``); when a burst
  outruns the threads the *oldest* waiting ones are dropped, and the newest are made first,
  because the gallery shows the newest first. A dropped one is made when a page shows it, as
  before. Finished thumbnails go to the bounded in-memory cache and to S3.
* **Replicas**: before making one, a process claims it in Redis
  (``{p}:console:thumb:{digest}``, ``SET NX`` with a TTL), so among N gateways one makes each
  thumbnail; the others find it in S3 when a page asks.

A Redis or S3 outage only pauses it (errors back off up to ``MAX_BACKOFF_S``); it never fails a
request. The threads are daemons. They stop on :meth:`ThumbsAhead.close`, or by themselves once
``alive()`` turns false: the console starts them on its first request in a process and passes
"the event loop serving that request still runs", so they end with the server (a mounted app
gets no lifespan events of its own), and a gateway that never serves the console (one that
serves only the API, or a test's) never runs them.

Example::

    ahead = ThumbsAhead(redis_client, store, thumbs, prefix="falq", workers=2, queue=500,
                        alive=lambda: loop.is_running())
    ahead.start()
    ...
    ahead.close()
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from falq.gateway.console.thumbs import NoPreview, Thumbnails
from falq.shared.errors import StorageError, StorageTransientError
from falq.shared.jobs.records import JobRecord, StoredImage
from falq.shared.jobs.store import JobStore
from falq.shared.keys import Keys

log = logging.getLogger("falq.gateway.console")

#: How often the state index is read (seconds): one cheap ZREVRANGEBYSCORE each time.
POLL_S = 0.5
#: How far before the newest score seen each read starts (worker clocks differ a little).
LOOKBACK_S = 10.0
#: Ids read per poll at most (newest first); older ones of a larger burst are left to page views.
READ_LIMIT = 2000
#: How many ids are remembered as already seen (enough for the lookback at high throughput).
SEEN_MAX = 20_000
#: A claim's lifetime: another replica may make the thumbnail only after this.
CLAIM_TTL_S = 300
MAX_BACKOFF_S = 30.0


@dataclass
class AheadStats:
    """What the maker did (tests and the benchmark read it)."""

    seen: int = 0
    queued: int = 0
    made: int = 0
    cached: int = 0
    skipped_claimed: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str = ""
    #: Seconds spent in making (reading the image, decoding, encoding, storing), all threads.
    making_s: float = 0.0
    #: ``time.time()`` when each thumbnail was done, by job id (bounded like the seen set).
    done_at: collections.OrderedDict[str, float] = field(default_factory=collections.OrderedDict)


@dataclass(frozen=True)
class _Work:
    job_id: str
    img: StoredImage
    folder: str
    #: Seen completing just now (not in the start's backfill): no thumbnail can exist in S3 yet.
    fresh: bool = True


class ThumbsAhead:
    """Follows completions and makes their gallery thumbnails in the background (module docs).

    Parameters:
        r: the Redis client (the gateway's own).
        store: the job store (records are read in one pipeline per poll).
        thumbs: the console's :class:`Thumbnails` (its memory cache, making bound and locks).
        prefix: ``FALQ_KEY_PREFIX``.
        workers: maker threads (>= 1).
        queue: images waiting at most; the oldest are dropped beyond it.
        backfill: the newest completions taken on start.
        alive: checked before each step; the threads end once it returns False (default: always alive).
    """

    def __init__(self, r: redis.Redis, store: JobStore, thumbs: Thumbnails, *, prefix: str, workers: int = 2,
                 queue: int = 500, backfill: int = 60, alive: Callable[[], bool] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1 (0 means: do not create a ThumbsAhead)")
        self.r = r
        self.store = store
        self.thumbs = thumbs
        self.keys = Keys(prefix)
        self.workers = int(workers)
        self.backfill = max(0, int(backfill))
        self.stats = AheadStats()
        self._queue: collections.deque[_Work] = collections.deque(maxlen=max(1, int(queue)))
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._alive = alive or (lambda: True)
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> ThumbsAhead:
        """Start the follower and the maker threads (daemons); a second call does nothing."""
        if self._threads:
            return self
        self._threads = [threading.Thread(target=self._follow, name="falq-thumbs-follow", daemon=True)]
        self._threads += [threading.Thread(target=self._make_loop, name=f"falq-thumbs-make-{i}", daemon=True)
                          for i in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the threads (what is queued is dropped: page views make it if needed)."""
        self._stop.set()
        with self._cond:
            self._queue.clear()
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread() and timeout_s > 0:
                t.join(timeout_s)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def pending(self) -> int:
        """Images waiting to be made."""
        with self._cond:
            return len(self._queue)

    # --- following the completions --------------------------------------------------------------

    def _stopping(self) -> bool:
        if not self._stop.is_set() and not self._alive():
            self.close(timeout_s=0)  # the server is gone: wake the makers and end
        return self._stop.is_set()

    def _follow(self) -> None:
        backoff = 0.5
        cursor: float | None = None
        first = True
        while not self._stopping():
            try:
                cursor = self.poll(cursor, limit=self.backfill if first else READ_LIMIT)
                first = False
                backoff = 0.5
                self._stop.wait(POLL_S)
            except (redis.RedisError, OSError, ValueError) as exc:  # ValueError: a corrupt record
                self._error(exc)
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    def poll(self, cursor: float | None, *, limit: int = READ_LIMIT) -> float | None:
        """Read completions newer than ``cursor - LOOKBACK_S`` (the newest ``limit`` when
        ``cursor`` is None), queue the unseen ones' thumbnails; returns the new cursor."""
        lo: float | str = "-inf" if cursor is None else cursor - LOOKBACK_S
        rows = self.r.zrevrangebyscore(self.keys.state("completed"), "+inf", lo, start=0, num=max(1, limit),
                                       withscores=True)
        if not rows:  # nothing completed yet: from now on (the lookback covers clocks a little behind)
            return cursor if cursor is not None else time.time()
        newest = max(float(score) for _, score in rows)
        # Seen by (id, score): a job retried and completed again has new images and a new score.
        listed = [(m.decode() if isinstance(m, bytes) else str(m), float(score)) for m, score in rows]
        unseen = [(i, sc) for i, sc in listed if f"{i}@{sc!r}" not in self._seen]
        if unseen:
            recs = self.store.get_many([i for i, _ in unseen])
            work = []
            for (job_id, sc), rec in zip(unseen, recs, strict=True):
                self._remember(f"{job_id}@{sc!r}")
                if rec is not None and rec.state == "completed" and rec.outputs:
                    work.append(self._work_of(rec, fresh=cursor is not None))
            self.stats.seen += len(unseen)
            self.enqueue(list(reversed(work)))  # oldest first in: the newest end up made first
        return newest if cursor is None else max(cursor, newest)

    def _remember(self, seen_key: str) -> None:
        self._seen[seen_key] = None
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)

    def _work_of(self, rec: JobRecord, *, fresh: bool) -> _Work:
        img = min(rec.outputs, key=lambda i: i.index)  # the one the gallery's card shows
        return _Work(rec.id, img, self.thumbs.folder_of(rec.endpoint, img), fresh)

    def enqueue(self, items: list[_Work]) -> None:
        """Queue thumbnails to make, newest last; beyond the bound the oldest waiting are dropped."""
        with self._cond:
            for item in items:
                if len(self._queue) == self._queue.maxlen:
                    self.stats.dropped += 1
                self._queue.append(item)  # a full deque drops from the left: the oldest waiting
                self.stats.queued += 1
            self._cond.notify_all()

    # --- making -------------------------------------------------------------------------------

    def _make_loop(self) -> None:
        while not self._stopping():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(1.0)
                if self._stop.is_set():
                    return
                item = self._queue.pop()  # newest first: the gallery's first page
            self.make(item)

    def make(self, item: _Work) -> None:
        """Make one thumbnail unless this process has it or another replica claimed it."""
        try:
            if self.thumbs.cached(item.img, item.folder):
                self.stats.cached += 1
            else:
                key = self.thumbs.key(item.img, item.folder)
                claim = self.keys.console_thumb_claim(hashlib.sha256(key.encode()).hexdigest()[:32])
                if not self.r.set(claim, b"1", nx=True, ex=CLAIM_TTL_S):
                    self.stats.skipped_claimed += 1
                    return
                t0 = time.perf_counter()
                # A backfilled one may exist in S3 (made before a restart): look there first.
                _, source = self.thumbs.fetch(item.img, item.folder, look_in_s3=not item.fresh)
                self.stats.making_s += time.perf_counter() - t0
                if source == "made":
                    self.stats.made += 1
                else:
                    self.stats.cached += 1
            self._done(item.job_id)
        except NoPreview:
            self._done(item.job_id)  # not an image Pillow reads: the page shows its placeholder
        except (redis.RedisError, StorageError, StorageTransientError, OSError) as exc:
            self._error(exc)
            self._stop.wait(0.5)  # an outage: do not spin through the queue

    def _done(self, job_id: str) -> None:
        done = self.stats.done_at
        done[job_id] = time.time()
        while len(done) > SEEN_MAX:
            done.popitem(last=False)

    def _error(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = type(exc).__name__
        if self.stats.errors in (1, 10, 100) or self.stats.errors % 1000 == 0:  # a line, not a flood
            log.warning("console thumbnails ahead: %s (%d errors so far); page views still make them",
                        type(exc).__name__, self.stats.errors)
