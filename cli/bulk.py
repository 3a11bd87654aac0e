"""``falq bulk FILE``: validate a whole file, enqueue it idempotently, follow it, write results.

The work is done by :mod:`falq.producers.bulk.enqueue`; this module only wires options and output.

Example::

    falq bulk prompts.jsonl                       # validate, enqueue, watch, write prompts.jsonl.results.jsonl
    falq bulk prompts.csv --dry-run               # validate and quote at the account's prices; enqueue nothing
    falq bulk prompts.jsonl --max-spend 25.00     # a spend cap: nothing of the batch is submitted past it
    falq bulk prompts.jsonl --priority low        # X-Fal-Queue-Priority: low (waits behind every normal request)
    falq bulk prompts.jsonl --skip-invalid        # enqueue the good lines, bad ones -> prompts.jsonl.rejects.jsonl
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.live import Live

from falq.cli.output import (
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    bulk_progress_view,
    emit_json,
    handle_errors,
    live_ok,
    make_client,
    stderr,
)
from falq.producers.bulk.batches import enqueue_batch, open_batch, price
from falq.producers.bulk.enqueue import (
    DEFAULT_ENDPOINT,
    LINE_KEYS,
    BulkLine,
    BulkReport,
    Reject,
    Snapshot,
    file_key,
    load_file,
    wait_and_report,
    write_rejects,
)
from falq.shared.spend.batch_cap import parse_cap

MAX_SHOWN_ERRORS = 200


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "ndjson", "csv"]),
              help="File format  [default: from the extension]")
@click.option("--endpoint", default=DEFAULT_ENDPOINT, show_default=True,
              help="Endpoint of CSV rows and of JSONL lines that name none.")
@click.option("--lane", default="bulk", show_default=True, metavar="interactive|bulk",
              help="Lane of lines that name none.")
@click.option("--run-id", metavar="ID", help="Pin the idempotency run key (default: derived from the file's path).")
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid lines; write the invalid ones to --rejects.")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where invalid lines go  [default: FILE.rejects.jsonl]")
@click.option("--dry-run", is_flag=True,
              help="Validate and quote the run at the account's prices (num_images and chained edits counted); "
                   "enqueue nothing.")
@click.option("--max-spend", metavar="USD",
              help="The batch's spend cap: jobs are submitted only while its billed plus reserved spend stays "
                   "within it; the rest wait (paused: batch_spend_cap) until `falq batches set-cap ID USD`.")
@click.option("--priority", type=click.Choice(["normal", "low"]),
              help="X-Fal-Queue-Priority of the batch's jobs  [default: the tenant's, else the lane's setting, "
                   "normal]. low waits behind every customer's normal requests on fal's shared per-endpoint "
                   "queue, without bound on a busy endpoint; no discount for low is documented.")
@click.option("--no-wait", is_flag=True, help="Enqueue and return; rerun the command later to follow and report.")
@click.option("--timeout", type=float, metavar="S",
              help="Stop waiting after S seconds (exit 4; results still written).")
@click.option("--results", "results_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Results JSONL  [default: FILE.results.jsonl]")
@click.option("--chunk-size", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="Jobs per pipelined enqueue round.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (errors included) instead of text.")
@click.option("--tenant", metavar="NAME", help="Enqueue for this tenant (default: FALQ_TENANT, else default).")
@click.option("--name", help="The batch's name  [default: the file's name]")
@click.option("--yes", is_flag=True, help="Start even when the estimated cost exceeds what is left of the budget.")
@handle_errors
def bulk(file: Path, fmt: str | None, endpoint: str, lane: str, run_id: str | None, skip_invalid: bool,
         rejects_path: Path | None, dry_run: bool, no_wait: bool, timeout: float | None, results_path: Path | None,
         chunk_size: int, as_json: bool, tenant: str | None = None, name: str | None = None,
         yes: bool = False, max_spend: str | None = None, priority: str | None = None) -> int:
    """Enqueue every job of FILE (JSONL or CSV), wait for them, write a results JSONL.

    \b
    JSONL: one object per line with keys endpoint, input, id, metadata, lane, callback_url;
    CSV: a header with a prompt column and optionally id, negative_prompt, seed,
    image_size, num_images, output_format.
    The whole file is validated first; with any invalid line nothing is enqueued (exit 2)
    unless --skip-invalid. Rerunning the same command after a crash or Ctrl-C enqueues
    only what is missing and never duplicates a job (see `falq.producers.bulk.enqueue`).
    Every run is a batch (`falq batch show ID`); rerunning joins the same batch. An edit's
    image_urls may name another line's output as falq:LINE_ID#N (or a job's, falq:JOB_ID#N):
    it waits until that line's job completed. --dry-run prices the run; a run whose estimate
    exceeds what is left of the budget needs --yes.
    """
    t0 = time.monotonic()
    cap = parse_cap(max_spend, "--max-spend") if max_spend is not None else None
    falq = make_client(tenant)
    lines, rejects = load_file(file, falq, fmt=fmt, endpoint=endpoint, lane=lane, run_id=run_id)
    doc: dict[str, Any] = {"file": str(file), "run_key": f"bulk:{file_key(file, run_id)}",
                           "lines": len(lines) + len(rejects), "valid": len(lines), "invalid": len(rejects),
                           "errors": [{"line": r.line, "field": e.field, "message": e.message}
                                      for r in rejects for e in r.errors], "dry_run": dry_run}
    note = _Notes(as_json)
    if rejects and (skip_invalid or rejects_path is not None):
        doc["rejects_path"] = str(write_rejects(rejects_path or _beside(file, "rejects"), rejects))
    if rejects and not as_json:
        _show_rejects(rejects, doc.get("rejects_path"))
    cost = price(falq, lines, max_spend=cap)
    doc["price"] = cost.as_json()
    if dry_run:
        note(f"dry run: {doc['lines']} lines, {len(lines)} valid, {len(rejects)} invalid; nothing was enqueued")
        note(f"quote: ${cost.total_usd:.2f} for {cost.images} image(s) in {cost.jobs} job(s)")
        for text in cost.lines():
            note(text)
        return _done(doc, as_json, EXIT_INVALID if rejects else EXIT_OK)
    if rejects and not skip_invalid:
        note(f"error: {len(rejects)} of {doc['lines']} lines are invalid; nothing was enqueued "
             "(fix them, or rerun with --skip-invalid)")
        return _done(doc, as_json, EXIT_INVALID)
    if not lines:
        note("error: no valid line to enqueue")
        return _done(doc, as_json, EXIT_INVALID)

    if cost.exceeds and not yes:
        for text in cost.lines():
            note(text)
        if not (sys.stdin.isatty() and not as_json and click.confirm("start anyway?", default=False, err=True)):
            note(f"error: the estimated ${cost.total_usd:.2f} exceeds what is left of the budget; nothing was "
                 "enqueued (rerun with --yes to start anyway)")
            return _done(doc, as_json, EXIT_INVALID)
    sha = hashlib.sha256(file.read_bytes()).hexdigest()
    batch, _ = open_batch(falq, name=name or file.name, source_name=file.name, source_sha256=sha,
                          run_key=doc["run_key"], max_spend=cap)
    doc["batch_id"] = batch.id
    if cap is not None:
        note(f"spend cap: ${cap:.2f}; jobs past it wait (paused: batch_spend_cap) until "
             f"`falq batches set-cap {batch.id} USD`")
    note(f"batch {batch.id} ({batch.name}); follow it with: falq batch show {batch.id}")
    new = 0

    def counted(done: int, created: int) -> None:
        nonlocal new
        new += created

    t_enq = time.monotonic()
    try:
        job_ids = enqueue_batch(falq, lines, batch, chunk_size=chunk_size, on_chunk=counted, priority=priority)
    except KeyboardInterrupt:
        note("interrupted while enqueueing; nothing was lost or duplicated: rerun the same command to "
             "enqueue the rest")
        return _done(doc, as_json, EXIT_INTERRUPTED)
    took = time.monotonic() - t_enq
    doc.update(enqueued=len(job_ids), new=new, existing=len(job_ids) - new, enqueue_s=round(took, 3))
    note(f"enqueued {len(job_ids)} lines in {took:.1f}s ({len(job_ids) / max(took, 1e-9):.0f}/s): "
         f"{new} new, {len(job_ids) - new} already known (run key {doc['run_key']})")
    if no_wait:
        note("not waiting; rerun the same command to follow the jobs and write the results")
        return _done(doc, as_json, EXIT_OK)

    report = _wait(falq, lines, job_ids, rejects, results_path or _beside(file, "results"), timeout, as_json, t0)
    doc.update(counts=report.counts, summary=report.summary(), elapsed_s=round(report.elapsed_s, 3),
               timed_out=report.timed_out, interrupted=report.interrupted,
               results_path=str(report.results_path) if report.results_path else None, warnings=report.warnings)
    for w in report.warnings:
        note(f"warning: {w}")
    if report.interrupted:
        note("stopped waiting; nothing was cancelled. Rerun the same command to resume "
             "(lines already enqueued are not enqueued again)")
    elif report.timed_out:
        note(f"error: timed out after {timeout:g}s with {report.pending} jobs not finished; they go on")
    note(f"results: {report.results_path}")
    if not as_json:
        click.echo(report.summary())
    return _done(doc, as_json, report.exit_code)


def _wait(falq: Any, lines: list[BulkLine], job_ids: list[str], rejects: list[Reject], results: Path,
          timeout: float | None, as_json: bool, t0: float) -> BulkReport:
    if live_ok(as_json):
        with Live(console=stderr(), refresh_per_second=4, transient=False) as lv:
            return wait_and_report(falq, lines, job_ids, rejects=rejects, results_path=results, timeout=timeout,
                                   on_progress=lambda s: lv.update(bulk_progress_view(s)), started=t0)
    last = [0.0]

    def plain(s: Snapshot) -> None:
        if as_json or time.monotonic() - last[0] < 10:
            return
        last[0] = time.monotonic()
        shown = ", ".join(f"{k} {v}" for k, v in s.counts.items() if v)
        click.echo(f"{s.done}/{s.total} finished ({shown}); {s.rate_per_min:.1f} jobs/min", err=True)

    return wait_and_report(falq, lines, job_ids, rejects=rejects, results_path=results, timeout=timeout,
                           on_progress=plain, started=t0)


class _Notes:
    """Human messages on stderr; silent with --json (the JSON document says it all)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, text: str) -> None:
        if not self.as_json:
            click.echo(text, err=True)


def _beside(file: Path, what: str) -> Path:
    return file.with_name(f"{file.name}.{what}.jsonl")


def _show_rejects(rejects: list[Reject], written: str | None) -> None:
    messages = [m for r in rejects for m in r.messages()]
    for m in messages[:MAX_SHOWN_ERRORS]:
        click.echo(f"error: {m}", err=True)
    if len(messages) > MAX_SHOWN_ERRORS:
        more = len(messages) - MAX_SHOWN_ERRORS
        where = f"all of them are in {written}" if written else "write them all with --rejects PATH"
        click.echo(f"... and {more} more errors ({where})", err=True)


def _done(doc: dict[str, Any], as_json: bool, code: int) -> int:
    if as_json:
        emit_json({**doc, "exit_code": code})
    return code


__all__ = ["LINE_KEYS", "bulk"]
