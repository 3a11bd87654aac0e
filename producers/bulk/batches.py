"""Batches as a service: plan chained bulk lines, price them, enqueue them as a batch, and
show, cancel, retry and export a batch. The CLI (``falq bulk``, ``falq batches``, ``falq batch``)
and the gateway (``/v1/batches``) are thin layers over this module.

**Lines that reference lines.** Inside a bulk file or a ``POST /v1/batches`` upload an edit's
``image_urls`` may hold ``falq:LINE_ID#N``: output ``N`` of the job of the line whose ``id`` is
``LINE_ID`` (:mod:`falq.shared.batches.chains` documents the format; ``falq:JOB_ID#N`` names an
existing job). :func:`plan_chains` orders the lines by reference (parents first), and refuses
cycles, references to unknown or invalid lines and chains deeper than ``FALQ_CHAIN_MAX_DEPTH``,
each as a reject naming the line and the field. :func:`enqueue_batch` enqueues level by level:
once a level's jobs exist (their ids known, also when a rerun joins them through their
idempotency keys), the next level's references are rewritten to those job ids.

**Price.** :func:`price` quotes a run at the account's unit prices (:mod:`falq.shared.spend.pricing`:
fal's pricing API, else the list prices, which the quote then says) times ``num_images``, for
every line, chained edits included, and sets it against what is left of today's budget, of the
tenant's own budget when it has one, and of the batch's spend cap when one is given.

Example::

    lines, rejects = load_file("pipeline.jsonl", falq)
    p = price(falq, lines)
    print(p.total_usd, p.exceeds)
    batch, job_ids = enqueue_batch(falq, lines, name="pipeline", source_name="pipeline.jsonl",
                                   source_sha256=sha, run_key="bulk:3f1c...")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from falq.producers.bulk.parse import BulkLine, Reject
from falq.producers.bulk.wait import result_row
from falq.producers.client import Falq
from falq.shared.batches.chains import Ref, refs_in
from falq.shared.batches.store import Batch, BatchStore, batch_id_for
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.jobs.records import JobRecord
from falq.shared.limits.store import tenant_spend_today
from falq.shared.spend.batch_cap import BatchCaps, parse_cap
from falq.shared.tenants.store import TenantStore

RETRY_WHICH = ("failed", "moderated")
PRIORITIES = ("normal", "low")
PRIORITY_RULE = ("must be normal or low; low waits behind every customer's normal requests on fal's shared "
                 "per-endpoint queue (no discount is documented)")
#: At most this many archived failed members of one batch are read back for a retry (one query).
MAX_BATCH_ARCHIVED = 1_000_000


# --- planning ------------------------------------------------------------------------------------


def plan_chains(falq: Falq, lines: list[BulkLine], rejects: list[Reject]) -> tuple[list[BulkLine], list[Reject]]:
    """Check the references of bulk lines; returns ``(lines ordered parents first, rejects)``.

    A reference whose target is a line ``id`` of the file is a line reference; any other
    target must be an existing job of the tenant (checked here, read-only).
    """
    by_id = {ln.id: ln for ln in lines if ln.id is not None}
    rejected_ids = _rejected_ids(rejects)
    bad: dict[int, list[FieldError]] = {}
    deps: dict[int, set[int]] = {}
    external: list[tuple[int, dict[int, Ref]]] = []
    for ln in lines:
        refs = refs_in(ln.request.input)
        mine: set[int] = set()
        ext: dict[int, Ref] = {}
        for pos, ref in refs.items():
            where = f"input.image_urls[{pos}]"
            if ref.target == ln.id:
                bad.setdefault(ln.line, []).append(FieldError(where, f"{ref}: a line cannot reference itself"))
            elif ref.target in by_id:
                mine.add(by_id[ref.target].line)
                n_images = int(by_id[ref.target].request.input.get("num_images", 1))
                if ref.index >= n_images:
                    bad.setdefault(ln.line, []).append(FieldError(
                        where, f"{ref}: line {by_id[ref.target].line} makes {n_images} image(s), "
                               f"so N must be below {n_images}"))
            elif ref.target in rejected_ids:
                bad.setdefault(ln.line, []).append(FieldError(
                    where, f"{ref}: line {rejected_ids[ref.target]} (id {ref.target!r}) is invalid"))
            else:
                ext[pos] = ref
        deps[ln.line] = mine
        if ext:
            external.append((ln.line, ext))
    if external:
        items = [(str(n), refs, 0) for n, refs in external]
        tenant = falq.tenant
        found = falq.chains.check(items, lambda _: tenant)
        for i, errs in found.items():
            line = external[i][0]
            bad.setdefault(line, []).extend(FieldError(f"input.{e.field}", e.message) for e in errs)
    level, cyclic = _levels(deps)
    for line in cyclic:
        bad.setdefault(line, []).append(FieldError("input.image_urls", "the references between lines form a cycle "
                                                   f"(lines {', '.join(map(str, sorted(cyclic)))})"))
    limit = falq.settings.chain_max_depth
    for line, lv in level.items():
        if lv > limit:
            bad.setdefault(line, []).append(FieldError(
                "input.image_urls", f"the chain would be {lv} references deep; at most {limit} (FALQ_CHAIN_MAX_DEPTH)"))
    # A line whose parent line is refused cannot run either.
    changed = True
    while changed:
        changed = False
        for ln in lines:
            if ln.line in bad:
                continue
            broken = sorted(p for p in deps[ln.line] if p in bad)
            if broken:
                bad[ln.line] = [FieldError("input.image_urls", f"references line {broken[0]}, which is invalid")]
                changed = True
    good = [ln for ln in lines if ln.line not in bad]
    good.sort(key=lambda ln: (level.get(ln.line, 0), ln.line))
    out_rejects = [*rejects, *(Reject(ln.line, bad[ln.line], json.dumps(_raw(ln))) for ln in lines
                               if ln.line in bad)]
    out_rejects.sort(key=lambda r: r.line)
    return good, out_rejects


def _raw(ln: BulkLine) -> dict[str, Any]:
    return {"id": ln.id, "endpoint": ln.request.endpoint, "input": ln.request.input}


def _rejected_ids(rejects: list[Reject]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejects:
        try:
            obj = json.loads(r.raw)
        except (ValueError, TypeError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            out[obj["id"]] = r.line
    return out


def _levels(deps: dict[int, set[int]]) -> tuple[dict[int, int], set[int]]:
    """Depth of each line (0: no line parents) by Kahn's algorithm; lines on a cycle (or
    below one) are returned apart."""
    level: dict[int, int] = {}
    remaining = {n: set(d) for n, d in deps.items()}
    ready = [n for n, d in remaining.items() if not d]
    children: dict[int, list[int]] = {}
    for n, d in deps.items():
        for p in d:
            children.setdefault(p, []).append(n)
    for n in ready:
        level[n] = 0
    while ready:
        nxt: list[int] = []
        for n in ready:
            for c in children.get(n, []):
                remaining[c].discard(n)
                level[c] = max(level.get(c, 0), level[n] + 1)
                if not remaining[c]:
                    nxt.append(c)
        ready = nxt
    cyclic = {n for n, d in remaining.items() if d}
    for n in cyclic:
        level.pop(n, None)
    return level, cyclic


# --- price ------------------------------------------------------------------------------------------


@dataclass
class Price:
    """What a batch would cost, by endpoint, against what is left of the budgets."""

    images: int
    jobs: int
    by_endpoint: dict[str, dict[str, float]]
    total_usd: float
    day: str
    spent_usd: float
    budget_usd: float | None
    remaining_usd: float | None
    tenant: str
    tenant_budget_usd: float | None = None
    tenant_remaining_usd: float | None = None
    notes: list[str] = field(default_factory=list)
    #: Where the unit prices came from: ``fal_pricing_api`` or ``list_price_fallback``.
    price_source: str = "fal_pricing_api"
    #: Jobs that edit another line's output (they are priced as every other job).
    chained: int = 0
    #: The batch's spend cap (USD), if one is given.
    max_spend_usd: float | None = None

    @property
    def over_cap(self) -> bool:
        """More than the cap would be spent: the rest of the run waits at the cap."""
        return self.max_spend_usd is not None and self.total_usd > self.max_spend_usd + 1e-9

    @property
    def exceeds(self) -> bool:
        over_global = self.remaining_usd is not None and self.total_usd > self.remaining_usd + 1e-9
        over_tenant = self.tenant_remaining_usd is not None and self.total_usd > self.tenant_remaining_usd + 1e-9
        return over_global or over_tenant

    def as_json(self) -> dict[str, Any]:
        return {"images": self.images, "jobs": self.jobs, "by_endpoint": self.by_endpoint,
                "estimated_usd": round(self.total_usd, 6), "day": self.day, "spent_today_usd": round(self.spent_usd, 6),
                "budget_usd": self.budget_usd, "remaining_usd": self.remaining_usd, "tenant": self.tenant,
                "tenant_budget_usd": self.tenant_budget_usd, "tenant_remaining_usd": self.tenant_remaining_usd,
                "exceeds_budget": self.exceeds, "price_source": self.price_source, "chained_jobs": self.chained,
                "max_spend_usd": self.max_spend_usd, "over_max_spend": self.over_cap}

    def lines(self) -> list[str]:
        """Human lines: per endpoint, the total, and the budgets."""
        out = [f"  {ep}: {int(v['images'])} image(s) in {int(v['jobs'])} job(s) x ${v['unit_usd']:.4f} = "
               f"${v['usd']:.2f}" for ep, v in sorted(self.by_endpoint.items())]
        out.append(f"  estimated cost: ${self.total_usd:.2f} for {self.images} image(s) in {self.jobs} job(s)"
                   + (f", {self.chained} of them chained edits" if self.chained else ""))
        out.append("  unit prices: " + ("this account's, from fal's pricing API" if self.price_source ==
                                         "fal_pricing_api" else "the configured LIST prices (fal's pricing API "
                                                                "was unreachable; the account may pay less or more)"))
        if self.max_spend_usd is not None:
            out.append(f"  batch spend cap: ${self.max_spend_usd:.2f}" + (
                "; the run would pass it: the jobs past it wait (paused: batch_spend_cap) until the cap is raised"
                if self.over_cap else ""))
        if self.remaining_usd is None:
            out.append(f"  daily budget: none set (spent today {self.day}: ${self.spent_usd:.2f})")
        else:
            out.append(f"  daily budget: ${self.budget_usd:.2f}, spent today ${self.spent_usd:.2f}, "
                       f"left ${self.remaining_usd:.2f}")
        if self.tenant_budget_usd is not None:
            out.append(f"  tenant {self.tenant!r} budget: ${self.tenant_budget_usd:.2f}, left "
                       f"${(self.tenant_remaining_usd or 0):.2f}")
        if self.exceeds:
            out.append("  the estimate EXCEEDS what is left of the budget")
        return out


def price(falq: Falq, lines: Sequence[BulkLine], *, max_spend: float | None = None) -> Price:
    """Quote ``lines`` by endpoint (the account's unit price x ``num_images``, chained edits
    included) against today's budgets and the batch's cap ``max_spend``. Enqueues nothing."""
    by: dict[str, dict[str, float]] = {}
    images = 0
    quotes = falq.pricing.quotes(ln.request.endpoint for ln in lines)
    chained = sum(1 for ln in lines if refs_in(ln.request.input))
    for ln in lines:
        req = ln.request
        n = int(req.input.get("num_images", 1))
        unit = quotes[req.endpoint].unit_price
        row = by.setdefault(req.endpoint, {"jobs": 0, "images": 0, "unit_usd": unit, "usd": 0.0})
        row["jobs"] += 1
        row["images"] += n
        row["usd"] = round(row["usd"] + unit * n, 6)
        images += n
    total = round(sum(v["usd"] for v in by.values()), 6)
    from falq.producers.admin import Admin  # the one place the budget is read

    budget = Admin(falq).budget_show()
    p = Price(images=images, jobs=len(lines), by_endpoint=by, total_usd=total, day=budget.day,
              spent_usd=budget.spent_usd, budget_usd=budget.budget_usd, remaining_usd=budget.remaining_usd,
              tenant=falq.tenant, chained=chained, max_spend_usd=max_spend,
              price_source="list_price_fallback" if any(q.source != "fal_pricing_api" for q in quotes.values())
              else "fal_pricing_api")
    tenant = TenantStore(falq.redis, prefix=falq.settings.key_prefix).get(falq.tenant)
    if tenant is not None and tenant.budget_usd is not None:
        _, spent = tenant_spend_today(falq.redis, falq.settings.key_prefix, [falq.tenant])
        p.tenant_budget_usd = tenant.budget_usd
        p.tenant_remaining_usd = round(max(0.0, tenant.budget_usd - spent.get(falq.tenant, 0.0)), 6)
    return p


# --- enqueue ------------------------------------------------------------------------------------------


def open_batch(falq: Falq, *, name: str, source_name: str, source_sha256: str, run_key: str,
               max_spend: float | None = None) -> tuple[Batch, bool]:
    """Create (or join, for the same tenant and run key) the batch of a run. ``max_spend`` sets
    its spend cap (:mod:`falq.shared.spend.batch_cap`) before any job exists; None keeps the cap it has."""
    bid = batch_id_for(falq.tenant, run_key)
    if max_spend is not None:
        BatchCaps(falq.redis, prefix=falq.settings.key_prefix).set_cap(bid, max_spend)
    return BatchStore(falq.redis, prefix=falq.settings.key_prefix).open(
        bid, name=name, tenant=falq.tenant, source_name=source_name, source_sha256=source_sha256, run_key=run_key)


def enqueue_batch(falq: Falq, lines: Sequence[BulkLine], batch: Batch, *, chunk_size: int = 500,
                  on_chunk: Callable[[int, int], None] | None = None, priority: str | None = None) -> list[str]:
    """Enqueue planned lines (:func:`plan_chains`) into ``batch``, parents first; returns the
    job ids in the order of ``lines``. Idempotent: a rerun joins the jobs that exist.
    ``priority`` (``normal``/``low``) is the batch's ``X-Fal-Queue-Priority`` (None: the tenant's,
    else the lane's setting)."""
    if priority is not None and priority not in PRIORITIES:
        raise InvalidInput([FieldError("priority", PRIORITY_RULE)])
    store = BatchStore(falq.redis, prefix=falq.settings.key_prefix)
    job_of_line: dict[str, str] = {}
    ids: dict[int, str] = {}
    by_level: dict[int, list[BulkLine]] = {}
    line_ids = {ln.id for ln in lines if ln.id is not None}
    for ln in lines:
        by_level.setdefault(_depth(ln, lines), []).append(ln)
    done = 0
    for lv in sorted(by_level):
        level = by_level[lv]
        for start in range(0, len(level), chunk_size):
            chunk = level[start:start + chunk_size]
            reqs = [replace(ln.request, batch_id=batch.id, priority=priority,
                            input=_rewrite(ln.request.input, job_of_line, line_ids)) for ln in chunk]
            res = falq.submit_many(reqs)
            store.add_jobs(batch.id, [(job_id, ln.line) for (job_id, _), ln in zip(res, chunk, strict=True)])
            for (job_id, _), ln in zip(res, chunk, strict=True):
                ids[ln.line] = job_id
                if ln.id is not None:
                    job_of_line[ln.id] = job_id
            done += len(chunk)
            if on_chunk is not None:
                on_chunk(done, sum(1 for _, created in res if created))
    return [ids[ln.line] for ln in lines]


def _depth(ln: BulkLine, lines: Sequence[BulkLine], _memo: dict[int, int] | None = None) -> int:
    by_id = {x.id: x for x in lines if x.id is not None}
    depth = 0
    seen: set[int] = set()
    frontier = [ln]
    while frontier:
        nxt = []
        for x in frontier:
            for ref in refs_in(x.request.input).values():
                p = by_id.get(ref.target)
                if p is not None and p.line not in seen:
                    seen.add(p.line)
                    nxt.append(p)
        if nxt:
            depth += 1
        frontier = nxt
    return depth


def _rewrite(input: dict[str, Any], job_of_line: dict[str, str], line_ids: set[str]) -> dict[str, Any]:
    refs = refs_in(input)
    if not refs:
        return input
    urls = list(input["image_urls"])
    for pos, ref in refs.items():
        if ref.target in line_ids:
            urls[pos] = str(Ref(job_of_line[ref.target], ref.index))
    return {**input, "image_urls": urls}


# --- the batch service ------------------------------------------------------------------------------


@dataclass
class BatchView:
    """A batch with its tree: per depth (0: jobs without parents), counts by state."""

    batch: Batch
    levels: list[dict[str, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        doc = self.batch.as_json()
        doc["tree"] = [{"depth": d, "counts": c, "total": sum(c.values())} for d, c in enumerate(self.levels)]
        return doc


class Batches:
    """Show, cancel, retry and export batches of one tenant (``None``: every tenant's).

    Example::

        svc = Batches(Falq())
        svc.show("b5e0c...").as_json()["counts"]
        svc.retry("b5e0c...", which="moderated")
    """

    def __init__(self, falq: Falq, *, tenant: str | None = None) -> None:
        self.falq = falq
        self.tenant = tenant
        self.store = BatchStore(falq.redis, prefix=falq.settings.key_prefix)

    def recent(self, limit: int = 50) -> list[Batch]:
        return self.store.recent(tenant=self.tenant, limit=limit)

    def get(self, batch_id: str) -> Batch:
        return self.store.get(batch_id, tenant=self.tenant)

    def records(self, batch_id: str) -> list[tuple[int, str, JobRecord | None]]:
        self.get(batch_id)
        return self.store.records(batch_id, self.falq.store.get_many)

    def show(self, batch_id: str, *, tree: bool = True) -> BatchView:
        b = self.get(batch_id)
        view = BatchView(b)
        if tree:
            recs = {job_id: rec for _, job_id, rec in self.store.records(batch_id, self.falq.store.get_many)}
            if any(r is not None and r.parents for r in recs.values()):
                depth: dict[str, int] = {}

                def d(job_id: str, guard: int = 0) -> int:
                    if job_id in depth:
                        return depth[job_id]
                    rec = recs.get(job_id)
                    v = 0 if rec is None or not rec.parents or guard > 100 else \
                        1 + max(d(p, guard + 1) if p in recs else 0 for p in rec.parents)
                    depth[job_id] = v
                    return v

                for job_id, rec in recs.items():
                    if rec is None:
                        continue
                    lv = d(job_id)
                    while len(view.levels) <= lv:
                        view.levels.append({})
                    view.levels[lv][rec.state] = view.levels[lv].get(rec.state, 0) + 1
        return view

    def set_cap(self, batch_id: str, max_spend: Any) -> BatchView:
        """Set (``none``: remove) the batch's spend cap; jobs waiting at the old cap go on at their
        next poll once they fit. Raises :class:`InvalidInput` naming ``max_spend``."""
        usd = parse_cap(max_spend)
        self.get(batch_id)
        BatchCaps(self.falq.redis, prefix=self.falq.settings.key_prefix).set_cap(batch_id, usd)
        return self.show(batch_id, tree=False)

    def cancel(self, batch_id: str) -> dict[str, int]:
        """Cancel every job of the batch that has not ended; returns ``{outcome: n}``."""
        from falq.producers.admin import Admin

        admin = Admin(self.falq)
        out: dict[str, int] = {}
        # Parents first would cascade by itself; waiting children are cancelled directly anyway.
        for _, job_id, rec in self.records(batch_id):
            if rec is None or rec.terminal:
                continue
            outcome = admin.cancel(job_id).outcome
            out[outcome] = out.get(outcome, 0) + 1
        return out

    def retry(self, batch_id: str, *, which: str = "failed") -> list[str]:
        """Retry the batch's failed jobs (``which="moderated"``: only those fal's content
        checker refused); their children that they failed wait for them again."""
        if which not in RETRY_WHICH:
            raise InvalidInput([FieldError("which", f"must be one of {', '.join(RETRY_WHICH)}")])
        from falq.producers.admin import Admin

        members = self.records(batch_id)
        archived = self._archived_failed(batch_id) if any(rec is None for _, _, rec in members) else {}
        picked = []
        children: list[JobRecord] = []
        for _, job_id, live in members:
            rec = live or archived.get(job_id)  # a member Redis forgot: its catalogue row (Admin revives it)
            if rec is None or rec.state != "failed":
                continue
            moderated = rec.moderation is not None or (rec.error is not None and rec.error.type == "content_policy")
            if which == "moderated" and not moderated:
                continue
            if which == "failed" and rec.error is not None and rec.error.type == "parent_failed":
                if live is None:  # no Redis children set reopens it: retried after its parents, below
                    children.append(rec)
                continue  # reopened by its parent's retry (below), or left if its parent is not retried
            picked.append(job_id)
        # An archived child that a parent failed waits again once one of its parents is retried too.
        retried = set(picked)
        picked += [c.id for c in children if retried.intersection(c.parents)]
        if not picked:
            return []
        return [o.record.id for o in Admin(self.falq).retry(picked) if o.retried]

    def _archived_failed(self, batch_id: str) -> dict[str, JobRecord]:
        """The batch's failed jobs the catalogue holds (``{}`` without a catalogue)."""
        cat = self.falq.catalogue
        if cat is None:
            return {}
        from falq.shared.catalogue.store import CatalogueQuery

        q = CatalogueQuery(state="failed", batch_id=batch_id, tenant=self.tenant, limit=MAX_BATCH_ARCHIVED)
        return {rec.id: rec for rec in cat.search(q)}

    def rows(self, batch_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(completed rows, other rows)`` in line order: one result row per job (the shape of
        ``falq bulk``'s results file, plus ``parents``), presigned URLs included."""
        from falq.producers.bulk.wait import Presigner

        warnings: list[str] = []
        presign = Presigner(self.falq, warnings)
        ok_rows: list[dict[str, Any]] = []
        err_rows: list[dict[str, Any]] = []
        for line, job_id, rec in self.records(batch_id):
            row = result_row(line, _line_id(rec), job_id, rec, rec.metadata if rec else {}, presign)
            row["parents"] = rec.parents if rec is not None else []
            (ok_rows if row["state"] == "completed" else err_rows).append(row)
        return ok_rows, err_rows

    def results(self, batch_id: str, out: str | Path, errors: str | Path | None = None) -> tuple[Path, Path, int, int]:
        """Write the completed jobs to ``out`` and the others to ``errors`` (default: beside
        ``out``, ``NAME.errors.jsonl``), JSONL in line order (OpenAI-Batch style: an output file
        and an error file); returns ``(out, errors, n_ok, n_errors)``."""
        outp = Path(out)
        errp = Path(errors) if errors is not None else outp.with_name(outp.stem + ".errors.jsonl")
        ok_rows, err_rows = self.rows(batch_id)
        for path, rows in ((outp, ok_rows), (errp, err_rows)):
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            with tmp.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            tmp.replace(path)
        return outp, errp, len(ok_rows), len(err_rows)


def _line_id(rec: JobRecord | None) -> str | None:
    key = rec.idempotency_key if rec is not None else None
    if key and key.startswith("bulk:") and ":id:" in key:
        return key.split(":id:", 1)[1]
    return None


__all__ = ["BatchView", "Batches", "Price", "enqueue_batch", "open_batch", "plan_chains", "price"]
