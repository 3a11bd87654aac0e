"""``falq report``: reports from the catalogue, each one SQL aggregation.

Examples::

    falq report spend --by day,endpoint --since 30d
    falq report spend --by month,tenant --since 2026-01-01 --format csv > spend.csv
    falq report spend --by day,metadata.project --since 7d --format json

Spend counts what fal billed where it said (``x-fal-billable-units``), else the price-table
estimate, for completed jobs (a failed job counts only an amount fal billed); jobs are placed
by when they finished (UTC).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import click
from rich.table import Table

from falq.cli.output import EXIT_OK, emit_json, handle_errors, stdout
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


def to_csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*keys, *VALUE_COLUMNS], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in [*keys, *VALUE_COLUMNS]})
    return buf.getvalue()


def to_table(rows: list[dict[str, Any]], keys: list[str]) -> Table:
    t = Table(title="spend (USD)", show_footer=True)
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
