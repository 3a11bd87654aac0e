"""The ``falq`` command: enqueue Qwen-Image-2 jobs, follow them, run the services.

Examples::

    falq generate "a red fox in the snow" --image-size 1280x720 --seed 7 --wait --out ./images
    falq edit "make it night" --image photo.png --image https://example.com/ref.jpg --json
    falq status 8f3e...; falq wait 8f3e... --timeout 300; falq cancel 8f3e...
    falq jobs --state failed --since 1h
    falq bulk prompts.jsonl --skip-invalid --results out.jsonl
    falq worker --concurrency 500; falq emulator --port 8080; falq flower --port 5555

Exit codes: 0 ok; 1 the job (or a bulk line) ended failed/cancelled, or another falq
error; 2 invalid input or usage; 3 no such job; 4 timed out waiting (the job goes on);
5 Redis/broker unreachable; 130 interrupted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from falq.cli.lazy import LazyGroup
from falq.cli.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    emit_json,
    fail,
    follow,
    handle_errors,
    jobs_table,
    live_ok,
    make_client,
    record_view,
    save_outputs,
    stdout,
)
from falq.shared.errors import FieldError, InvalidInput
from falq.shared.fal.endpoints import EDIT, TEXT_TO_IMAGE
from falq.shared.fal.schemas import MAX_SEED
from falq.shared.jobs.records import STATES

if TYPE_CHECKING:
    from falq.producers.client import Falq

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
#: Stands in for local images while the other fields are validated (nothing is uploaded
#: before the whole request is known to be valid).
_PLACEHOLDER = "https://placeholder.invalid/image.png"


#: Subcommands defined in their own modules, imported only when run (or for their help).
#: The service commands are the very click commands their modules run as ``python -m ...``.
LAZY = {
    "bulk": ("falq.cli.bulk", "bulk", "Enqueue a JSONL/CSV file of jobs, follow them, write the results."),
    "batches": ("falq.cli.batches", "batches", "List batches (every bulk run and POST /v1/batches)."),
    "batch": ("falq.cli.batches", "batch", "One batch: show progress, cancel, retry failures, export results."),
    "limits": ("falq.cli.limits", "limits", "Show or change the global limits of every fal key."),
    "budget": ("falq.cli.limits", "budget", "Today's spend (UTC) against the daily budget; set or clear it."),
    "retry": ("falq.cli.limits", "retry", "Run failed or cancelled jobs again as new attempts."),
    "callbacks": ("falq.cli.callbacks", "callbacks", "Per-job callbacks: pending ones, every try, redeliver."),
    "tenants": ("falq.cli.tenants", "tenants", "Tenants sharing the fal account, and their gateway API keys."),
    "top": ("falq.cli.ops", "top", "Live view of throughput, latency, failures, spend."),
    "doctor": ("falq.cli.doctor", "doctor", "Check the configuration: Redis, S3, catalogue, fal key, clock..."),
    "db": ("falq.cli.db", "db", "The catalogue's database: apply migrations (upgrade), show the revision."),
    "catalogue": ("falq.cli.catalogue", "catalogue", "The catalogue of finished jobs: rebuild it from S3."),
    "report": ("falq.cli.report", "report", "Reports from the catalogue: spend by day, endpoint, tenant..."),
    "worker": ("falq.workers.cli", "command", "Run a worker: Celery on the gevent pool (python -m falq.workers)."),
    "emulator": ("falq.emulator.server", "command", "Run the local fal emulator (python -m falq.emulator)."),
    "flower": ("falq.ops.flower", "command", "Run Flower for falq (auth on by default)."),
    "metrics": ("falq.ops.exporter", "command", "Serve falq's Prometheus metrics (auth on by default)."),
    "api": ("falq.gateway.server", "command", "Run the HTTP gateway (fal's protocol and falq's REST API)."),
    "bench": ("falq.ops.bench.cli", "bench", "Run the benchmark scenarios (python -m falq.ops.bench)."),
}


@click.group(cls=LazyGroup, lazy=LAZY,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """falq: Qwen-Image-2 jobs on fal, queued in Redis, run by Celery workers, mirrored to S3."""


def _d(text: str, default: object) -> str:
    return f"{text}  [default: {default}]"


def job_options(kind: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """The schema's fields as options (all default to "not set", so schema defaults apply)."""
    size_default = "square_hd" if kind == "generate" else "size of the last input image"
    opts = [
        click.option("--negative-prompt", help=_d("What to avoid (at most 500 characters).", "''")),
        click.option("--image-size", metavar="SIZE", help=_d(
            "Preset (square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, landscape_16_9) or WxH "
            "like 1280x720 (512x512 to 2048x2048 pixels).", size_default)),
        click.option("--seed", metavar="INT", help=_d(f"Seed, 0..{MAX_SEED}.", "random")),
        click.option("--num-images", metavar="N", help=_d("Images to generate (at most FALQ_MAX_NUM_IMAGES).", 1)),
        click.option("--output-format", metavar="jpeg|png|webp", help=_d("Image format.", "png")),
        click.option("--prompt-expansion/--no-prompt-expansion", "prompt_expansion", default=None,
                     help=_d("Let the model expand the prompt.", "on")),
        click.option("--safety-checker/--no-safety-checker", "safety_checker", default=None,
                     help=_d("fal's safety checker.", "on")),
        click.option("--sync-mode", is_flag=True, default=None, help=_d("Ask fal for inline (data URI) images.",
                                                                        "off")),
        click.option("--pro", is_flag=True, help="Use the pro endpoint."),
        click.option("--lane", metavar="interactive|bulk", help=_d("Queue lane.", "interactive")),
        click.option("--idempotency-key", help="Same key, same job: a retried command never enqueues twice."),
        click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
                     help="Stored on the job and sent back in callbacks (repeatable)."),
        click.option("--callback-url", help="http(s) URL POSTed the final record."),
        click.option("--tenant", metavar="NAME", help=_d("Enqueue for this tenant (falq tenants list).",
                                                          "FALQ_TENANT, else default")),
        click.option("--wait", is_flag=True, help="Follow the job live until it ends."),
        click.option("--timeout", type=float, metavar="S", help="With --wait: give up waiting after S seconds."),
        click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
                     help="Save the images to DIR as {job_id}_{index}.{ext} (implies --wait)."),
        click.option("--json", "as_json", is_flag=True, help="Print the job record as JSON."),
    ]

    def deco(fn: Callable[..., int]) -> Callable[..., int]:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco


@cli.command()
@click.argument("prompt")
@job_options("generate")
@handle_errors
def generate(prompt: str, **opts: Any) -> int:
    """Enqueue a text-to-image job for PROMPT; prints the job id (or the record with --json)."""
    falq = make_client(opts["tenant"])
    fields, errors = _fields(opts)
    endpoint = TEXT_TO_IMAGE["pro" if opts["pro"] else "standard"]
    data = {"prompt": prompt, **fields}
    from falq.producers.bulk.enqueue import validate_all

    errors += validate_all(falq, endpoint, data, lane=_lane(opts), callback_url=opts["callback_url"])[1]
    if errors:
        raise InvalidInput(errors)
    return _submit(falq, endpoint, data, opts)


@cli.command()
@click.argument("prompt")
@click.option("--image", "images", multiple=True, metavar="PATH|URL",
              help="Input image: local file, http(s) URL or data URI (1 to 6; repeat the option).")
@click.option("--flatten-alpha", is_flag=True, help="Flatten transparent PNGs onto white instead of refusing them.")
@job_options("edit")
@handle_errors
def edit(prompt: str, images: tuple[str, ...], flatten_alpha: bool, **opts: Any) -> int:
    """Enqueue an edit of one or more images following PROMPT."""
    from falq.producers.inputs import prepare_images

    falq = make_client(opts["tenant"])
    fields, errors = _fields(opts)
    endpoint = EDIT["pro" if opts["pro"] else "standard"]
    is_url = [bool(_URL_SCHEME.match(i)) and not Path(i).exists() for i in images]
    probe = [i if u else _PLACEHOLDER for i, u in zip(images, is_url, strict=True)]
    data = {"prompt": prompt, **fields}
    from falq.producers.bulk.enqueue import validate_all

    errors += validate_all(falq, endpoint, {**data, "image_urls": probe}, lane=_lane(opts),
                           callback_url=opts["callback_url"])[1]
    # Local files are checked either way; they are uploaded only once all else is valid.
    settings = falq.settings if not errors else falq.settings.model_copy(update={"input_upload": "data-uri"})
    urls = list(probe)
    for i, (item, url_like) in enumerate(zip(images, is_url, strict=True)):
        if url_like:
            continue
        try:
            urls[i] = prepare_images([item], settings, flatten_alpha=flatten_alpha)[0]
        except InvalidInput as exc:
            errors.extend(FieldError(f"image_urls.{i}", e.message) for e in exc.errors)
    if errors:
        raise InvalidInput(errors)
    return _submit(falq, endpoint, {**data, "image_urls": urls}, opts)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@handle_errors
def status(job_id: str, as_json: bool) -> int:
    """Show a job's state, outputs, last error and logs tail."""
    rec = make_client().job(job_id).record()
    if as_json:
        emit_json(rec.public())
    else:
        stdout().print(record_view(rec))
    return EXIT_OK


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, metavar="S", help="Give up waiting after S seconds (exit 4).")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR", help="Save the images to DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the final record as JSON.")
@handle_errors
def wait(job_id: str, timeout: float | None, out: str | None, as_json: bool) -> int:
    """Wait for a job to end; exit 0 if it completed, 1 if it failed or was cancelled."""
    falq = make_client()
    return _finish(falq, job_id, timeout, out, as_json)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@handle_errors
def cancel(job_id: str, as_json: bool) -> int:
    """Cancel a job: at once if no worker has it yet, else its worker cancels it at fal."""
    from falq.producers.admin import Admin

    done = Admin(make_client()).cancel(job_id)
    rec = done.record
    if as_json:
        emit_json(rec.public())
    elif done.outcome == "cancelled":
        click.echo(f"{rec.id}: cancelled")
    elif done.outcome == "final":
        click.echo(f"{rec.id}: already {rec.state}; nothing to cancel")
    else:
        click.echo(f"{rec.id}: cancel requested (now {rec.state}; its worker cancels it at fal)")
    return EXIT_OK


@cli.command()
@click.option("--state", metavar="STATE", help=f"Only jobs in this state ({', '.join(STATES)}).")
@click.option("--limit", metavar="N", default="50", show_default=True, help="At most N jobs (1 to 100000).")
@click.option("--since", metavar="T", help="Only newer than T: 30s, 10m, 2h, 1d, an ISO time or epoch seconds.")
@click.option("--text", "--search", "text", metavar="WORDS", help="Only jobs whose prompt has every word "
              "(full-text search in the catalogue).")
@click.option("--endpoint", metavar="ID", help="Only jobs of this endpoint.")
@click.option("--tenant", metavar="NAME", help="Only jobs of this tenant.")
@click.option("--batch", "batch_id", metavar="ID", help="Only jobs of this batch.")
@click.option("--metadata", "meta", multiple=True, metavar="KEY=VALUE", help="Only jobs with this metadata "
              "(repeatable).")
@click.option("--errors", "show_errors", is_flag=True, help="Also list each job's full error history.")
@click.option("--json", "as_json", is_flag=True, help="Print the records (with their error history) as JSON.")
@handle_errors
def jobs(state: str | None, limit: str, since: str | None, text: str | None, endpoint: str | None,
         tenant: str | None, batch_id: str | None, meta: tuple[str, ...], show_errors: bool, as_json: bool) -> int:
    """List jobs, newest first: live ones and the catalogue's history (`--state failed --errors`:
    the dead letters and why; `--text "red fox" --since 7d`: a search)."""
    from falq.producers.admin import Admin

    bad = [m for m in meta if "=" not in m or not m.partition("=")[0].strip()]
    if bad:
        raise InvalidInput([FieldError("metadata", f"must be KEY=VALUE, got {bad[0]!r}")])
    recs = Admin(make_client()).jobs(state, since=since, limit=limit, text=text, endpoint=endpoint, tenant=tenant,
                                     batch_id=batch_id, metadata=_metadata(meta))
    if as_json:
        emit_json([r.public() for r in recs])
    elif not recs:
        click.echo("no jobs", err=True)
    else:
        stdout().print(jobs_table(recs))
        if show_errors:
            from falq.cli.limits import errors_view

            stdout().print(errors_view(recs))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``falq`` console script; returns the exit code.

    Example::

        main(["generate", "a red fox", "--json"])   # 0, prints the record
    """
    try:
        result = cli.main(args=argv, prog_name="falq", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else EXIT_OK


# --- helpers -------------------------------------------------------------------------------


def _lane(opts: dict[str, Any]) -> str:
    return cast(str, opts["lane"] or "interactive")


def _fields(opts: dict[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
    """The schema fields the user set (and conversion errors); unset ones are left out."""
    fields: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name in ("seed", "num_images"):
        raw = opts[name]
        if raw is None:
            continue
        if re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            fields[name] = int(raw)
        else:
            errors.append(FieldError(name, f"must be an integer (got {raw!r})"))
    if opts["image_size"] is not None:
        from falq.producers.bulk.enqueue import parse_image_size

        fields["image_size"] = parse_image_size(opts["image_size"])
    for opt, name in (("negative_prompt", "negative_prompt"), ("output_format", "output_format"),
                      ("prompt_expansion", "enable_prompt_expansion"), ("safety_checker", "enable_safety_checker"),
                      ("sync_mode", "sync_mode")):
        if opts[opt] is not None:
            fields[name] = opts[opt]
    for item in opts["metadata"]:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            errors.append(FieldError("metadata", f"must be KEY=VALUE, got {item!r}"))
    key = opts["idempotency_key"]
    if key is not None and (not 1 <= len(key) <= 200 or any(c.isspace() for c in key)):
        errors.append(FieldError("idempotency_key", "must be 1-200 characters without whitespace"))
    return fields, errors


def _metadata(items: tuple[str, ...]) -> dict[str, str] | None:
    if not items:
        return None
    return {k.strip(): v for k, _, v in (i.partition("=") for i in items)}


def _submit(falq: Falq, endpoint: str, data: dict[str, Any], opts: dict[str, Any]) -> int:
    handle = falq.submit(endpoint, data, lane=cast(Any, _lane(opts)), idempotency_key=opts["idempotency_key"],
                         metadata=_metadata(opts["metadata"]), callback_url=opts["callback_url"])
    if opts["wait"] or opts["out"]:
        return _finish(falq, handle.id, opts["timeout"], opts["out"], opts["as_json"])
    if opts["as_json"]:
        emit_json(handle.record().public())
    else:
        click.echo(handle.id)
        click.echo(f"queued; follow it with: falq wait {handle.id}", err=True)
    return EXIT_OK


def _finish(falq: Falq, job_id: str, timeout: float | None, out: str | None, as_json: bool) -> int:
    from falq.producers.client import JobTimeout

    handle = falq.job(job_id)
    try:
        rec = follow(handle.record, timeout, live=live_ok(as_json))
    except JobTimeout as exc:
        return fail(as_json, "timeout", str(exc), 4, job=handle.record().public())
    saved: list[Path] = []
    if out and rec.has_result:  # a cancelled job's images fal made anyway are saved too (billed, kept)
        from falq.shared.storage.s3 import Storage

        saved = save_outputs(rec, out, Storage(falq.settings))
    if as_json:
        emit_json({**rec.public(), "saved": [str(p) for p in saved]} if out else rec.public())
    else:
        stdout().print(record_view(rec))
        for p in saved:
            click.echo(f"saved {p}")
    if rec.state != "completed":
        if not as_json:
            click.echo(f"error: job {rec.id} ended {rec.state}", err=True)
        return EXIT_FAILED
    return EXIT_OK


__all__ = ["EXIT_INVALID", "cli", "main"]
