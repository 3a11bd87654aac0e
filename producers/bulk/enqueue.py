"""Bulk pipelines: validate a whole JSONL or CSV file, enqueue it idempotently, follow it.

A file is validated completely before anything is enqueued: every bad line is collected
with its line number and field (``line 12: input.prompt: must not be empty``). Valid lines
become :class:`BulkLine` entries that :func:`enqueue` sends through
:meth:`falq.producers.client.Falq.submit_many` in pipelined chunks; :func:`wait_and_report`
(see :mod:`falq.producers.bulk.wait`) follows the jobs and writes a results JSONL.

Idempotency (what makes "rerun the same command" safe): every line gets the key

* ``bulk:{file_key}:id:{id}`` when the line has an ``id``, or
* ``bulk:{file_key}:sha:{h}.{n}`` otherwise, where ``h`` is the sha256 of the line's
  content (canonical JSON of the line object plus its effective endpoint) and ``n`` counts
  earlier identical lines, so duplicated lines stay distinct jobs.

``file_key`` is ``--run-id`` when given, else the first 16 hex digits of the sha256 of the
file's resolved absolute path. Keys therefore do not depend on line positions or on the
rest of the file: after a crash or Ctrl-C, rerunning the same file -- even after fixing,
adding or removing lines -- enqueues only lines whose job does not exist yet, and a job
whose broker message was never sent is re-published (``submit_many`` does both). A
different path (a copy, another host) is a different run unless ``--run-id`` pins it.
Keys live as long as their job record (``FALQ_RECORD_TTL_S`` after the job ends).

Example::

    from falq.producers import Falq
    from falq.producers.bulk.enqueue import enqueue, load_file, wait_and_report

    falq = Falq()
    lines, rejects = load_file("prompts.jsonl", falq)
    job_ids = enqueue(falq, lines)
    report = wait_and_report(falq, lines, job_ids, rejects=rejects, results_path="prompts.results.jsonl")
    print(report.summary())
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falq.producers.bulk.batches import plan_chains
from falq.producers.bulk.parse import (
    CSV_COLUMNS,
    BulkLine,
    Entry,
    Reject,
    format_of,
    json_type,
    parse_csv,
    parse_image_size,
    parse_jsonl,
)
from falq.producers.bulk.wait import BulkReport, Snapshot, wait_and_report
from falq.producers.client import JobRequest
from falq.shared.errors import FieldError, InvalidInput

if TYPE_CHECKING:
    from falq.producers.client import Falq

__all__ = [
    "CSV_COLUMNS",
    "BulkLine",
    "BulkReport",
    "Reject",
    "Snapshot",
    "enqueue",
    "file_key",
    "load_bytes",
    "load_file",
    "parse_image_size",
    "upload_lines",
    "validate_all",
    "wait_and_report",
    "write_rejects",
]

DEFAULT_ENDPOINT = "fal-ai/qwen-image-2/text-to-image"
LINE_KEYS = ("endpoint", "input", "id", "metadata", "lane", "callback_url")
_OWN_FIELDS = ("endpoint", "lane", "callback_url", "input", "tenant")


def file_key(path: str | Path, run_id: str | None = None) -> str:
    """The run part of bulk idempotency keys: ``run_id`` or a hash of the file's absolute path.

    Example::

        file_key("jobs.jsonl")            # '3f1c0e9a7b2d4c11' (same file, same key)
        file_key("jobs.jsonl", "nightly") # 'nightly'
    """
    if run_id is not None:
        if not 1 <= len(run_id) <= 64 or any(c.isspace() for c in run_id):
            raise InvalidInput([FieldError("run_id", "must be 1-64 characters without whitespace")])
        return run_id
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]


def load_file(path: str | Path, falq: Falq, *, fmt: str | None = None, endpoint: str = DEFAULT_ENDPOINT,
              lane: str = "bulk", run_id: str | None = None) -> tuple[list[BulkLine], list[Reject]]:
    """Read and validate a whole bulk file; nothing touches Redis.

    Parameters:
        path: a ``.jsonl``/``.ndjson`` or ``.csv`` file (or any name with ``fmt``).
        falq: the client whose settings validate (e.g. the ``num_images`` ceiling).
        fmt: ``jsonl`` or ``csv`` to override the extension.
        endpoint: endpoint of CSV rows and of JSONL lines without one.
        lane: lane of lines without one (``bulk`` by default).
        run_id: pins the idempotency run key (see the module docs).

    Returns ``(lines, rejects)``. Raises :class:`InvalidInput` (field ``file``) when the
    file as a whole is unusable: unreadable, empty, unknown format, bad CSV header.

    Example::

        lines, rejects = load_file("prompts.csv", falq, endpoint="fal-ai/qwen-image-2/pro/text-to-image")
        for r in rejects:
            print("\\n".join(r.messages()))
    """
    p = Path(path)
    kind = format_of(p, fmt)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidInput([FieldError("file", f"cannot read {str(p)!r} ({exc.strerror or exc})")]) from None
    return load_bytes(data, falq, fmt=kind, fkey=file_key(p, run_id), name=str(p), endpoint=endpoint, lane=lane)


def load_bytes(data: bytes, falq: Falq, *, fmt: str, fkey: str, name: str, endpoint: str = DEFAULT_ENDPOINT,
               lane: str = "bulk") -> tuple[list[BulkLine], list[Reject]]:
    """:func:`load_file` of bytes already read (a gateway upload): ``fkey`` is the run key.

    The lines come back parents first when some reference others (``falq:LINE_ID#N``,
    :func:`falq.producers.bulk.batches.plan_chains`); references are checked with the rest.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if fmt == "csv":
        entries, rejects = parse_csv(data)
    else:
        entries, rejects = parse_jsonl(data)
    if not entries and not rejects:
        raise InvalidInput([FieldError("file", f"{name!r} holds no jobs (it is empty)")])
    lines, rejects = _validate(entries, rejects, falq, fkey, endpoint, lane)
    return plan_chains(falq, lines, rejects)


def upload_lines(falq: Falq, data: bytes, *, name: str) -> tuple[list[BulkLine], list[Reject], str]:
    """Validate a JSONL upload (``POST /v1/batches``) like a bulk file; returns ``(lines,
    rejects, run key)``. The run key comes from the upload's sha256 (and the tenant, through
    the batch id), so sending the same bytes again joins the same batch and jobs."""
    sha = hashlib.sha256(data).hexdigest()
    fkey = f"up{sha[:16]}"
    lines, rejects = load_bytes(data, falq, fmt="jsonl", fkey=fkey, name=name)
    return lines, rejects, f"bulk:{fkey}"


def enqueue(falq: Falq, items: Sequence[BulkLine | JobRequest], *, chunk_size: int = 500,
            on_chunk: Callable[[int, int], None] | None = None) -> list[str]:
    """Enqueue validated lines in chunks with pipelined Redis writes; returns the job ids.

    Lines whose idempotency key already names a job are not enqueued again (their id is
    returned). ``on_chunk(done, new_in_chunk)`` is called after each chunk.

    Example::

        job_ids = enqueue(falq, lines, on_chunk=lambda done, new: print(done, new))
    """
    ids: list[str] = []
    for start in range(0, len(items), chunk_size):
        chunk = items[start:start + chunk_size]
        reqs = [it.request if isinstance(it, BulkLine) else it for it in chunk]
        res = falq.submit_many(reqs)
        ids.extend(job_id for job_id, _ in res)
        if on_chunk is not None:
            on_chunk(len(ids), sum(1 for _, created in res if created))
    return ids


def write_rejects(path: str | Path, rejects: Sequence[Reject]) -> Path:
    """Write one JSON line per rejected line: ``{line, errors: [{field, message}], raw}``."""
    out = Path(path)
    with out.open("w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    return out


# --- validation ------------------------------------------------------------------------------


def _validate(entries: list[Entry], rejects: list[Reject], falq: Falq, fkey: str, endpoint: str,
              lane: str) -> tuple[list[BulkLine], list[Reject]]:
    good: list[BulkLine] = []
    seen_ids: dict[str, int] = {}
    seen_content: dict[str, int] = {}
    for n, obj, raw in entries:
        errors = [FieldError(k, f"is not a line field (known: {', '.join(LINE_KEYS)})")
                  for k in obj if k not in LINE_KEYS]
        line_id = obj.get("id")
        if "id" in obj and not (isinstance(line_id, str) and 1 <= len(line_id) <= 200):
            errors.append(FieldError("id", f"must be a string of 1-200 characters, not {json_type(line_id)}"
                                     if not isinstance(line_id, str) else "must be 1-200 characters"))
            line_id = None
        elif isinstance(line_id, str):
            if line_id in seen_ids:
                errors.append(FieldError("id", f"duplicate of line {seen_ids[line_id]}"))
            else:
                seen_ids[line_id] = n
        metadata = obj.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            errors.append(FieldError("metadata", f"must be a JSON object, not {json_type(metadata)}"))
        ep = obj.get("endpoint", endpoint)
        line_lane = obj.get("lane", lane)
        callback = obj.get("callback_url")
        if callback is not None and not isinstance(callback, str):
            errors.append(FieldError("callback_url", f"must be a string, not {json_type(callback)}"))
            callback = None
        if "input" not in obj:
            errors.append(FieldError("input", "is required"))
            req = None
        else:
            req, errs = validate_all(falq, ep, obj["input"], lane=line_lane, callback_url=callback)
            errors.extend(FieldError(e.field if e.field.split(".")[0] in _OWN_FIELDS else f"input.{e.field}",
                                     e.message) for e in errs)
        content = hashlib.sha256(_canonical(obj, ep).encode()).hexdigest()[:32]
        occurrence = seen_content.get(content, 0)
        seen_content[content] = occurrence + 1
        if errors or req is None:
            rejects.append(Reject(n, errors, raw))
            continue
        key = _line_key(fkey, line_id if isinstance(line_id, str) else None, content, occurrence)
        good.append(BulkLine(n, line_id if isinstance(line_id, str) else None,
                             replace(req, idempotency_key=key, metadata=dict(metadata or {}))))
    rejects.sort(key=lambda r: r.line)
    return good, rejects


def validate_all(falq: Falq, endpoint: Any, data: Any, *, lane: Any = "interactive",
                 callback_url: Any = None) -> tuple[JobRequest | None, list[FieldError]]:
    """:meth:`Falq.validate` returning ``(request, errors)`` instead of raising.

    Example::

        req, errors = validate_all(falq, "fal-ai/qwen-image-2/edit", {"prompt": ""}, lane="fast")
        # errors: prompt: must not be empty; image_urls: is required; lane: must be ...
    """
    try:
        return falq.validate(endpoint, data, lane=lane, callback_url=callback_url), []
    except InvalidInput as exc:
        return None, list(exc.errors)


def _canonical(obj: dict[str, Any], endpoint: Any) -> str:
    # The lane is left out on purpose: rerunning with another --lane must not duplicate jobs.
    body = {k: v for k, v in obj.items() if k != "lane"}
    body["endpoint"] = endpoint
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _line_key(fkey: str, line_id: str | None, content: str, occurrence: int) -> str:
    if line_id is not None:
        if len(line_id) <= 120 and not any(c.isspace() for c in line_id):
            return f"bulk:{fkey}:id:{line_id}"
        return f"bulk:{fkey}:idh:{hashlib.sha256(line_id.encode()).hexdigest()[:32]}"
    return f"bulk:{fkey}:sha:{content}.{occurrence}"
