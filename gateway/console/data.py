"""What the console's pages show, read from Redis and S3: blocking functions, no HTML.

Every function here is plain I/O and arithmetic (the routes in :mod:`falq.gateway.console.pages`
call them through the thread pool and render the answer with Jinja2). The figures are the
ones ``falq top`` and ``falq metrics`` read (:func:`falq.shared.metrics.read_snapshot`); the
budget is :meth:`falq.producers.admin.Admin.budget_show`, the same as ``falq budget``.

Example::

    page = gallery(store, GalleryQuery(state="completed", text="fox"), principal)
    [c.rec.id for c in page.cards], page.next_before
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from falq.gateway.console.access import Principal
from falq.gateway.rest.search import JobQuery, search
from falq.producers.admin import Admin, BudgetView
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.fal.endpoints import ENDPOINTS, TEXT_TO_IMAGE
from falq.shared.jobs.records import STATES, TERMINAL, JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.keys import Keys
from falq.shared.metrics import Snapshot, read_snapshot
from falq.shared.settings import Settings

#: Jobs per gallery page (one thumbnail each).
PAGE_SIZE = 60
CHART_MINUTES = 60
#: Failure reasons shown on their own line (fal's content checker refused the prompt or image).
MODERATION = "content_policy"


# --- overview --------------------------------------------------------------------------------------


@dataclass
class Bar:
    """One minute of the throughput chart, already in SVG coordinates."""

    x: float
    w: float
    done_y: float
    done_h: float
    fail_y: float
    fail_h: float
    minute: str
    completed: int
    failed: int


@dataclass
class Chart:
    """Completed and failed jobs per minute over the last hour, as bars for an inline SVG."""

    bars: list[Bar]
    peak: int
    total_completed: int
    total_failed: int
    width: int = 1200
    height: int = 220
    left: int = 36
    bottom: int = 18


def chart(minutes: list[tuple[int, int, int]], *, width: int = 1200, height: int = 220) -> Chart:
    """Bars for ``(epoch minute, completed, failed)`` rows, oldest first (stacked: failed on top)."""
    left, bottom, top = 36, 18, 6
    peak = max([c + f for _, c, f in minutes] + [1])
    plot_h = height - bottom - top
    step = (width - left) / max(1, len(minutes))
    bars = []
    for i, (m, c, f) in enumerate(minutes):
        dh, fh = plot_h * c / peak, plot_h * f / peak
        base = height - bottom
        bars.append(Bar(x=round(left + i * step + 0.5, 2), w=round(max(1.0, step - 1.5), 2),
                        done_y=round(base - dh, 2), done_h=round(dh, 2), fail_y=round(base - dh - fh, 2),
                        fail_h=round(fh, 2), minute=dt.datetime.fromtimestamp(m * 60, dt.UTC).strftime("%H:%M"),
                        completed=c, failed=f))
    return Chart(bars, peak, sum(c for _, c, _ in minutes), sum(f for _, _, f in minutes), width, height, left,
                 bottom)


def per_minute(r: Any, prefix: str, now: float, minutes: int = CHART_MINUTES) -> list[tuple[int, int, int]]:
    """``(minute, completed, failed)`` for the last ``minutes`` clock minutes (one pipeline)."""
    last = int(now // 60)
    span = list(range(last - minutes + 1, last + 1))
    pipe = r.pipeline(transaction=False)
    for m in span:
        pipe.hmget(Keys(prefix).metrics_minute(m), "completed", "failed")
    return [(m, int(c or 0), int(f or 0)) for m, (c, f) in zip(span, pipe.execute(), strict=True)]


@dataclass
class Overview:
    """Everything the overview shows (see :func:`overview`)."""

    taken_at: float
    chart: Chart
    states: list[tuple[str, int]]
    queue_depth: dict[str, int]
    tenants: list[TenantRow]
    outstanding: int
    outstanding_cap: int | None
    budget: BudgetView
    failures: list[tuple[str, int]]
    retries: list[tuple[str, int]]
    moderated: int
    rate_1m: float
    rate_15m: float

    @property
    def outstanding_pct(self) -> float:
        return min(100.0, 100.0 * self.outstanding / self.outstanding_cap) if self.outstanding_cap else 0.0

    @property
    def budget_pct(self) -> float:
        b = self.budget.budget_usd
        return min(100.0, 100.0 * self.budget.spent_usd / b) if b else 0.0

    @property
    def stamp(self) -> str:
        return dt.datetime.fromtimestamp(self.taken_at, dt.UTC).strftime("%H:%M:%S UTC")


def overview(store: JobStore, settings: Settings, admin: Admin, *, now: float | None = None) -> Overview:
    """The account-wide overview (operators and ``admin`` keys; see the pages for who sees it)."""
    now = time.time() if now is None else now
    snap: Snapshot = read_snapshot(store.r, settings, now=now)
    fails = {k[0]: int(v) for k, v in snap.labelled("failure").items() if k}
    retries = {k[0]: int(v) for k, v in snap.labelled("retry").items() if k}
    moderated = fails.pop(MODERATION, 0)
    return Overview(
        taken_at=now, chart=chart(per_minute(store.r, settings.key_prefix, now)),
        states=[(s, snap.states.get(s, 0)) for s in STATES], queue_depth=dict(snap.queue_depth),
        tenants=tenant_rows(store, settings, snap), outstanding=snap.outstanding,
        outstanding_cap=snap.outstanding_cap, budget=admin.budget_show(),
        failures=sorted(fails.items(), key=lambda kv: -kv[1]), retries=sorted(retries.items(), key=lambda kv: -kv[1]),
        moderated=moderated, rate_1m=snap.jobs_per_minute(1), rate_15m=snap.jobs_per_minute(15),
    )


@dataclass
class TenantRow:
    """One tenant on the overview: waiting per lane, at fal, finished, spend (as ``falq top``)."""

    tenant: str
    waiting: dict[str, int]
    outstanding: int
    completed: int
    failed: int
    spend_usd: float


def tenant_rows(store: JobStore, settings: Settings, snap: Snapshot) -> list[TenantRow]:
    """Per tenant: jobs waiting in each lane (fair dispatch's ready sets), requests outstanding
    at fal, jobs finished and spend today, as :mod:`falq.shared.fairshare.scheduler` and the metrics count them."""
    from falq.shared.fairshare.scheduler import FairShare

    finished = snap.labelled("tenant_finished")
    rows = []
    for f in FairShare(store.r, settings).figures(list(snap.tenants)):
        rows.append(TenantRow(f.tenant, dict(f.ready), f.outstanding,
                              int(sum(v for k, v in finished.items() if k[-1] == f.tenant and k[0] == "completed")),
                              int(sum(v for k, v in finished.items() if k[-1] == f.tenant and k[0] == "failed")),
                              f.spend_today_usd))
    return rows


# --- gallery ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryQuery:
    """The gallery's filters; ``before`` is the paging cursor (exclusive score of the index walked)."""

    state: str | None = None
    endpoint: str | None = None
    batch: str | None = None
    tenant: str | None = None
    day: dt.date | None = None
    text: str | None = None
    before: float | None = None

    def params(self, **override: Any) -> dict[str, str]:
        """The query as URL parameters (for links: filters kept, the cursor replaced)."""
        doc = {"state": self.state, "endpoint": self.endpoint, "batch": self.batch, "tenant": self.tenant,
               "date": self.day.isoformat() if self.day else None, "q": self.text,
               "before": repr(self.before) if self.before is not None else None}
        doc.update(override)
        return {k: str(v) for k, v in doc.items() if v not in (None, "")}


def parse_gallery(params: Any) -> GalleryQuery:
    """Read the gallery's query parameters; raise :class:`InvalidInput` naming every bad one."""
    errors: list[FieldError] = []

    def text(name: str, limit: int = 200) -> str | None:
        value = (params.get(name) or "").strip()
        if len(value) > limit:
            errors.append(FieldError(name, f"must be at most {limit} characters"))
            return None
        return value or None

    state = text("state")
    if state is not None and state not in STATES:
        errors.append(FieldError("state", f"must be one of {', '.join(STATES)}"))
    endpoint = text("endpoint")
    if endpoint is not None and endpoint not in ENDPOINTS:
        errors.append(FieldError("endpoint", "must be one of falq's endpoints"))
    day = None
    raw_day = text("date")
    if raw_day:
        try:
            day = dt.date.fromisoformat(raw_day)
        except ValueError:
            errors.append(FieldError("date", "must be a date like 2026-12-01"))
    before = None
    raw_before = text("before", 40)
    if raw_before:
        try:
            before = float(raw_before)
        except ValueError:
            errors.append(FieldError("before", "must be a number (the cursor of the next page)"))
    batch, tenant, words = text("batch"), text("tenant"), text("q")
    if errors:
        raise InvalidInput(errors)
    return GalleryQuery(state=state, endpoint=endpoint, batch=batch, tenant=tenant, day=day, text=words,
                        before=before)


@dataclass
class Card:
    rec: JobRecord

    @property
    def prompt(self) -> str:
        return str(self.rec.input.get("prompt", ""))

    @property
    def image(self) -> Any:
        return min(self.rec.outputs, key=lambda i: i.index) if self.rec.outputs else None


@dataclass
class GalleryPage:
    cards: list[Card]
    scanned: int
    next_before: float | None
    capped: bool = False
    query: GalleryQuery = field(default_factory=GalleryQuery)
    #: Whether the SQL catalogue's history is in the page: ``included``, ``off`` or ``unavailable``.
    history: str = "off"


def gallery(store: JobStore, q: GalleryQuery, p: Principal, *, catalogue: Any = None,
            size: int = PAGE_SIZE) -> GalleryPage:
    """One page of the jobs matching ``q`` that ``p`` may see, newest first.

    The same search as ``GET /v1/jobs`` (:func:`falq.gateway.rest.search.search`): the key's tenant
    only, Redis' live records merged with the SQL catalogue's history when it is on, and
    ``next_before`` (the listing's ``next_until``) continues where the page ended.
    """
    since = until = None
    if q.day is not None:
        since = dt.datetime.combine(q.day, dt.time(), dt.UTC).timestamp()
        until = since + 86400
    if q.before is not None:
        until = q.before if until is None else min(until, q.before)
    if q.tenant is not None and q.tenant != p.tenant:  # a key sees its own tenant only
        return GalleryPage([], 0, None, query=q)
    page = search(store, JobQuery(state=q.state, since=since, until=until, endpoint=q.endpoint, limit=size,
                                  text=q.text, batch_id=q.batch), tenant=p.tenant, catalogue=catalogue)
    cards = [Card(JobRecord.model_validate(doc)) for doc in page["jobs"]]
    return GalleryPage(cards, int(page["scanned"]), page["next_until"], capped=bool(page["truncated"]), query=q,
                       history=str(page.get("history", "off")))


# --- one job ---------------------------------------------------------------------------------------

STATE_LABELS = {
    "waiting": "waiting for its parents",
    "queued": "queued in falq",
    "submitting": "submitting to fal",
    "in_queue": "at fal, in queue",
    "in_progress": "at fal, in progress",
    "mirroring": "mirroring to S3",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass
class Step:
    state: str
    label: str
    at: float
    seconds: float | None  # None: the job is still in this state

    @property
    def when(self) -> str:
        return dt.datetime.fromtimestamp(self.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def timeline(rec: JobRecord) -> list[Step]:
    """The states the job went through (its last entry of each), in time order, with durations.

    A retried job re-enters states; the record keeps the latest time of each, so the timeline
    shows the latest pass through every state. The current state of a running job has no
    duration yet (``seconds`` None).
    """
    seen = sorted(rec.timestamps.items(), key=lambda kv: kv[1])
    out = []
    for i, (state, at) in enumerate(seen):
        if i + 1 < len(seen):
            secs: float | None = seen[i + 1][1] - at
        else:
            secs = 0.0 if state in TERMINAL else None
        out.append(Step(state, STATE_LABELS.get(state, state), at, secs))
    return out


def shown_input(data: dict[str, Any], limit: int = 300) -> str:
    """The input as indented JSON, long strings (data URIs) cut to ``limit`` characters."""

    def cut(v: Any) -> Any:
        if isinstance(v, str) and len(v) > limit:
            return f"{v[:limit]}… ({len(v)} characters)"
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, list):
            return [cut(x) for x in v]
        return v

    return json.dumps(cut(data), indent=2, ensure_ascii=False)


_CLI_FLAGS = ("negative_prompt", "image_size", "seed", "num_images", "output_format")


def commands(rec: JobRecord, base_url: str) -> dict[str, str]:
    """``falq`` and ``curl`` commands that enqueue the same job again (no key: ``$FALQ_API_KEY``).

    Every value is shell-quoted; an input holding inline images (data URIs) is too long to
    copy sensibly, so it gets only the status commands.
    """
    out = {"status": f"falq status {shlex.quote(rec.id)}",
           "curl_status": f'curl -H "Authorization: Key $FALQ_API_KEY" {shlex.quote(f"{base_url}/v1/jobs/{rec.id}")}'}
    body = json.dumps({"endpoint": rec.endpoint, "input": rec.input, "lane": rec.lane}, separators=(",", ":"))
    if len(body) > 8000:
        return out
    out["curl"] = (f'curl -X POST -H "Authorization: Key $FALQ_API_KEY" -H "content-type: application/json" '
                   f"-d {shlex.quote(body)} {shlex.quote(f'{base_url}/v1/jobs')}")
    if rec.endpoint in TEXT_TO_IMAGE.values() and isinstance(rec.input.get("prompt"), str):
        parts = ["falq", "generate", shlex.quote(rec.input["prompt"])]
        if rec.endpoint == TEXT_TO_IMAGE["pro"]:
            parts.append("--pro")
        for name in _CLI_FLAGS:
            value = rec.input.get(name)
            if value is None or value == "":
                continue
            if isinstance(value, dict):  # {"width": w, "height": h}
                value = f"{value.get('width')}x{value.get('height')}"
            parts += [f"--{name.replace('_', '-')}", shlex.quote(str(value))]
        for name, flag in (("enable_prompt_expansion", "--no-prompt-expansion"),
                           ("enable_safety_checker", "--no-safety-checker")):
            if rec.input.get(name) is False:
                parts.append(flag)
        if rec.lane != "interactive":
            parts += ["--lane", rec.lane]
        out["falq"] = " ".join(parts)
    return out


def children_of(store: JobStore, job_id: str, cap: int = 100) -> list[str]:
    """Jobs whose input references this job's outputs (``{p}:children:{id}``, chains), sorted."""
    raw = store.r.srandmember(store.keys.children(job_id), cap)
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in (raw or []))


# --- batches -----------------------------------------------------------------------------------------


def batches(store: JobStore, p: Principal, limit: int = 50) -> list[Any]:
    """The newest batches of ``p``'s tenant (:class:`falq.shared.batches.store.Batch`: exact counts,
    spend, throughput, ETA), as ``falq batch list`` and ``GET /v1/batches`` show them."""
    from falq.shared.batches.store import BatchStore

    return list(BatchStore(store.r, prefix=store.prefix).recent(tenant=p.tenant, limit=limit))
