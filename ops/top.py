"""``falq top``: a live terminal view of falq, no Docker, Prometheus or browser needed.

It reads the same Redis figures as ``falq metrics`` (see :mod:`falq.shared.metrics`) once a
second: jobs per minute over 1/5/15 minutes, jobs per state, queue depth per lane,
failures and retries by reason, latency percentiles, outstanding requests at fal against
the cap, spend today, and per tenant the jobs finished and spend, and the fair-share figures:
spend today, jobs waiting in its ready sets per lane, dispatched, and outstanding at fal.

Example::

    falq top              # live, Ctrl-C to leave
    falq top --once       # one snapshot, e.g. for a cron mail or a test
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from falq.shared.jobs.records import STATES
from falq.shared.metrics import HISTOGRAMS, Snapshot, fmt_seconds, read_snapshot
from falq.shared.settings import Settings

_LATENCY_LABELS = {
    "queue_wait": "fal queue wait",
    "inference": "fal inference",
    "mirror": "fal done -> S3",
    "end_to_end": "enqueue -> done",
}


def _table(title: str, *, header: bool = True) -> Table:
    # Borderless tables side by side: the whole view fits an 80 x 24 terminal.
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
                 show_header=header, pad_edge=False)


def render(snap: Snapshot) -> RenderableType:
    """One screen of ``falq top`` for ``snap``."""
    stamp = datetime.fromtimestamp(snap.taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = Text.assemble(("falq top", "bold"), f"  {stamp}  (Ctrl-C to quit)")

    rate = _table("jobs / min")
    rate.add_column("")
    for window in ("1m", "5m", "15m"):
        rate.add_column(window, justify="right")
    for state in ("completed", "failed", "cancelled"):
        rate.add_row(state, *(f"{snap.jobs_per_minute(w, state):.1f}" for w in (1, 5, 15)))

    fal = _table("fal, broker, spend", header=False)
    fal.add_column("what")
    fal.add_column("value", justify="right")
    cap = snap.outstanding_cap
    fal.add_row("outstanding at fal", f"{snap.outstanding} / {cap}" if cap else f"{snap.outstanding} (no cap)")
    for lane, n in snap.queue_depth.items():
        fal.add_row(f"queue depth {lane}", str(n))
    if snap.unacked is not None:
        fal.add_row("delivered, not acked", str(snap.unacked))
    fal.add_row(f"spend today ({snap.spend_source})", f"${snap.spend_today:,.2f}")

    states = _table("jobs by state")
    states.add_column("state")
    states.add_column("jobs", justify="right")
    for s in STATES:
        states.add_row(s, str(snap.states.get(s, 0)))

    lat = _table("latency")
    for col in ("", "n", "p50", "p90", "p99"):
        lat.add_column(col, justify="right" if col else "left")
    for name in HISTOGRAMS:
        h = snap.histogram(name)
        lat.add_row(_LATENCY_LABELS[name], str(h.count), *(fmt_seconds(h.quantile(q)) for q in (0.5, 0.9, 0.99)))

    why = _table("failures and retries")
    why.add_column("reason")
    why.add_column("failed jobs", justify="right")
    why.add_column("retries", justify="right")
    failures, retries = snap.labelled("failure"), snap.labelled("retry")
    # Moderation first and on its own: a content-checker refusal is not a crash.
    for reason in sorted({*failures, *retries}, key=lambda r: (r[0] != "content_policy", r)):
        label = "content_policy (moderated)" if reason[0] == "content_policy" else reason[0]
        why.add_row(label, f"{failures.get(reason, 0):.0f}", f"{retries.get(reason, 0):.0f}")
    if not failures and not retries:
        why.add_row("(none)", "0", "0")

    grid = Table.grid(padding=(0, 4))
    grid.add_column()
    grid.add_column()
    grid.add_row(rate, fal)
    grid.add_row(states, Group(lat, why))
    return Group(head, grid, tenants_table(snap))


def tenants_table(snap: Snapshot) -> Table:
    """Per tenant: jobs finished (completed / failed) and spend; tenants no longer in the store
    are one ``other`` row. (The fair-share columns sit beside these.)"""
    table = _table("tenants")
    # Fair share (falq.shared.fairshare.scheduler): spend today (the limiter's reservations), jobs waiting
    # in the tenant's ready sets (interactive / bulk), dispatched not yet done, and at fal now.
    for col in ("tenant", "completed", "failed", "spend", "today", "waiting i/b", "dispatched", "at fal"):
        table.add_column(col, justify="right" if col != "tenant" else "left")
    finished, spend = snap.labelled("tenant_finished"), snap.labelled("tenant_spend")
    fair = {f.tenant: f for f in snap.fair}
    names = sorted({*snap.tenants, *(k[-1] for k in finished), *(k[-1] for k in spend)})
    for name in names:
        f = fair.get(name)
        share = [f"${f.spend_today_usd:,.2f}", f"{f.ready['interactive']} / {f.ready['bulk']}", str(f.dispatched),
                 str(f.outstanding)] if f else ["", "", "", ""]
        table.add_row(name, f"{finished.get(('completed', name), 0):.0f}", f"{finished.get(('failed', name), 0):.0f}",
                      f"${spend.get((name,), 0.0):,.2f}", *share)
    return table


def run(settings: Settings, *, once: bool = False, interval: float = 1.0, console: Console | None = None) -> int:
    """Show the view until Ctrl-C (or print one snapshot with ``once``)."""
    console = console or Console()
    r = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        if once:
            console.print(render(read_snapshot(r, settings)))
            return 0
        with Live(render(read_snapshot(r, settings)), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(read_snapshot(r, settings)))
    except KeyboardInterrupt:
        return 0
    finally:
        r.close()
