"""``falq limits``, ``falq budget`` and ``falq retry``: the fal account's guard rails, by hand.

Examples::

    falq limits show                         # rate, burst, caps, budget; per key: outstanding, waiting, pause
    falq limits set --rate 20 --burst 1 --max-outstanding 44 --endpoint-cap fal-ai/qwen-image-2/pro/edit=4
    falq limits set --resume                 # lift a 402 / locked-account pause
    falq budget                              # spend today (UTC), budget, jobs paused for it
    falq budget --set 50 | falq budget --clear
    falq retry ID ID2 | falq retry --failed --since 2h

Changes are written to Redis (``{prefix}:limits:config``) and every worker applies them on
its next admission: no restart.
"""

from __future__ import annotations

import json
import math
from typing import Any

import click
from rich.table import Table

from falq.cli.output import EXIT_FAILED, EXIT_OK, emit_json, handle_errors, make_client, stdout
from falq.producers.client import Falq
from falq.shared.endpoints import ENDPOINTS
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.limits import (
    CONFIG_FIELDS,
    NO_BUDGET,
    Limiter,
    config_defaults,
    config_key,
    key_id,
    known_keys,
    read_config,
    spend_today,
    write_config,
)
from falq.shared.records import JobRecord
from falq.shared.since import parse_since


def _limiters(falq: Falq) -> list[tuple[Limiter, str]]:
    keys = known_keys(falq.redis, falq.settings.key_prefix)
    own = key_id(falq.settings.fal_key_value())
    if falq.settings.fal_key_value() and own not in keys:
        keys[own] = falq.settings.key_suffix()
    return [(Limiter(falq.redis, falq.settings, kid=kid), suffix) for kid, suffix in sorted(keys.items())]


def _config_doc(falq: Falq) -> dict[str, Any]:
    stored = read_config(falq.redis, falq.settings.key_prefix)
    defaults = config_defaults(falq.settings)
    doc: dict[str, Any] = {}
    for field in CONFIG_FIELDS:
        raw = stored.get(field)
        doc[field] = {"value": _parse(field, raw if raw is not None else defaults[field]),
                      "source": "redis" if raw is not None else "unseeded (this shell's FALQ_* default)"}
    return doc


def _parse(field: str, raw: str) -> Any:
    if field == "max_outstanding_per_endpoint":
        try:
            return json.loads(raw)
        except ValueError:
            return {}
    if field == "budget_daily":
        return None if raw == NO_BUDGET else float(raw)
    return float(raw) if field == "rate" else int(float(raw))


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
    falq = make_client()
    cfg = _config_doc(falq)
    states = [lim.state(suffix) for lim, suffix in _limiters(falq)]
    if as_json:
        emit_json({"config": cfg, "keys": [s.__dict__ for s in states]})
        return EXIT_OK
    out = stdout()
    grid = Table.grid(padding=(0, 2))
    for field, item in cfg.items():
        grid.add_row(field, _shown(field, item["value"]), f"({item['source']})")
    out.print(grid)
    if not states:
        out.print("no fal key registered yet (a worker registers its key on start)")
    for st in states:
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
@click.option("--rate", type=float, metavar="PER_S", help="Submissions per second per fal key (0: unlimited).")
@click.option("--burst", type=int, metavar="N", help="Token bucket burst (1: no window above the rate).")
@click.option("--max-outstanding", type=int, metavar="N", help="Requests outstanding at fal per key (0: unlimited).")
@click.option("--endpoint-cap", "endpoint_caps", multiple=True, metavar="ENDPOINT=N|none",
              help="Cap one endpoint's outstanding requests (repeatable; `none` removes the cap).")
@click.option("--resume", is_flag=True, help="Lift a pause caused by a 402 / locked account (every key).")
@click.option("--reset", is_flag=True, help="Forget the runtime configuration; workers re-seed it from FALQ_*.")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting configuration as JSON.")
@handle_errors
def set_limits(rate: float | None, burst: int | None, max_outstanding: int | None, endpoint_caps: tuple[str, ...],
               resume: bool, reset: bool, as_json: bool) -> int:
    """Change limits at runtime; every worker applies them on its next admission."""
    falq = make_client()
    prefix = falq.settings.key_prefix
    errors: list[FieldError] = []
    changes: dict[str, str] = {}
    if rate is not None:
        if not (math.isfinite(rate) and rate >= 0):
            errors.append(FieldError("rate", "must be a number >= 0"))
        changes["rate"] = repr(float(rate))
    if burst is not None:
        if burst < 1:
            errors.append(FieldError("burst", "must be >= 1"))
        changes["burst"] = str(burst)
    if max_outstanding is not None:
        if max_outstanding < 0:
            errors.append(FieldError("max_outstanding", "must be >= 0"))
        changes["max_outstanding"] = str(max_outstanding)
    if endpoint_caps:
        current = _config_doc(falq)["max_outstanding_per_endpoint"]["value"]
        caps = dict(current) if isinstance(current, dict) else {}
        for item in endpoint_caps:
            ep, sep, n = item.partition("=")
            ep, n = ep.strip(), n.strip().lower()
            if not sep or ep not in ENDPOINTS:
                known = ", ".join(ENDPOINTS)
                errors.append(FieldError("endpoint_cap", f"{item!r}: use ENDPOINT=N with one of {known}"))
            elif n == "none":
                caps.pop(ep, None)
            elif n.isdigit():
                caps[ep] = int(n)
            else:
                errors.append(FieldError("endpoint_cap", f"{item!r}: N must be an integer >= 0 or `none`"))
        changes["max_outstanding_per_endpoint"] = json.dumps(caps, sort_keys=True)
    if errors:
        raise InvalidInput(errors)
    if not (changes or resume or reset):
        raise InvalidInput([FieldError("", "nothing to change: give --rate, --burst, --max-outstanding, "
                                           "--endpoint-cap, --resume or --reset")])
    if reset:
        falq.redis.delete(config_key(prefix))
    write_config(falq.redis, prefix, changes)
    resumed = [suffix for lim, suffix in _limiters(falq) if resume and lim.resume()]
    if as_json:
        emit_json({"config": _config_doc(falq), "resumed": resumed})
        return EXIT_OK
    for field, value in changes.items():
        click.echo(f"{field} = {value}")
    if reset:
        click.echo("runtime configuration forgotten; workers re-seed it from their FALQ_* settings")
    if resume:
        click.echo(f"resumed: {', '.join(resumed)}" if resumed else "no key was paused")
    return EXIT_OK


@click.command()
@click.option("--set", "set_usd", type=float, metavar="USD", help="Set the daily budget (USD per UTC day).")
@click.option("--clear", is_flag=True, help="Remove the daily budget.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def budget(set_usd: float | None, clear: bool, as_json: bool) -> int:
    """Spend reserved today (UTC), the daily budget, and how many jobs wait for it."""
    falq = make_client()
    prefix = falq.settings.key_prefix
    if set_usd is not None and clear:
        raise InvalidInput([FieldError("budget", "give --set or --clear, not both")])
    if set_usd is not None:
        if not (math.isfinite(set_usd) and set_usd >= 0):
            raise InvalidInput([FieldError("budget", "must be a number of dollars >= 0")])
        write_config(falq.redis, prefix, {"budget_daily": repr(float(set_usd))})
    elif clear:
        write_config(falq.redis, prefix, {"budget_daily": NO_BUDGET})
    day, spent = spend_today(falq.redis, prefix)
    cap = _config_doc(falq)["budget_daily"]["value"]
    paused = sum(lim.state().waiting["budget"] for lim, _ in _limiters(falq))
    doc = {"day": day, "spent_usd": round(spent, 6), "budget_usd": cap,
           "remaining_usd": None if cap is None else round(max(0.0, cap - spent), 6), "jobs_paused": paused}
    if as_json:
        emit_json(doc)
        return EXIT_OK
    click.echo(f"spent today ({day} UTC): ${spent:,.4f}")
    click.echo(f"daily budget: {'none' if cap is None else f'${cap:,.2f}'}"
               + ("" if cap is None else f"  (remaining ${doc['remaining_usd']:,.4f})"))
    click.echo(f"jobs paused for budget: {paused}")
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
    falq = make_client()
    since_ts = parse_since(since) if since is not None else None
    recs = falq.retry_failed(since_ts) if all_failed else falq.retry(job_ids)
    if as_json:
        emit_json([r.public() for r in recs])
    for r in recs:
        if not as_json:
            again = r.state == "queued" and r.retry_from == r.attempts > 0
            click.echo(f"{r.id}: queued again (attempt {r.attempts + 1})" if again
                       else f"{r.id}: not retried, it is {r.state}")
    if all_failed and not recs and not as_json:
        click.echo("no failed jobs", err=True)
    return EXIT_OK if all(r.state == "queued" for r in recs) else EXIT_FAILED


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
