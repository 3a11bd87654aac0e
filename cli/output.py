"""What the ``falq`` CLI prints: errors, records, tables, live progress, saved images.

Machine-readable output (``--json``) goes to stdout as one JSON document; human output
uses rich. Expected errors are one ``error: ...`` line each on stderr (or a JSON
``{"error": ...}`` document on stdout with ``--json``), never a traceback, never a secret.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec
from urllib.parse import urlsplit

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from falq.shared.errors import CatalogueUnavailable, FalqError, FieldError, InvalidInput, JobNotFound, JobTimeout
from falq.shared.jobs.records import FAL_OUTCOME_NOTES, TERMINAL, JobRecord

if TYPE_CHECKING:
    from falq.producers.client import Falq

P = ParamSpec("P")

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


def stdout() -> Console:
    # Piped output is not cut to 80 columns: ids must survive `falq jobs | grep`.
    return Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 200)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def emit_json(data: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def error_doc(kind: str, message: str, errors: list[FieldError] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": kind, "message": message}
    if errors is not None:
        doc["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return {"error": doc, **extra}


def fail(as_json: bool, kind: str, message: str, code: int, errors: list[FieldError] | None = None,
         **extra: Any) -> int:
    """Report an expected error and return its exit code."""
    if as_json:
        emit_json(error_doc(kind, message, errors, **extra))
    elif errors:
        for e in errors:
            click.echo(f"error: {e}", err=True)
    else:
        click.echo(f"error: {message}", err=True)
    return code


def redact_url(url: str) -> str:
    """``redis://:pw@host:6379/0`` -> ``host:6379`` (never show credentials)."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname or "?")
    except ValueError:
        return "?"


def handle_errors(fn: Callable[P, int]) -> Callable[P, int]:
    """Turn falq's expected exceptions into messages and exit codes (see the CLI docs)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except InvalidInput as exc:
            prefix = f"{exc.where}: " if exc.where else ""
            errs = [FieldError(f"{prefix}{e.field}" if prefix else e.field, e.message) for e in exc.errors]
            return fail(as_json, "invalid_input", str(exc), EXIT_INVALID, errs)
        except JobNotFound as exc:
            return fail(as_json, "job_not_found", str(exc), EXIT_NOT_FOUND)
        except JobTimeout as exc:
            return fail(as_json, "timeout", str(exc), EXIT_TIMEOUT)
        except CatalogueUnavailable as exc:  # the database of finished jobs is down or slow
            return fail(as_json, exc.kind, str(exc), EXIT_UNAVAILABLE)
        except FalqError as exc:
            return fail(as_json, exc.kind, str(exc), EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            return EXIT_INTERRUPTED
        except Exception as exc:
            if _is_unavailable(exc):
                from falq.shared.settings import get_settings

                where = redact_url(get_settings().redis_url)
                return fail(as_json, "unavailable", f"cannot reach Redis at {where} ({type(exc).__name__})",
                            EXIT_UNAVAILABLE)
            raise

    return wrapper


def _is_unavailable(exc: BaseException) -> bool:
    import redis
    from kombu.exceptions import OperationalError

    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OperationalError)


def make_client(tenant: str | None = None) -> Falq:
    """The Falq client for this invocation, configured from the environment (``tenant``: the
    ``--tenant`` option of producer commands, else ``FALQ_TENANT``)."""
    from pydantic import ValidationError

    from falq.producers.client import Falq
    from falq.shared.settings import get_settings

    try:
        return Falq(get_settings(), tenant=tenant)
    except ValidationError as exc:  # report where and why, never the (maybe secret) value
        raise InvalidInput([FieldError(f"settings.{'.'.join(str(p) for p in e['loc'])}", e["msg"])
                            for e in exc.errors(include_url=False, include_input=False)]) from None


# --- records -------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(ts: float, now: float | None = None) -> str:
    s = max(0.0, (now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def short_endpoint(endpoint: str) -> str:
    return endpoint.removeprefix("fal-ai/qwen-image-2/")


def prompt_of(rec: JobRecord, width: int = 60) -> str:
    prompt = str(rec.input.get("prompt", "")).replace("\n", " ")
    return prompt if len(prompt) <= width else prompt[: width - 1] + "…"


def record_view(rec: JobRecord, *, elapsed: float | None = None, logs: int = 5) -> Table:
    """A two-column summary of one job (what ``falq status`` and ``--wait`` show)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    state = rec.state + (f" (paused: {rec.paused})" if rec.paused and not rec.terminal else "")
    if rec.cancel_requested and not rec.terminal:
        state += " (cancel requested)"
    grid.add_row("job", rec.id)
    grid.add_row("state", Text(state, style=_STATE_STYLE.get(rec.state, "")))
    grid.add_row("endpoint", f"{rec.endpoint}  lane {rec.lane}")
    grid.add_row("tenant", rec.tenant)
    grid.add_row("prompt", prompt_of(rec))
    grid.add_row("created", _when(rec.created_at))
    if elapsed is not None:
        grid.add_row("elapsed", f"{elapsed:.1f}s")
    grid.add_row("attempts", str(rec.attempts))
    if rec.queue_wait is not None or rec.inference_time is not None:
        grid.add_row("timing", f"queue {rec.queue_wait or 0:.1f}s, inference {rec.inference_time or 0:.1f}s")
    if rec.seed is not None:
        grid.add_row("seed", str(rec.seed))
    for img in rec.outputs:
        grid.add_row(f"output {img.index}", f"s3://{img.bucket}/{img.key} ({img.width}x{img.height}, "
                     f"{img.content_type}, {img.size} bytes)")
    if rec.error is not None and (rec.state == "failed" or not rec.terminal):
        grid.add_row("error", f"{rec.error.type}: {rec.error.message}")
    if rec.fal_cancel_at is not None and not rec.terminal:
        grid.add_row("fal", "asked to cancel; following the request until fal says how it ended")
    if rec.fal_outcome is not None:
        grid.add_row("fal", FAL_OUTCOME_NOTES[rec.fal_outcome])
    for line in rec.logs[-logs:] if logs else []:
        grid.add_row("log", line)
    return grid


_STATE_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow", "in_progress": "cyan",
                "in_queue": "blue", "mirroring": "magenta",
                "waiting": "dim"}


def state_label(rec: JobRecord) -> str:
    """The state as listings show it: a cancelled job also says how fal ended its request
    (``cancelled (fal finished)``: billed, its images kept), live or archived alike."""
    if rec.fal_outcome is not None and rec.state != "completed":
        return f"{rec.state} (fal {rec.fal_outcome})"
    return rec.state


def jobs_table(recs: list[JobRecord]) -> Table:
    table = Table(show_edge=False)
    table.add_column("id", no_wrap=True, min_width=32)
    # The tenant column only once there is more than the default tenant (single-tenant output stays as it was).
    tenants = any(r.tenant != "default" for r in recs)
    for col in ("state", "endpoint", "lane", *(("tenant",) if tenants else ()), "age"):
        table.add_column(col, no_wrap=True)
    table.add_column("prompt", overflow="ellipsis", no_wrap=True)
    now = time.time()
    for r in recs:
        table.add_row(r.id, Text(state_label(r), style=_STATE_STYLE.get(r.state, "")), short_endpoint(r.endpoint),
                      r.lane,
                      *((r.tenant,) if tenants else ()), age(r.created_at, now), prompt_of(r, 40))
    return table


def follow(read: Callable[[], JobRecord], timeout: float | None, *, live: bool) -> JobRecord:
    """Poll ``read`` until the job is terminal; show it live on stderr when ``live``.

    Without a terminal a plain line is printed on each state change instead. Raises
    :class:`JobTimeout` after ``timeout`` seconds (the job goes on).
    """
    start = time.monotonic()
    end = None if timeout is None else start + timeout
    delay = 0.2
    rec = read()
    last = ""
    err = stderr()
    with Live(record_view(rec, elapsed=0.0), console=err, refresh_per_second=4, transient=True) if live \
            else _Null() as lv:
        while True:
            elapsed = time.monotonic() - start
            if live:
                lv.update(record_view(rec, elapsed=elapsed))
            elif rec.state != last and not rec.terminal:
                click.echo(f"{rec.id}: {rec.state}", err=True)
            last = rec.state
            if rec.state in TERMINAL:
                return rec
            if end is not None and time.monotonic() >= end:
                raise JobTimeout(f"job {rec.id} still {rec.state} after {timeout:g}s; it goes on "
                                 f"(follow it with: falq wait {rec.id})")
            time.sleep(delay if end is None else max(0.0, min(delay, end - time.monotonic())))
            delay = min(1.0, delay * 1.5)
            rec = read()


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _: Any) -> None:
        return None


def save_outputs(rec: JobRecord, out_dir: str | Path, storage: Any) -> list[Path]:
    """Copy a completed job's images from S3 to ``{out_dir}/{job_id}_{index}.{ext}``."""
    from falq.shared.storage.images import EXTENSIONS

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for img in rec.outputs:
        ext = Path(img.key).suffix.lstrip(".") or EXTENSIONS.get(img.content_type, "bin")
        path = folder / f"{rec.id}_{img.index}.{ext}"
        path.write_bytes(storage.get_bytes(img.key))
        saved.append(path)
    return saved


# --- parsing helpers ---------------------------------------------------------------------




def live_ok(as_json: bool) -> bool:
    """A live display only for people: stderr is a terminal and no --json."""
    return not as_json and sys.stderr.isatty()


def bulk_progress_view(snap: Any) -> Group:
    """The live bulk display: a bar, counts by state, rate, ETA and the last failures."""
    from rich.progress_bar import ProgressBar

    head = Table.grid(padding=(0, 2))
    head.add_row(ProgressBar(total=max(1, snap.total), completed=snap.done, width=40),
                 f"{snap.done}/{snap.total} finished", f"{snap.elapsed_s:.0f}s")
    counts = Table.grid(padding=(0, 2))
    shown = [(s, n) for s, n in snap.counts.items() if n]
    counts.add_row(*[Text(f"{s} {n}", style=_STATE_STYLE.get(s, "")) for s, n in shown] or [Text("-")])
    eta = "-" if snap.eta_s is None else f"{snap.eta_s:.0f}s"
    rate = Text(f"rate {snap.rate_per_min:.1f} jobs/min   ETA {eta}")
    fails = [Text(f"line {n}: {m[:160]}", style="red") for n, m in snap.failures]
    return Group(head, counts, rate, *fails)
