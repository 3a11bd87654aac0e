"""``falq report``: reports from the catalogue, each one SQL aggregation.

Examples::

    falq report spend --by day,endpoint --since 30d
    falq report spend --by month,tenant --since 2026-01-01 --format csv > spend.csv
    falq report spend --by day,metadata.project --since 7d --format json
    FAL_ADMIN_KEY=... falq report reconcile --since 1d

Spend shows, side by side, ``estimate`` (num_images x the account's unit price when the job was
enqueued) and ``billed`` (fal's ``x-fal-billable-units`` x the account's unit price, from fal's
pricing API: :mod:`falq.shared.spend.pricing`); ``spend`` counts billed where fal said, else the
estimate, for completed jobs (a failed job counts only an amount fal billed); jobs are placed by
when they finished (UTC).

``reconcile`` compares falq's cost of every fal request with fal's own billing events
(:mod:`falq.shared.spend.reconcile`; needs ``FAL_ADMIN_KEY``) and prints each difference.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import click
from rich.table import Table

from falq.cli.output import EXIT_FAILED, EXIT_INVALID, EXIT_OK, emit_json, handle_errors, stdout
from falq.shared.errors import FieldError, InvalidInput

VALUE_COLUMNS = ("jobs", "completed", "images", "estimate", "billed", "spend")


@click.group()
def report() -> None:
    """Reports from the catalogue of finished jobs."""


@report.command()
@click.option("--by", "by", default="day,endpoint", show_default=True,
              help="Group keys, comma separated: day, month, endpoint, tenant, batch, state, lane, metadata.KEY.")
@click.option("--since", metavar="T", default="30d", show_default=True,
              help="Jobs finished after T: 30d, 12h, an ISO date/time or epoch seconds.")
@click.option("--until", metavar="T", help="Jobs finished before T.")
@click.option("--tenant", metavar="NAME", help="Only this tenant's jobs.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@handle_errors
def spend(by: str, since: str, until: str | None, tenant: str | None, fmt: str) -> int:
    """Spend grouped by the --by keys (a SQL GROUP BY over the catalogue)."""
    from falq.shared.catalogue.store import get_catalogue
    from falq.shared.settings import get_settings
    from falq.shared.since import parse_since

    keys = [k.strip() for k in by.split(",") if k.strip()]
    times: dict[str, float | None] = {}
    errors: list[FieldError] = []
    for name, text in (("since", since), ("until", until)):
        try:
            times[name] = parse_since(text) if text else None
        except InvalidInput:
            errors.append(FieldError(name, "must be a duration (30s, 10m, 2h, 1d), an ISO date/time or epoch seconds"))
    if errors:
        raise InvalidInput(errors)
    rows = get_catalogue(get_settings()).spend(keys, since=times["since"], until=times["until"], tenant=tenant)
    if fmt == "json":
        emit_json(rows)
    elif fmt == "csv":
        click.echo(to_csv(rows, keys), nl=False)
    else:
        stdout().print(to_table(rows, keys))
    return EXIT_OK


@report.command()
@click.option("--since", metavar="T", default="1d", show_default=True,
              help="Requests of jobs finished after T: 1d, 12h, an ISO date/time or epoch seconds.")
@click.option("--until", metavar="T", help="Jobs finished before T.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@handle_errors
def reconcile(since: str, until: str | None, fmt: str) -> int:
    """Compare falq's cost of each fal request with fal's billing events; print every difference.

    Needs FAL_ADMIN_KEY (an ADMIN-scope fal key; never logged or recorded). fal's billing records
    arrive with a delay, so recent requests may show as only_in_falq until fal records them.
    Exit 0: no difference; 1: differences; 2: bad input or no admin key.
    """
    from falq.cli.output import make_client
    from falq.shared.settings import get_settings
    from falq.shared.since import parse_since
    from falq.shared.spend.reconcile import (
        DELAY_NOTE,
        NO_ADMIN_KEY,
        compare,
        falq_costs,
        fetch_billing_events,
        records_since,
    )

    times: dict[str, float | None] = {}
    errors: list[FieldError] = []
    for name, text in (("since", since), ("until", until)):
        try:
            times[name] = parse_since(text) if text else None
        except InvalidInput:
            errors.append(FieldError(name, "must be a duration (30s, 10m, 2h, 1d), an ISO date/time or epoch seconds"))
    if errors:
        raise InvalidInput(errors)
    settings = get_settings()
    if not settings.fal_admin_key_value():
        if fmt == "json":
            emit_json({"error": "no_admin_key", "message": NO_ADMIN_KEY, "note": DELAY_NOTE})
        else:
            click.echo(f"error: {NO_ADMIN_KEY}", err=True)
        return EXIT_INVALID
    start = times["since"]
    assert start is not None
    falq = make_client(None)
    recs = records_since(falq, start, times["until"])
    costs, submitted = falq_costs(recs)
    events = fetch_billing_events(settings, start, times["until"])
    diffs = compare(costs, submitted, events)
    falq_total = round(sum(c.cost_usd for c in costs.values()), 6)
    fal_total = round(sum(float(e.get("cost_total") or 0.0) for e in events), 6)
    if fmt == "json":
        emit_json({"since": start, "until": times["until"], "requests_falq": len(costs), "events_fal": len(events),
                   "falq_usd": falq_total, "fal_usd": fal_total, "differences": [d.as_json() for d in diffs],
                   "note": DELAY_NOTE})
    else:
        out = stdout()
        out.print(f"note: {DELAY_NOTE}")
        out.print(f"falq: {len(costs)} request(s) with a cost, ${falq_total:,.6f}; "
                  f"fal: {len(events)} billing event(s), ${fal_total:,.6f}")
        if diffs:
            t = Table(title=f"{len(diffs)} difference(s)")
            for c in ("request_id", "kind", "job_id", "endpoint", "falq_usd", "fal_usd", "falq_units", "fal_units"):
                t.add_column(c, justify="right" if c.endswith(("usd", "units")) else "left")
            for d in diffs:
                t.add_row(d.request_id, d.kind, d.job_id or "-", d.endpoint or "-", f"{d.falq_usd:.6f}",
                          f"{d.fal_usd:.6f}", "-" if d.falq_units is None else f"{d.falq_units:g}",
                          "-" if d.fal_units is None else f"{d.fal_units:g}")
            out.print(t)
        else:
            out.print("no differences: every request costs the same in falq and in fal's billing events")
    return EXIT_FAILED if diffs else EXIT_OK


def to_csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*keys, *VALUE_COLUMNS], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in [*keys, *VALUE_COLUMNS]})
    return buf.getvalue()


def to_table(rows: list[dict[str, Any]], keys: list[str]) -> Table:
    t = Table(title="spend (USD)", show_footer=True,
              caption="estimate: num_images x the account's unit price at enqueue; billed: fal's "
                      "x-fal-billable-units x the account's unit price (fal's pricing API)")
    totals = {c: sum(r[c] for r in rows) for c in VALUE_COLUMNS}
    for i, k in enumerate(keys):
        t.add_column(k, footer="total" if i == 0 else "")
    for c in VALUE_COLUMNS:
        fmt = "{:,}" if c in ("jobs", "completed", "images") else "{:,.4f}"
        t.add_column(c, justify="right", footer=fmt.format(totals[c]))
    for r in rows:
        t.add_row(*[str(r.get(k) if r.get(k) is not None else "-") for k in keys],
                  *[("{:,}" if c in ("jobs", "completed", "images") else "{:,.4f}").format(r[c])
                    for c in VALUE_COLUMNS])
    return t
