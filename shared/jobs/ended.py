"""The end-of-job stream ``{p}:ended``: one entry per job that ended, for every consumer.

The save that makes a job terminal (``shared/lua/job.lua``) appends one entry in the same
script; so does ``chain.link`` (``shared/lua/chain.lua``) for a parent that had ended before its child was linked. Each
consumer reads the stream through its own consumer group (:data:`GROUPS`) and acknowledges
what it handled, so one slow consumer (a database that is down) never holds up another:

* ``archivers`` -- the catalogue (:mod:`falq.workers.maintenance.archive`), entries with ``ar``;
* ``chains`` -- waiting children of the job (:mod:`falq.workers.maintenance.chains`), ``ch``;
* ``callbacks`` -- the job's callback, entered in the sender's outbox (:mod:`falq.workers.callbacks.sender`), ``cb``.

Batch counts are not a consumer: the same save moves them, so they stay exact.

Fields: ``id``, ``v`` (the version saved), ``state``, and the flags ``ar``, ``ch``, ``cb``
(``1``: this consumer has work). An entry stays until every group has acknowledged it:
:func:`trim` (a maintenance cleanup) deletes what all groups are past.

Streams of an older release (``{p}:archive``, ``{p}:chain:done``) are read beside it by the
same groups until they are empty (:attr:`GroupReader.legacy`), so a rolling upgrade loses no end.

Example::

    reader = GroupReader(r, keys, "chains", "host:1234", legacy=keys.chain_done)
    for ev in reader.read():
        ...                                    # handle ev.job_id when ev.children
    reader.ack(events)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from falq.shared.keys import Keys
from falq.shared.redisconn import text

#: Every consumer group of the stream; :func:`trim` creates a missing one at the stream's start
#: (``archivers`` only where the catalogue is on) before deleting anything.
GROUPS: tuple[str, ...] = ("archivers", "chains", "callbacks")
#: A consumer idle this long with nothing pending is removed from its group (a process long gone).
DEAD_CONSUMER_MS = 3_600_000


@dataclass(frozen=True)
class Ended:
    """One entry: a job that ended (or a parent a new child was linked to after it ended)."""

    stream: str
    entry: str
    job_id: str
    version: str
    state: str
    archive: bool
    children: bool
    callback: bool


def parse(stream: str, entry: Any, fields: dict[Any, Any] | None) -> Ended | None:
    """An entry of ``{p}:ended``, or of an older release's ``{p}:archive`` (``id``, ``v``) or
    ``{p}:chain:done`` (``parent``, ``state``). None for an entry deleted meanwhile."""
    if fields is None:
        return None
    f = {text(k): text(v) for k, v in fields.items()}
    if "parent" in f:  # {p}:chain:done
        return Ended(stream, text(entry), f["parent"], "", f.get("state", ""), False, True, False)
    if "ar" not in f and "ch" not in f and "cb" not in f:  # {p}:archive
        return Ended(stream, text(entry), f.get("id", ""), f.get("v", ""), "", True, False, False)
    return Ended(stream, text(entry), f.get("id", ""), f.get("v", ""), f.get("state", ""),
                 f.get("ar") == "1", f.get("ch") == "1", f.get("cb") == "1")


class GroupReader:
    """One consumer of one group on ``{p}:ended`` (and on ``legacy``, an older release's stream).

    Parameters:
        client: Redis.
        keys: the key layout.
        group: one of :data:`GROUPS`.
        consumer: this consumer's name (``host:pid``).
        legacy: an older release's stream this group also drains, or None.
        count: entries per read.
        claim_idle_ms: pending entries idle this long are taken over from their consumer.
    """

    def __init__(self, client: redis.Redis, keys: Keys, group: str, consumer: str, *,
                 legacy: str | None = None, count: int = 100, claim_idle_ms: int = 60_000) -> None:
        self.r = client
        self.group = group
        self.consumer = consumer
        self.streams = [keys.ended, *([legacy] if legacy else [])]
        self.legacy = legacy
        self.count = count
        self.claim_idle_ms = claim_idle_ms
        self._ready = False
        #: Whether this consumer may hold entries it read and did not acknowledge (a failed pass):
        #: only then does a read look at them first, so an idle read is one command.
        self._own = True

    def ensure(self) -> None:
        """Create the group on each stream (at its start) unless it exists."""
        for stream in self.streams:
            _create(self.r, stream, self.group)
        self._ready = True

    def read(self, *, block_ms: int | None = None) -> list[Ended]:
        """This consumer's own pending entries first (a pass that failed), else new ones."""
        if not self._ready:
            self.ensure()
        if self._own:
            got = self._read("0", None)
            if got:
                return got
            self._own = False
        got = self._read(">", block_ms)
        self._own = bool(got)
        return got

    def _read(self, start: str, block_ms: int | None) -> list[Ended]:
        try:
            resp = self.r.xreadgroup(self.group, self.consumer, dict.fromkeys(self.streams, start),
                                     count=self.count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # a flushed or fresh Redis: the next read creates the group
                self._ready = False
                return []
            raise
        out: list[Ended] = []
        for stream, items in resp or []:
            for entry, fields in items:
                ev = parse(text(stream), entry, fields)
                if ev is not None:
                    out.append(ev)
        return out

    def claim_stale(self) -> list[Ended]:
        """Take over entries a dead (or stuck) consumer of the group left pending, in pages."""
        out: list[Ended] = []
        if not self._ready:
            self.ensure()
        for stream in self.streams:
            start = "0-0"
            for _ in range(100):
                try:
                    resp = self.r.xautoclaim(stream, self.group, self.consumer, self.claim_idle_ms,
                                             start_id=start, count=self.count)
                except redis.ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        self._ready = False
                        return out
                    raise
                start = text(resp[0])
                out += [ev for e, f in resp[1] if (ev := parse(stream, e, f)) is not None]
                self._own = self._own or bool(resp[1])
                if start == "0-0":
                    break
        return out

    def ack(self, events: Iterable[Ended]) -> None:
        """Acknowledge ``events``; an older release's ``chain:done`` entries are also deleted
        (that stream had one group; ``{p}:archive`` is trimmed by the archiver)."""
        by_stream: dict[str, list[str]] = {}
        for ev in events:
            by_stream.setdefault(ev.stream, []).append(ev.entry)
        if not by_stream:
            return
        pipe = self.r.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)
            if stream != self.streams[0] and self.group == "chains":
                pipe.xdel(stream, *ids)
        pipe.execute()


def _create(r: redis.Redis, stream: str, group: str) -> None:
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def trim(r: redis.Redis, keys: Keys, groups: Iterable[str]) -> int:
    """Delete the entries of ``{p}:ended`` that every consumer group has acknowledged.

    ``groups`` are the groups this deployment needs: one that does not exist yet is created at
    the stream's start first, so an entry is never deleted before a consumer that needs it read
    it. A group that exists but is not needed (the catalogue was turned off) still holds the
    entries it has not read (docs/internals/callbacks.md, known sharp edges). Returns how many
    entries were deleted."""
    for group in groups:
        _create(r, keys.ended, group)
    try:
        infos = r.xinfo_groups(keys.ended)
    except redis.ResponseError:  # no stream: nothing ended since Redis started empty
        return 0
    floor: str | None = None
    for g in infos:
        _drop_dead_consumers(r, keys.ended, text(g["name"]))
        if int(g.get("pending") or 0):
            lowest = text(r.xpending(keys.ended, text(g["name"]))["min"])
        else:  # all read entries are acked: what was never read stays
            last = text(g.get("last-delivered-id") or "0-0")
            ms, _, seq = last.partition("-")
            lowest = f"{ms}-{int(seq or 0) + 1}"
        if floor is None or _order(lowest) < _order(floor):
            floor = lowest
    if floor is None or floor == "0-1":
        return 0
    return int(r.xtrim(keys.ended, minid=floor, approximate=False))


def backlog(r: redis.Redis, streams: Iterable[str], group: str) -> int:
    """Entries of ``streams`` the ``group`` has not acknowledged: pending plus never delivered.

    Read defensively: no stream is 0; a stream without the group counts every entry; a group
    whose ``lag`` Redis cannot tell (after deletions) counts the stream's length as the
    undelivered part (an upper bound); a key holding something else counts 0."""
    total = 0
    for stream in streams:
        try:
            if not r.exists(stream):
                continue
            length = int(r.xlen(stream))
            groups = {text(g.get("name")): g for g in r.xinfo_groups(stream)}
        except redis.ResponseError:  # the key holds something else: not a stream of ours
            continue
        g = groups.get(group)
        if g is None:
            total += length
            continue
        lag = g.get("lag")
        total += int(g.get("pending") or 0) + (int(lag) if lag is not None else length)
    return total


def _drop_dead_consumers(r: redis.Redis, stream: str, group: str) -> None:
    """Remove consumers (``host:pid`` of processes long gone) with nothing pending."""
    for c in r.xinfo_consumers(stream, group):
        if not c.get("pending") and int(c.get("idle") or 0) > DEAD_CONSUMER_MS:
            r.xgroup_delconsumer(stream, group, text(c["name"]))


def _order(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


__all__ = ["DEAD_CONSUMER_MS", "GROUPS", "Ended", "GroupReader", "backlog", "parse", "trim"]
