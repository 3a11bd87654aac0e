"""``falq batches`` and ``falq batch show|cancel|retry|results``: batches as objects.

Every ``falq bulk`` run and every ``POST /v1/batches`` is a batch (:mod:`falq.shared.batches.store`);
the work is done by :class:`falq.producers.bulk.batches.Batches`, the service the gateway uses too.

Example::

    falq batches                                   # newest first: id, name, progress, spend
    falq batch show b5e0c... --watch               # live progress (the tree of a chained batch)
    falq batch show b5e0c... --json
    falq batch cancel b5e0c...
    falq batch set-cap b5e0c... 40                 # raise its spend cap: jobs paused at it go on
    falq batch retry b5e0c... --moderated
    falq batch results b5e0c... --out results.jsonl   # + results.errors.jsonl
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from falq.cli.output import EXIT_FAILED, EXIT_OK, age, emit_json, handle_errors, make_client, stdout
from falq.producers.bulk.batches import Batches, BatchView
from falq.shared.batches.store import Batch
from falq.shared.jobs.records import STATES, TERMINAL


def _service(tenant: str | None) -> Batches:
    falq = make_client(tenant)
    return Batches(falq, tenant=falq.tenant if tenant else None)


@click.group("batches", invoke_without_command=True)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--tenant", metavar="NAME", help="Only this tenant's batches.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def batches(ctx: click.Context, limit: int, tenant: str | None, as_json: bool) -> int:
    """List batches, newest first (``falq batches set-cap ID USD``: a batch's spend cap)."""
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    found = _service(tenant).recent(limit)
    if as_json:
        emit_json([b.as_json() for b in found])
        return EXIT_OK
    table = Table(show_edge=False)
    for col in ("id", "name", "tenant", "age", "done", "failed", "status", "est $", "billed $"):
        table.add_column(col, no_wrap=True)
    for b in found:
        table.add_row(b.id, b.name, b.tenant, age(b.created_at), f"{b.done}/{b.total}", str(b.counts.get("failed", 0)),
                      "finished" if b.finished_at else ("paused" if b.cap is not None and b.cap.waiting else "running"),
                      f"{b.est_usd:.2f}", f"{b.billed_usd:.2f}")
    stdout().print(table)
    return EXIT_OK


@click.group("batch")
def batch() -> None:
    """One batch: show its progress, cancel it, retry its failures, export its results."""


def _view(v: BatchView) -> Table:
    b = v.batch
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("batch", f"{b.id}  {b.name}")
    grid.add_row("tenant", b.tenant)
    grid.add_row("source", f"{b.source_name}  sha256 {b.source_sha256[:16]}...")
    grid.add_row("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.created_at)))
    grid.add_row("finished", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.finished_at))
                 if b.finished_at else "-")
    grid.add_row("progress", f"{b.done}/{b.total} ended  " + ", ".join(
        f"{s} {b.counts[s]}" for s in STATES if b.counts.get(s)))
    eta = b.eta_s()
    grid.add_row("throughput", f"{b.throughput_per_min():.1f} jobs/min, ETA "
                 + ("-" if eta is None else f"{eta:.0f}s"))
    grid.add_row("spend", f"estimated ${b.est_usd:.4f}, billed ${b.billed_usd:.4f}")
    if b.cap is not None and b.cap.max_spend_usd is not None:
        grid.add_row("spend cap", f"${b.cap.max_spend_usd:.2f}: billed ${b.cap.billed_usd:.4f} + reserved "
                                  f"${b.cap.reserved_usd:.4f}" + (
                                      f"; {b.cap.waiting} job(s) PAUSED: batch_spend_cap (raise it with "
                                      f"falq batch set-cap {b.id} USD)" if b.cap.waiting and not b.finished_at
                                      else ""))
    for depth, counts in enumerate(v.levels):
        total = sum(counts.values())
        ended = sum(n for s, n in counts.items() if s in TERMINAL)
        label = "roots" if depth == 0 else f"depth {depth}"
        grid.add_row(f"tree {label}", f"{ended}/{total} ended  " + ", ".join(
            f"{s} {counts[s]}" for s in STATES if counts.get(s)))
    return grid


@batch.command("show")
@click.argument("batch_id")
@click.option("--watch", is_flag=True, help="Refresh until the batch finished (Ctrl-C stops watching).")
@click.option("--tenant", metavar="NAME", help="As this tenant (another tenant's batch is not found).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (counts, spend, throughput, ETA, tree).")
@handle_errors
def show(batch_id: str, watch: bool, tenant: str | None, as_json: bool) -> int:
    """Show a batch's progress: counts by state, spend, throughput, ETA and its tree."""
    svc = _service(tenant)
    if as_json:
        emit_json(svc.show(batch_id).as_json())
        return EXIT_OK
    if not watch:
        stdout().print(_view(svc.show(batch_id)))
        return EXIT_OK
    from rich.live import Live

    with Live(console=stdout(), refresh_per_second=2) as live:
        while True:
            v = svc.show(batch_id)
            live.update(_view(v))
            if v.batch.finished_at:
                return EXIT_OK
            time.sleep(1.0)


@batch.command("set-cap")
@click.argument("batch_id")
@click.argument("max_spend", metavar="USD|none")
@click.option("--tenant", metavar="NAME")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def set_cap(batch_id: str, max_spend: str, tenant: str | None, as_json: bool) -> int:
    """Set the batch's spend cap (USD; none removes it). Jobs waiting at the cap
    (paused: batch_spend_cap) go on within one poll (FALQ_PAUSE_POLL_S) once they fit."""
    view = _service(tenant).set_cap(batch_id, max_spend)
    if as_json:
        emit_json(view.as_json())
    else:
        stdout().print(_view(view))
    return EXIT_OK


@batch.command("cancel")
@click.argument("batch_id")
@click.option("--tenant", metavar="NAME")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def cancel(batch_id: str, tenant: str | None, as_json: bool) -> int:
    """Cancel every job of the batch that has not ended (waiting children included)."""
    out = _service(tenant).cancel(batch_id)
    if as_json:
        emit_json({"batch_id": batch_id, "outcomes": out})
    else:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(out.items()))
        click.echo(f"batch {batch_id}: {shown or 'nothing to cancel'}")
    return EXIT_OK


@batch.command("retry")
@click.argument("batch_id")
@click.option("--failed", "which", flag_value="failed", default=True, help="Every failed job (default).")
@click.option("--moderated", "which", flag_value="moderated", help="Only jobs fal's content checker refused.")
@click.option("--tenant", metavar="NAME")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def retry(batch_id: str, which: str, tenant: str | None, as_json: bool) -> int:
    """Retry the batch's failed jobs; children they failed wait for them again."""
    done = _service(tenant).retry(batch_id, which=which)
    if as_json:
        emit_json({"batch_id": batch_id, "retried": done, "count": len(done)})
    else:
        click.echo(f"retried {len(done)} job(s) of batch {batch_id}")
    return EXIT_OK


@batch.command("results")
@click.argument("batch_id")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Completed jobs, one JSON line each (presigned URLs included).")
@click.option("--errors", "errors", type=click.Path(dir_okay=False, path_type=Path),
              help="The other jobs  [default: OUT's name + .errors.jsonl]")
@click.option("--tenant", metavar="NAME")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def results(batch_id: str, out: Path, errors: Path | None, tenant: str | None, as_json: bool) -> int:
    """Write the batch's results (completed) and errors (the rest) as JSONL, in line order."""
    svc = _service(tenant)
    b: Batch = svc.get(batch_id)
    outp, errp, n_ok, n_err = svc.results(batch_id, out, errors)
    doc: dict[str, Any] = {"batch_id": b.id, "results": str(outp), "errors": str(errp), "completed": n_ok,
                           "not_completed": n_err}
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"{n_ok} result(s) -> {outp}; {n_err} other(s) -> {errp}")
    return EXIT_OK if n_err == 0 else EXIT_FAILED


batches.add_command(set_cap, "set-cap")  # `falq batches set-cap ID USD`, the same as `falq batch set-cap`

__all__ = ["batch", "batches"]
