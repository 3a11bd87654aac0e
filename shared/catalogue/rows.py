"""A job record as a catalogue row, a row as a record, and the ``job.json`` document.

The row is the record minus what must not be kept in a database or a bucket: the callback
URL (only its host stays: a path or query may carry a token), data URIs in the input
(summarised to their type and sha256: megabytes each), and query strings of input URLs
(presigned URLs carry signatures). ``job.json`` is exactly the row as JSON, so a catalogue
rebuilt from the bucket (:func:`row_from_doc`) holds the very rows it had.

Example::

    row = row_from_record(rec, archived_at=time.time())
    doc = job_doc(row)              # what goes to S3 as job.json
    assert row_from_doc(doc) == row
    rec2 = record_from_row(row)     # for lookups of jobs no longer in Redis
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from falq.shared.catalogue.schema import STATE_COLUMNS, jobs
from falq.shared.egress import url_host
from falq.shared.jobs.records import TERMINAL, JobRecord

#: Bumped when the document's shape changes incompatibly (rebuild reads older ones too).
DOC_FORMAT = 1
COLUMNS = tuple(c.name for c in jobs.columns)
_DATA_URI = re.compile(r"^data:([^;,]*)[^,]*,", re.S)


def scrub_value(value: Any) -> Any:
    """``value`` with data URIs summarised and URL query strings dropped, recursively."""
    if isinstance(value, str):
        m = _DATA_URI.match(value)
        if m:
            digest = hashlib.sha256(value.encode()).hexdigest()
            return f"data:{m.group(1) or 'application/octet-stream'};sha256={digest};chars={len(value)}"
        if value.startswith(("http://", "https://")) and "?" in value:
            return value.split("?", 1)[0] + "?…"
        return value
    if isinstance(value, list):
        return [scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    return value


#: What :func:`scrub_value` leaves of a data URI, and of a URL's query string.
_DATA_SUMMARY = re.compile(r"^data:[^;,]*;sha256=[0-9a-f]{64};chars=\d+$")
_QUERY_DROPPED = "?\u2026"


def lost_in(value: Any, path: str = "input") -> list[tuple[str, str]]:
    """Where :func:`scrub_value` dropped something from ``value`` (a row's input), as
    ``(path, what was lost)``: a data URI kept as its sha256, a URL without its query string.

    An archived job is run again only from an input kept whole (``falq retry`` of a job only the
    catalogue holds, :mod:`falq.producers.admin`): a summary or a cut signed URL sent to fal
    would be a different job, or a refused one billed nothing but an attempt.

    Example::

        lost_in({"image_urls": ["https://h/k.png?\u2026"]})
        # [('input.image_urls[0]', 'a URL whose query string (a signature) is not kept')]
    """
    if isinstance(value, str):
        if _DATA_SUMMARY.match(value):
            return [(path, "a data URI, of which only its sha256 is kept")]
        if value.startswith(("http://", "https://")) and value.endswith(_QUERY_DROPPED):
            return [(path, "a URL whose query string (a signature) is not kept")]
        return []
    if isinstance(value, list):
        return [hit for i, v in enumerate(value) for hit in lost_in(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in lost_in(v, f"{path}.{k}")]
    return []


def row_from_record(rec: JobRecord, *, archived_at: float) -> dict[str, Any]:
    """The catalogue row of a (finished) record."""
    data = rec.model_dump(mode="json")
    inp = scrub_value(data["input"])
    prompt = inp.get("prompt") if isinstance(inp.get("prompt"), str) else None
    negative = inp.get("negative_prompt") if isinstance(inp.get("negative_prompt"), str) else None
    seed = rec.seed if rec.seed is not None else inp.get("seed") if isinstance(inp.get("seed"), int) else None
    finished = max((rec.timestamps.get(s, 0.0) for s in TERMINAL), default=0.0) or None
    row: dict[str, Any] = {
        "id": rec.id,
        "tenant": rec.tenant,
        "batch_id": rec.batch_id,
        "endpoint": rec.endpoint,
        "lane": rec.lane,
        "state": rec.state,
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": seed,
        "input": inp,
        "metadata": scrub_value(data["metadata"]),
        "outputs": data["outputs"],
        "submissions": data["submissions"],
        "request_id": rec.request_id or (rec.submissions[-1].request_id if rec.submissions else None),
        "attempts": rec.attempts,
        "errors": data["errors"],
        "error_type": rec.error.type if rec.error else None,
        "moderation": data["moderation"],
        "cost_estimate": rec.cost_estimate,
        "cost_billed": rec.cost_billed,
        "cost_source": rec.cost_source,
        "unit_price": rec.unit_price,
        "price_source": rec.price_source,
        "billable_units": rec.billable_units,
        "fal_outcome": rec.fal_outcome,
        **{f"{s}_at": rec.timestamps.get(s) for s in STATE_COLUMNS},
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "finished_at": finished,
        "inference_time": rec.inference_time,
        "queue_wait": rec.queue_wait,
        "logs": data["logs"],
        "parents": data["parents"],
        "idempotency_key": rec.idempotency_key,
        "callback_host": url_host(rec.callback_url),
        "version": rec.version,
        "archived_at": archived_at,
    }
    return {k: _no_nul(v) for k, v in row.items()}


def _no_nul(value: Any) -> Any:
    """``value`` without NUL characters, which PostgreSQL's text and JSONB cannot hold (a hostile
    answer's error text may carry one); a row that cannot be stored would be a job not archived."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    return value


def record_from_row(row: Any) -> JobRecord:
    """A :class:`JobRecord` from a catalogue row (a mapping), for lookups after Redis forgot it.

    The callback URL is not kept (``callback_url`` is None); ``metadata["callback"]`` still
    says how the delivery went."""
    r = dict(row)
    timestamps = {s: r[f"{s}_at"] for s in STATE_COLUMNS if r.get(f"{s}_at") is not None}
    data = {
        "id": r["id"], "endpoint": r["endpoint"], "input": r["input"] or {}, "lane": r["lane"], "state": r["state"],
        "timestamps": timestamps, "created_at": r["created_at"], "updated_at": r["updated_at"],
        "version": r["version"], "attempts": r["attempts"], "request_id": r["request_id"],
        "submissions": r["submissions"] or [], "errors": r["errors"] or [], "inference_time": r["inference_time"],
        "queue_wait": r["queue_wait"], "logs": r["logs"] or [], "outputs": r["outputs"] or [], "seed": r["seed"],
        "cost_estimate": r["cost_estimate"], "cost_billed": r["cost_billed"], "cost_source": r["cost_source"],
        "unit_price": r.get("unit_price"), "price_source": r.get("price_source"),
        "billable_units": r.get("billable_units"), "fal_outcome": r.get("fal_outcome"),
        "moderation": r["moderation"], "tenant": r["tenant"], "batch_id": r["batch_id"],
        "parents": r["parents"] or [], "idempotency_key": r["idempotency_key"], "metadata": r["metadata"] or {},
    }
    return JobRecord.model_validate(data)


def job_doc(row: dict[str, Any]) -> dict[str, Any]:
    """The ``job.json`` document of a row: the row itself, plus its format number."""
    return {"falq_job_json": DOC_FORMAT, **{k: row.get(k) for k in COLUMNS}}


def row_from_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """The row a ``job.json`` document describes; raises ValueError if it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("falq_job_json"), int) or not doc.get("id"):
        raise ValueError("not a falq job.json document")
    missing = [c for c in ("id", "endpoint", "lane", "state", "created_at", "version") if doc.get(c) is None]
    if missing:
        raise ValueError(f"job.json lacks {', '.join(missing)}")
    row = {k: doc.get(k) for k in COLUMNS}
    for k in ("input", "metadata"):
        row[k] = row[k] or {}
    for k in ("outputs", "submissions", "errors", "logs", "parents"):
        row[k] = row[k] or []
    row["tenant"] = row["tenant"] or "default"
    row["attempts"] = row["attempts"] or 0
    row["cost_estimate"] = row["cost_estimate"] or 0.0
    row["cost_source"] = row["cost_source"] or "estimate"
    row["updated_at"] = row["updated_at"] or row["created_at"]
    row["archived_at"] = row["archived_at"] or row["updated_at"]
    return row
