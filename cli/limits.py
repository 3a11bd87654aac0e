"""``falq limits``, ``falq budget`` and ``falq retry``: the fal account's guard rails, by hand.

Examples::

    falq limits show                         # rate, burst, caps, budget; per key: outstanding, waiting, pause
    falq limits set --rate 20 --burst 1 --max-outstanding 44 --endpoint-cap fal-ai/qwen-image-2/pro/edit=4
    falq limits set --resume                 # lift a 402 / locked-account pause
    falq budget                              # spend today (UTC), budget, jobs paused for it
    falq budget --set 50 | falq budget --clear
    falq retry ID ID2 | falq retry --failed --since 2h

A thin layer over :class:`falq.producers.admin.Admin`, which the gateway's ``/v1/limits``,
``/v1/budget`` and retry routes use too: the values are passed as typed, the service checks
them (one set of rules) and a bad one is ``error: field: rule`` with exit code 2. Changes are
written to Redis (``{prefix}:limits:config``) and every worker applies them on its next
admission: no restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from falq.cli.output import EXIT_FAILED, EXIT_OK, emit_json, handle_errors, make_client, stdout
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.jobs.records import JobRecord

if TYPE_CHECKING:
    from falq.producers.admin import Admin, LimitsView


def _admin() -> Admin:
    from falq.producers.admin import Admin

    return Admin(make_client())


def _config_doc(view: LimitsView) -> dict[str, Any]:
    return {f: {"value": v, "source": view.sources[f]} for f, v in view.config.items()}


def _shown(field: str, value: Any) -> str:
    if field == "rate":
        return f"{value:g}/s" if value else "unlimited"
    if field == "max_outstanding":
        return str(value) if value else "unlimited"
    if field == "budget_daily":
        return "none" if value is None else f"${value:,.2f}/day (UTC)"
    if field == "max_outstanding_per_endpoint":
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


@click.group()
def limits() -> None:
    """Show or change the global limits every worker of a fal key shares."""


@limits.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def show(as_json: bool) -> int:
    """The configuration and, per fal key: requests outstanding, jobs waiting, pauses."""
    view = _admin().limits_show()
    if as_json:
        emit_json({"config": _config_doc(view), "keys": view.as_json()["keys"]})
        return EXIT_OK
    out = stdout()
    grid = Table.grid(padding=(0, 2))
    for field, value in view.config.items():
        grid.add_row(field, _shown(field, value), f"({view.sources[field]})")
    out.print(grid)
    if not view.keys:
        out.print("no fal key registered yet (a worker registers its key on start)")
    for st in view.keys:
        table = Table(title=f"fal key {st.suffix} (id {st.key_id})", show_edge=False, title_justify="left")
        table.add_column("outstanding")
        table.add_column("per endpoint")
        table.add_column("waiting (interactive/bulk/budget/locked)")
        table.add_column("paused")
        w = st.waiting
        paused = f"{st.paused_reason[:80]} ({st.paused_for_s:.0f}s left)" if st.paused_for_s else "no"
        table.add_row(str(st.outstanding), ", ".join(f"{k.removeprefix('fal-ai/qwen-image-2/')}={v}"
                                                     for k, v in st.per_endpoint.items()) or "-",
                      f"{w['interactive']}/{w['bulk']}/{w['budget']}/{w['locked']}", paused)
        out.print(table)
    return EXIT_OK


@limits.command("set")
@click.option("--rate", metavar="PER_S", help="Submissions per second per fal key, a number >= 0 (0: unlimited).")
@click.option("--burst", metavar="N", help="Token bucket burst, 1 to 1000000 (1: no window above the rate).")
@click.option("--max-outstanding", metavar="N",
              help="Requests outstanding at fal per key, 0 to 1000000 (0: unlimited).")
@click.option("--endpoint-cap", "endpoint_caps", multiple=True, metavar="ENDPOINT=N|none",
              help="Cap one endpoint's outstanding requests, 0 to 1000000 (repeatable; `none` removes the cap).")
@click.option("--resume", is_flag=True, help="Lift a pause caused by a 402 / locked account (every key).")
@click.option("--reset", is_flag=True, help="Forget the runtime configuration; workers re-seed it from FALQ_*.")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting configuration as JSON.")
@handle_errors
def set_limits(rate: str | None, burst: str | None, max_outstanding: str | None, endpoint_caps: tuple[str, ...],
               resume: bool, reset: bool, as_json: bool) -> int:
    """Change limits at runtime; every worker applies them on its next admission."""
    done = _admin().limits_set(rate=rate, burst=burst, max_outstanding=max_outstanding,
                               endpoint_caps=endpoint_caps or None, resume=resume, reset=reset)
    if as_json:
        emit_json({"config": _config_doc(done.view), "resumed": done.resumed})
        return EXIT_OK
    for field, value in done.written.items():
        click.echo(f"{field} = {value}")
    if done.reset:
        click.echo("runtime configuration forgotten; workers re-seed it from their FALQ_* settings")
    if done.resume:
        click.echo(f"resumed: {', '.join(done.resumed)}" if done.resumed else "no key was paused")
    return EXIT_OK


@click.command()
@click.option("--set", "set_usd", metavar="USD", help="Set the daily budget (USD per UTC day, 0 to 1e12).")
@click.option("--clear", is_flag=True, help="Remove the daily budget.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def budget(set_usd: str | None, clear: bool, as_json: bool) -> int:
    """Spend reserved today (UTC), the daily budget, and how many jobs wait for it."""
    if set_usd is not None and clear:
        raise InvalidInput([FieldError("", "give --set or --clear, not both")])
    admin = _admin()
    view = admin.budget_set(None if clear else set_usd) if set_usd is not None or clear else admin.budget_show()
    if as_json:
        emit_json(view.as_json())
        return EXIT_OK
    cap = view.budget_usd
    click.echo(f"spent today ({view.day} UTC): ${view.spent_usd:,.4f}")
    click.echo(f"daily budget: {'none' if cap is None else f'${cap:,.2f}'}"
               + ("" if view.remaining_usd is None else f"  (remaining ${view.remaining_usd:,.4f})"))
    click.echo(f"jobs paused for budget: {view.jobs_paused}")
    return EXIT_OK


@click.command()
@click.argument("job_ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed job (with --since: the recent ones).")
@click.option("--since", metavar="T", help="With --failed: only jobs that failed after T (30m, 2h, ISO, epoch).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@handle_errors
def retry(job_ids: tuple[str, ...], all_failed: bool, since: str | None, as_json: bool) -> int:
    """Run failed jobs again as new attempts of the same jobs (their error history is kept)."""
    if bool(job_ids) == all_failed:
        raise InvalidInput([FieldError("", "give job ids or --failed (not both)")])
    if since is not None and not all_failed:
        raise InvalidInput([FieldError("since", "only with --failed")])
    admin = _admin()
    outcomes = admin.retry_failed(since) if all_failed else admin.retry(job_ids)
    if as_json:
        emit_json([o.record.public() for o in outcomes])
    else:
        for o in outcomes:
            r = o.record
            if o.retried:
                click.echo(f"{r.id}: queued again (attempt {r.attempts + 1})")
            else:  # the reason names the state (e.g. "it completed: a completed job is not run again ...")
                click.echo(f"{r.id}: not retried: {o.reason or f'it is {r.state}'}")
            if o.warning:
                click.echo(f"{r.id}: warning: {o.warning}", err=True)
        if all_failed and not outcomes:
            click.echo("no failed jobs", err=True)
    # A retried chained job waits for its parents first ("waiting"): retried all the same.
    return EXIT_OK if all(o.retried or o.record.state == "queued" for o in outcomes) else EXIT_FAILED


def errors_view(recs: list[JobRecord]) -> Table:
    """Every job's error history, one row per error (``falq jobs --errors``)."""
    import datetime as dt

    table = Table(show_edge=False)
    for col in ("id", "attempt", "when (UTC)", "type", "message"):
        table.add_column(col, no_wrap=col != "message")
    for r in recs:
        for e in r.errors:
            when = dt.datetime.fromtimestamp(e.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(r.id, str(e.attempt), when, e.type + ("" if e.retryable else " (final)"), e.message)
    return table


def register(group: click.Group) -> None:
    """Add these commands to the ``falq`` group (one line in producers/cli.py)."""
    for cmd in (limits, budget, retry):
        group.add_command(cmd)


__all__ = ["errors_view", "register"]
