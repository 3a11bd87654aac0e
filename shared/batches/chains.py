"""Chains: a job whose input names another job's output, ``falq:JOB_ID#N``.

**The reference format.** An entry of an edit's ``image_urls`` may be ``falq:<ID>#<N>``
instead of a URL: output image ``N`` (0-based) of job ``<ID>``. Inside a bulk file or a
``POST /v1/batches`` upload, ``<ID>`` may also be another line's ``id`` (the line field that
is also its idempotency key); a line id wins over a job id of the same spelling. ``<ID>`` is
1-200 characters without whitespace or ``#``; ``N`` is below the parent's ``num_images``.

**What happens.** A job with references is validated at once (everything but the referenced
images), gets ``parents`` and is stored ``waiting``: no broker message, no worker slot, no
polling. Its id is added to ``{p}:children:{parent}`` of each parent. The save that makes a job
terminal marks its end-of-job entry ``ch`` *in the same Lua step* when it has children
(:mod:`falq.shared.jobs.ended`); a worker loop (:mod:`falq.workers.maintenance.chains`) reads the
stream through the consumer group ``chains`` (an entry a killed worker read is taken over after
``FALQ_CHAIN_CLAIM_IDLE_S``) and calls :meth:`Chains.evaluate` for each child:

* every parent ``completed``: the references become presigned GET URLs of the parents' S3
  copies (valid ``FALQ_CHAIN_URL_EXPIRY_S``; fal fetches public https URLs, the emulator
  and moto are reached the same way), the original list is kept in ``input_refs``, the job
  moves ``waiting -> queued`` and is made runnable exactly as a fresh job is;
* a parent ``failed`` (moderated included) or gone: the child ends ``failed`` with a
  :class:`~falq.shared.errors.ParentFailed` naming the parent; a ``cancelled`` parent ends
  it ``cancelled`` with the same kind of error. Its own children follow, through the stream;
* otherwise it keeps waiting.

The per-child count of pending parents is the number of its parents not yet ``completed``,
read from the parents' records (at most ``MAX_IMAGE_URLS`` = 6 of them, one pipelined read)
rather than kept in a counter: a decrement is not idempotent, and every step here must be
safe to run twice (a redelivered stream entry, the sweep). The records are the truth.

**Retry.** Retrying a failed parent reopens every child that it failed (``failed`` with
``parent_failed`` naming it, recursively down the tree): they go back to ``waiting`` with
their references restored, and run once the parent completes. Retrying such a child
directly does the same for that child.

**Recovery.** A release moves the child to ``queued`` and then hands it to the broker; it is
entered in ``{p}:chain:releasing`` before, and left after, so a crash in between is re-driven.
:meth:`Chains.sweep` (one worker every ``FALQ_CHAIN_SWEEP_S``) re-evaluates waiting children
whose parents all ended and finishes half-done releases: a Redis restart or a SIGKILL at any
point loses no child.

Example::

    chains = Chains(store, settings, runnable=lambda rec: FairShare(r, settings).make_ready(rec, app))
    chains.evaluate("child-id")          # 'released' | 'failed' | 'cancelled' | 'waiting' | 'gone'
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from falq.shared.errors import FieldError, JobNotFound, ParentFailed
from falq.shared.jobs.records import TERMINAL, JobRecord
from falq.shared.jobs.store import Conflict, JobStore
from falq.shared.scripts import register
from falq.shared.settings import Settings

log = logging.getLogger("falq.chains")

REF_PREFIX = "falq:"
_REF = re.compile(r"^falq:([^\s#]{1,200})#(\d{1,3})$")
#: What a reference stands in for while the rest of the input is validated.
PLACEHOLDER_URL = "https://falq.invalid/reference.png"
REF_RULE = "a reference must look like falq:JOB_ID#N (N: the output's index, from 0)"
GROUP = "chains"


@dataclass(frozen=True)
class Ref:
    """``falq:<target>#<index>``: output ``index`` of job (or bulk line) ``target``."""

    target: str
    index: int

    def __str__(self) -> str:
        return f"{REF_PREFIX}{self.target}#{self.index}"


def parse_ref(value: Any) -> Ref | None:
    """The reference in ``value``, or None when it is not one (an ordinary URL).

    Raises ``ValueError`` for a ``falq:`` string that is not a well-formed reference.
    """
    if not isinstance(value, str) or not value.startswith(REF_PREFIX):
        return None
    m = _REF.match(value)
    if m is None:
        raise ValueError(REF_RULE)
    return Ref(m.group(1), int(m.group(2)))


def split_refs(data: Any) -> tuple[Any, dict[int, Ref], list[FieldError]]:
    """``(input with placeholders, {position: ref}, errors)``: what the schema validates.

    Only ``image_urls`` entries are references; anything else is left to the schema.
    """
    if not isinstance(data, dict) or not isinstance(data.get("image_urls"), list):
        return data, {}, []
    refs: dict[int, Ref] = {}
    errors: list[FieldError] = []
    urls = list(data["image_urls"])
    for i, url in enumerate(urls):
        try:
            ref = parse_ref(url)
        except ValueError as exc:
            errors.append(FieldError(f"image_urls[{i}]", str(exc)))
            urls[i] = PLACEHOLDER_URL
            continue
        if ref is not None:
            refs[i] = ref
            urls[i] = PLACEHOLDER_URL
    if not refs and not errors:
        return data, {}, []
    return {**data, "image_urls": urls}, refs, errors


def restore_refs(payload: dict[str, Any], refs: dict[int, Ref]) -> dict[str, Any]:
    """Put the references back into a validated payload (see :func:`split_refs`)."""
    if not refs:
        return payload
    urls = list(payload["image_urls"])
    for i, ref in refs.items():
        urls[i] = str(ref)
    return {**payload, "image_urls": urls}


def refs_in(input: dict[str, Any]) -> dict[int, Ref]:
    """The references of a stored input (already well-formed)."""
    out: dict[int, Ref] = {}
    for i, url in enumerate(input.get("image_urls") or []):
        try:
            ref = parse_ref(url)
        except ValueError:
            continue
        if ref is not None:
            out[i] = ref
    return out


def parents_of(input: dict[str, Any]) -> list[str]:
    """The distinct job ids an input references, in order."""
    return list(dict.fromkeys(r.target for r in refs_in(input).values()))


class Chains:
    """Links, releases and ends chained jobs (see the module docs).

    Parameters:
        store: the job store.
        settings: for the limits, the URL expiry and the key prefix.
        runnable: makes a job that just moved to ``queued`` runnable -- the same hand-off a
            freshly created job gets (publish, mark published).
        presign: ``(S3 key, expires_s) -> URL`` (default: :class:`falq.shared.storage.s3.Storage`).
    """

    def __init__(self, store: JobStore, settings: Settings, *, runnable: Callable[[JobRecord], None] | None = None,
                 presign: Callable[[str, int], str] | None = None) -> None:
        self.store = store
        self.r = store.r
        self.s = settings
        self.keys = store.keys
        self.runnable = runnable
        self._presign = presign
        self._link = register(self.r, "chain.link")

    # --- enqueue time ----------------------------------------------------------------------
    def check(self, items: list[tuple[str, dict[int, Ref], int]], tenant_of: Callable[[int], str],
              *, new_parents: dict[str, tuple[str, int, int]] | None = None) -> dict[int, list[FieldError]]:
        """Enqueue-time checks of references to existing jobs, per item (index in ``items``).

        ``items`` are ``(child key, {position: ref to a job id}, child's own depth offset)``;
        ``new_parents`` maps job ids being created in the same request to ``(tenant,
        num_images, depth)``. Checks: the parent exists and is the same tenant's, the index is
        below its ``num_images``, the depth and fan-out stay within the settings.
        """
        new_parents = new_parents or {}
        ids = sorted({ref.target for _, refs, _ in items for ref in refs.values()} - set(new_parents))
        found = dict(zip(ids, self.store.get_many(ids), strict=True)) if ids else {}
        depths = self._depths([r for r in found.values() if r is not None])
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.scard(self.keys.children(job_id))
        fanout = dict(zip(ids, pipe.execute(), strict=True)) if ids else {}
        adding: dict[str, int] = {}
        out: dict[int, list[FieldError]] = {}
        for n, (_, refs, _) in enumerate(items):
            errs: list[FieldError] = []
            tenant = tenant_of(n)
            for pos, ref in sorted(refs.items()):
                field = f"image_urls[{pos}]"
                rec = found.get(ref.target)
                if ref.target in new_parents:
                    p_tenant, p_images, p_depth = new_parents[ref.target]
                elif rec is not None:
                    p_tenant, p_images, p_depth = rec.tenant, int(rec.input.get("num_images", 1)), depths[rec.id]
                if (rec is None and ref.target not in new_parents) or p_tenant != tenant:
                    # Another tenant's job is reported as missing: its existence is not ours to tell.
                    errs.append(FieldError(field, f"{ref}: no job {ref.target!r} of tenant {tenant!r} "
                                                  "(references must name an existing job of the same tenant)"))
                    continue
                if ref.index >= p_images:
                    errs.append(FieldError(field, f"{ref}: job {ref.target} makes {p_images} image(s), "
                                                  f"so N must be below {p_images}"))
                if p_depth + 1 > self.s.chain_max_depth:
                    errs.append(FieldError(field, f"{ref}: the chain would be {p_depth + 1} references deep; "
                                                  f"at most {self.s.chain_max_depth} (FALQ_CHAIN_MAX_DEPTH)"))
            for parent in {r.target for r in refs.values()}:
                adding[parent] = adding.get(parent, 0) + 1
                if fanout.get(parent, 0) + adding[parent] > self.s.chain_max_children:
                    errs.append(FieldError("image_urls", f"job {parent} would have more than "
                                                         f"{self.s.chain_max_children} children "
                                                         "(FALQ_CHAIN_MAX_CHILDREN)"))
            if errs:
                out[n] = errs
        return out

    def depth_of(self, rec: JobRecord) -> int:
        """How many references deep ``rec`` is (0: no parents)."""
        return self._depths([rec])[rec.id]

    def _depths(self, recs: list[JobRecord]) -> dict[str, int]:
        """Depth of each record, walking up the parents (bounded by the depth limit)."""
        known: dict[str, JobRecord | None] = {r.id: r for r in recs}
        frontier = {p for r in recs for p in r.parents}
        for _ in range(self.s.chain_max_depth + 1):
            todo = sorted(frontier - set(known))
            if not todo:
                break
            for job_id, rec in zip(todo, self.store.get_many(todo), strict=True):
                known[job_id] = rec
            frontier = {p for j in todo if known[j] is not None for p in known[j].parents}  # type: ignore[union-attr]

        memo: dict[str, int] = {}

        def depth(job_id: str, seen: frozenset[str]) -> int:
            if job_id in memo:
                return memo[job_id]
            rec = known.get(job_id)
            if rec is None or not rec.parents or job_id in seen or len(seen) > self.s.chain_max_depth:
                d = 0 if rec is None or not rec.parents else len(seen)
            else:
                d = 1 + max(depth(p, seen | {job_id}) for p in rec.parents)
            memo[job_id] = d
            return d

        return {r.id: depth(r.id, frozenset()) for r in recs}

    def link(self, child_id: str, parents: Iterable[str]) -> None:
        """Enter ``child_id`` in each parent's children set; a parent that already ended is
        put on the end-of-job stream again at once, for the chains group (idempotent)."""
        ps = list(dict.fromkeys(parents))
        if ps:
            ttl = max(self.s.record_ttl_s * 2, 3600)
            keys = [self.keys.ended]
            for p in ps:
                keys += [self.keys.children(p), self.keys.job(p)]
            self._link(keys=keys, args=[child_id, ttl, *ps])

    # --- the release ----------------------------------------------------------------------
    def on_parent_done(self, parent_id: str) -> dict[str, str]:
        """Evaluate every child of ``parent_id``; returns child -> outcome."""
        children = sorted(x.decode() for x in self.r.smembers(self.keys.children(parent_id)))
        return {c: self.evaluate(c) for c in children}

    def evaluate(self, child_id: str) -> str:
        """Release, end or leave waiting one child, from its parents' records (idempotent).

        Returns ``released``, ``failed``, ``cancelled``, ``waiting``, ``not_waiting`` or ``gone``.
        """
        try:
            rec = self.store.get(child_id)
        except JobNotFound:
            return "gone"
        if rec.state != "waiting":
            if rec.state == "queued" and self.r.zscore(self.keys.chain_releasing, child_id) is not None:
                self._finish_release(rec)
                return "released"
            return "not_waiting"
        parents = dict(zip(rec.parents, self.store.get_many(rec.parents), strict=True))
        for pid in rec.parents:
            p = parents[pid]
            if p is None:
                return self._end(child_id, pid, "failed", f"parent job {pid} is gone (expired or deleted)")
            if p.state == "cancelled":
                return self._end(child_id, pid, "cancelled", f"parent job {pid} was cancelled")
            if p.state == "failed":
                err = p.error
                if p.moderation is not None or (err is not None and err.type == "content_policy"):
                    why = "was refused by fal's content checker"
                else:
                    why = f"failed ({err.type}: {err.message[:300]})" if err else "failed"
                return self._end(child_id, pid, "failed", f"parent job {pid} {why}")
        if any(p is None or p.state != "completed" for p in parents.values()):
            return "waiting"
        return self._release(child_id, parents)  # type: ignore[arg-type]

    def _end(self, child_id: str, parent_id: str, state: str, message: str) -> str:
        exc = ParentFailed(message, parent=parent_id)

        def change(r: JobRecord) -> bool:
            if r.state != "waiting":
                return False
            r.add_error(exc, retryable=False)
            r.move(state)  # type: ignore[arg-type]
            return True

        try:
            after = self.store.update(child_id, change)
        except (JobNotFound, Conflict):
            return "gone"
        return state if after.state == state else "not_waiting"

    def _release(self, child_id: str, parents: dict[str, JobRecord]) -> str:
        now = time.time()
        self.r.zadd(self.keys.chain_releasing, {child_id: now})
        problem: list[tuple[str, str]] = []

        def change(r: JobRecord) -> bool:
            if r.state != "waiting":
                return False
            given = list(r.input.get("image_urls") or [])
            urls = []
            for url in given:
                ref = parse_ref(url)
                if ref is None:
                    urls.append(url)
                    continue
                outs = {o.index: o for o in parents[ref.target].outputs}
                out = outs.get(ref.index)
                if out is None:
                    problem.append((ref.target, f"parent job {ref.target} has no output {ref.index} "
                                                f"(it made {len(outs)})"))
                    return False
                urls.append(self.presign(out.key))
            r.input_refs = given
            r.input = {**r.input, "image_urls": urls}
            r.move("queued")
            return True

        try:
            after = self.store.update(child_id, change)
        except (JobNotFound, Conflict):
            self.r.zrem(self.keys.chain_releasing, child_id)
            return "gone"
        if problem:
            self.r.zrem(self.keys.chain_releasing, child_id)
            return self._end(child_id, problem[0][0], "failed", problem[0][1])
        if after.state != "queued":
            self.r.zrem(self.keys.chain_releasing, child_id)
            return "not_waiting"
        self._finish_release(after)
        return "released"

    def _finish_release(self, rec: JobRecord) -> None:
        """Hand a released child to the broker (once: ``published`` says it was), then forget
        the release."""
        if not self.store.is_published(rec.id):
            if self.runnable is None:
                raise RuntimeError("Chains needs a runnable hand-off to release jobs")
            self.runnable(rec)
        self.r.zrem(self.keys.chain_releasing, rec.id)

    def presign(self, key: str) -> str:
        if self._presign is None:
            from falq.shared.storage.s3 import get_storage

            storage = get_storage(self.s)
            self._presign = storage.presign
        return self._presign(key, self.s.chain_url_expiry_s)

    # --- retry ------------------------------------------------------------------------------
    def reopen(self, job_id: str, *, states: tuple[str, ...] = ("failed", "cancelled")) -> bool:
        """Reopen a chained job that failed or was cancelled because of a parent (or that is
        retried by hand): back to ``waiting`` with its references restored, then linked again
        (so a parent that completed meanwhile releases it at once). Returns True if reopened."""
        def change(r: JobRecord) -> bool:
            if r.state not in states or not r.parents:
                return False
            if r.input_refs is not None:
                r.input = {**r.input, "image_urls": list(r.input_refs)}
            r.start_over("waiting")
            return True

        before = self.store.get(job_id)
        if before.state not in states or not before.parents:
            return False
        after = self.store.update(job_id, change)
        if after.state != "waiting":
            return False
        self.store.clear_cancel(job_id)
        self.r.hset(self.store.job_key(job_id), "published", "0")
        self.link(job_id, after.parents)
        return True

    def reopen_children(self, parent_id: str) -> list[str]:
        """Reopen every descendant of ``parent_id`` that a parent ended (``failed`` or
        ``cancelled`` with ``parent_failed``), down the tree; returns their ids."""
        out: list[str] = []
        todo = [parent_id]
        seen: set[str] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            kids = sorted(x.decode() for x in self.r.smembers(self.keys.children(pid)))
            for kid, rec in zip(kids, self.store.get_many(kids), strict=True):
                if rec is None or rec.state not in ("failed", "cancelled") or rec.error is None:
                    continue
                # Ended by a parent (the error's type, not its text); re-evaluated once reopened, so
                # a child another failed parent still blocks simply ends again.
                if rec.error.type != ParentFailed.kind or pid not in rec.parents:
                    continue
                if self.reopen(kid):
                    out.append(kid)
                    todo.append(kid)
        return out

    # --- recovery ---------------------------------------------------------------------------
    def sweep(self, *, older_than_s: float = 5.0, batch: int = 1000) -> dict[str, int]:
        """Re-drive what the stream may have missed: waiting children whose parents all ended
        (their entry lost in a Redis restart), children left unlinked by a crash, and releases
        that moved a child to ``queued`` without handing it to the broker."""
        stats = {"evaluated": 0, "released": 0, "ended": 0, "relinked": 0, "finished": 0}
        cutoff = time.time() - older_than_s
        for raw in self.r.zrangebyscore(self.keys.chain_releasing, "-inf", cutoff, start=0, num=batch):
            child = raw.decode()
            outcome = self.evaluate(child)
            if outcome in ("not_waiting", "gone"):
                self.r.zrem(self.keys.chain_releasing, child)
            stats["finished"] += outcome == "released"
        ids = [x.decode() for x in self.r.zrangebyscore(self.keys.state("waiting"), "-inf", cutoff,
                                                         start=0, num=batch)]
        recs = [r for r in self.store.get_many(ids) if r is not None and r.state == "waiting"]
        parent_ids = sorted({p for r in recs for p in r.parents})
        pipe = self.r.pipeline(transaction=False)
        for pid in parent_ids:
            pipe.hget(self.keys.job(pid), "state")
        states = {pid: (s.decode() if s else None) for pid, s in zip(parent_ids, pipe.execute(), strict=True)}
        for rec in recs:
            ended = [states.get(p) is None or states.get(p) in TERMINAL for p in rec.parents]
            if all(ended) or any(states.get(p) in ("failed", "cancelled") or states.get(p) is None
                                 for p in rec.parents):
                stats["evaluated"] += 1
                outcome = self.evaluate(rec.id)
                stats["released"] += outcome == "released"
                stats["ended"] += outcome in ("failed", "cancelled")
            else:
                pipe = self.r.pipeline(transaction=False)
                for p in rec.parents:
                    pipe.sismember(self.keys.children(p), rec.id)
                if not all(pipe.execute()):
                    self.link(rec.id, rec.parents)
                    stats["relinked"] += 1
        return stats


__all__ = ["GROUP", "PLACEHOLDER_URL", "REF_PREFIX", "REF_RULE", "Chains", "Ref", "parents_of", "parse_ref",
           "refs_in", "restore_refs", "split_refs"]
