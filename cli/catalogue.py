"""``falq catalogue``: the catalogue of finished jobs, and its recovery path from the bucket.

Examples::

    falq catalogue rebuild --from-s3                               # every job.json under FALQ_S3_PREFIX
    falq catalogue rebuild --from-s3 --prefix falq/fal-ai/qwen-image-2/text-to-image/2026/05/
    falq catalogue where                                           # which database this is

Each job's ``job.json`` (written by the archiver beside its images) holds its catalogue row,
so when Redis and the database are both lost, the bucket alone rebuilds the catalogue: the
rows are upserted by id (a row never replaces a newer version of the same job), so a rebuild
can run on a live catalogue and be repeated.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from falq.cli.output import EXIT_OK, emit_json, handle_errors


@click.group()
def catalogue() -> None:
    """The catalogue of finished jobs: rebuild it from the job.json objects in S3."""


def rebuild_from_s3(settings: Any, prefix: str | None = None, *, batch: int = 500) -> dict[str, Any]:
    """Upsert the row of every ``job.json`` under ``prefix``; returns counts (and bad keys)."""
    from falq.shared.catalogue.rows import row_from_doc
    from falq.shared.catalogue.store import get_catalogue
    from falq.shared.storage.s3 import Storage

    storage = Storage(settings)
    cat = get_catalogue(settings, check=True)
    rows: list[dict[str, Any]] = []
    seen = upserted = 0
    bad: list[str] = []
    t0 = time.monotonic()
    for key in storage.list_keys(prefix or ""):
        if not key.endswith("/job.json"):
            continue
        seen += 1
        try:
            rows.append(row_from_doc(json.loads(storage.get_bytes(key))))
        except ValueError as exc:  # not one of ours, or damaged: say which, go on
            bad.append(f"{key}: {exc}")
            continue
        if len(rows) >= batch:
            upserted += cat.upsert(rows)
            rows = []
    upserted += cat.upsert(rows)
    return {"objects": seen, "upserted": upserted, "bad": bad, "seconds": round(time.monotonic() - t0, 3)}


@catalogue.command()
@click.option("--from-s3", "from_s3", is_flag=True, required=True, help="Read the job.json objects in the bucket.")
@click.option("--prefix", metavar="KEY_PREFIX", help="Only objects under this key prefix (default FALQ_S3_PREFIX).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@handle_errors
def rebuild(from_s3: bool, prefix: str | None, as_json: bool) -> int:
    """Rebuild the catalogue from the bucket's job.json objects (idempotent)."""
    from falq.shared.catalogue.engine import database_url, describe
    from falq.shared.settings import get_settings

    settings = get_settings()
    out = rebuild_from_s3(settings, prefix)
    out["database"] = describe(database_url(settings))
    if as_json:
        emit_json(out)
    else:
        click.echo(f"{out['upserted']} jobs upserted into {out['database']} from {out['objects']} job.json objects "
                   f"in {out['seconds']}s")
        for line in out["bad"]:
            click.echo(f"skipped {line}", err=True)
    return EXIT_OK if not out["bad"] else 1


@catalogue.command()
def where() -> int:
    """Print which database the catalogue is (the password masked)."""
    from falq.shared.catalogue.engine import database_url, describe
    from falq.shared.settings import get_settings

    click.echo(describe(database_url(get_settings())))
    return EXIT_OK
