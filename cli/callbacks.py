"""``falq callbacks``: the per-job callbacks still to be delivered, their tries, redelivery.

Examples::

    falq callbacks pending                   # due/pending callbacks: tries, next attempt, last try
    falq callbacks pending --failed          # those that gave up (FALQ_CALLBACK_RETRY_FOR_S ran out, or refused)
    falq callbacks log 8f3e...               # every try of one job: time, status code or error, final
    falq callbacks redeliver 8f3e...         # send it again (same X-Falq-Delivery-Id)
    falq callbacks redeliver --failed --since 2h

A thin layer over :class:`falq.producers.admin.Admin` (the callback outbox lives in Redis,
:mod:`falq.shared.callbacks.outbox`; every worker delivers from it). Bad values are
``error: field: rule`` with exit code 2.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from falq.cli.output import EXIT_OK, emit_json, handle_errors, make_client, stdout
from falq.shared.errors import FieldError, InvalidInput

if TYPE_CHECKING:
    from falq.producers.admin import Admin
    from falq.shared.callbacks.outbox import CallbackView


def _admin() -> Admin:
    from falq.producers.admin import Admin

    return Admin(make_client())


def _utc(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _next(v: CallbackView, now: float) -> str:
    if v.status == "failed":
        return f"failed {_utc(v.failed_at)}"
    if v.next_at is None or v.next_at <= now:
        return "due now"
    return f"in {v.next_at - now:.0f}s"


def _try(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "-"
    what = str(doc.get("status_code") or doc.get("error") or "?")
    return f"{what} at {_utc(doc.get('at'))}"


@click.group()
def callbacks() -> None:
    """Per-job callbacks: what is still to be delivered, every try, redelivery."""


@callbacks.command("pending")
@click.option("--failed", is_flag=True, help="The callbacks that gave up instead (newest first).")
@click.option("--since", metavar="T", help="With --failed: only those that gave up after T (30m, 2h, ISO, epoch).")
@click.option("--limit", default="100", show_default=True, metavar="N", help="At most N callbacks.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def pending(failed: bool, since: str | None, limit: str, as_json: bool) -> int:
    """Callbacks not delivered yet: tries so far, next attempt, the last try."""
    views = _admin().callbacks_pending(failed=failed, since=since, limit=limit)
    if as_json:
        emit_json([v.as_json() for v in views])
        return EXIT_OK
    if not views:
        click.echo("no failed callbacks" if failed else "no pending callbacks", err=True)
        return EXIT_OK
    now = time.time()
    table = Table(show_edge=False)
    for col in ("id", "host", "tries", "next attempt", "last try", "delivery id"):
        table.add_column(col, no_wrap=True)
    for v in views:
        table.add_row(v.job_id, v.url_host or "-", str(v.tries), _next(v, now), _try(v.last), v.delivery_id or "-")
    stdout().print(table)
    return EXIT_OK


@callbacks.command("redeliver")
@click.argument("job_ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Every callback that gave up (with --since: recent ones).")
@click.option("--since", metavar="T", help="With --failed: only those that gave up after T (30m, 2h, ISO, epoch).")
@click.option("--json", "as_json", is_flag=True, help="Print the re-queued callbacks as JSON.")
@handle_errors
def redeliver(job_ids: tuple[str, ...], all_failed: bool, since: str | None, as_json: bool) -> int:
    """Queue callbacks again, due now, with a fresh retry window (same X-Falq-Delivery-Id)."""
    if bool(job_ids) == all_failed:
        raise InvalidInput([FieldError("", "give job ids or --failed (not both)")])
    if since is not None and not all_failed:
        raise InvalidInput([FieldError("since", "only with --failed")])
    admin = _admin()
    views = admin.redeliver_failed(since) if all_failed else admin.redeliver(job_ids)
    if as_json:
        emit_json([v.as_json() for v in views])
        return EXIT_OK
    for v in views:
        click.echo(f"{v.job_id}: queued again (delivery id {v.delivery_id})")
    if all_failed and not views:
        click.echo("no failed callbacks", err=True)
    return EXIT_OK


@callbacks.command("log")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def log(job_id: str, as_json: bool) -> int:
    """Every try of one job's callback: when, status code or error, whether it was final."""
    tries = _admin().callback_log(job_id)
    if as_json:
        emit_json(tries)
        return EXIT_OK
    if not tries:
        click.echo("no callback tries", err=True)
        return EXIT_OK
    table = Table(show_edge=False)
    for col in ("try", "when (UTC)", "status / error", "final", "delivery id"):
        table.add_column(col, no_wrap=col != "status / error")
    for t in tries:
        table.add_row(str(t.get("try", "?")), _utc(t.get("at")), str(t.get("status_code") or t.get("error") or "?"),
                      "delivered" if t.get("delivered") else "yes" if t.get("final") else "no",
                      str(t.get("delivery_id", "-")))
    stdout().print(table)
    return EXIT_OK


__all__ = ["callbacks"]
