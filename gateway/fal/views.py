"""falq's job records as fal's queue protocol shows them: status bodies, results, errors.

Pure functions (no I/O), so the mapping is easy to test and read in one place:

========================================  ==============  =====================================
falq state                                fal status      extra
========================================  ==============  =====================================
queued, submitting, in_queue              ``IN_QUEUE``    ``queue_position``
in_progress, mirroring                    ``IN_PROGRESS`` ``logs`` (the record's logs tail)
completed                                 ``COMPLETED``   ``metrics.inference_time``
failed, cancelled                         ``COMPLETED``   ``error``, ``error_type``
cancelled, fal finished it anyway         ``COMPLETED``   as completed (billed, images kept)
========================================  ==============  =====================================

A failed or cancelled job's *result* answers with an error status as fal's does: 422 for
validation failures and for moderation (``detail[].type == "content_policy_violation"``),
499 when cancelled (unless fal finished the request anyway: then its images, as fal answers
it), 504 past the deadline (with ``X-Fal-Request-Timeout-Type: user`` for a
start timeout), 503 when every attempt failed transiently, 500 otherwise -- always with
``detail`` and ``X-Fal-Error-Type``. A ``sync_mode`` job's images come back as data URIs
of the S3 copies, as fal returns them for ``sync_mode``.

Example::

    status_body(rec, urls, position=3, with_logs=False)
    # {'status': 'IN_QUEUE', 'request_id': ..., 'queue_position': 3, 'logs': None, ...}
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from falq.shared.errors import FieldError, InvalidInput
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.fal.shapes import Failure as Failure  # shared with the workers' fal_webhook sender
from falq.shared.fal.shapes import failure as failure
from falq.shared.fal.shapes import result_body as result_body
from falq.shared.jobs.records import JobRecord

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
FAL_STATUS = {
    "waiting": IN_QUEUE, "queued": IN_QUEUE, "submitting": IN_QUEUE, "in_queue": IN_QUEUE,
    "in_progress": IN_PROGRESS, "mirroring": IN_PROGRESS,
    "completed": COMPLETED, "failed": COMPLETED, "cancelled": COMPLETED,
}
APPS = frozenset(e.app for e in ENDPOINTS.values())


def app_of(endpoint: str) -> str:
    """``owner/app`` of an endpoint id: the base of its status, result and cancel URLs."""
    return "/".join(endpoint.split("/")[:2])


def queue_urls(base: str, rec: JobRecord) -> dict[str, str]:
    """``status_url``, ``response_url`` and ``cancel_url`` of a job, pointing at the gateway."""
    root = f"{base}/{app_of(rec.endpoint)}/requests/{rec.id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def log_entries(rec: JobRecord) -> list[dict[str, str]]:
    """The record's logs tail as fal log objects, each with fal's own timestamp of the line,
    so a client deduplicating by (timestamp, message) sees every line once. Lines without
    one get the job's creation time (stable across later record updates)."""
    at = rec.log_at if len(rec.log_at) == len(rec.logs) else [0.0] * len(rec.logs)
    fallback = rec.created_at
    return [{"message": line, "level": "INFO", "source": "USER",
             "timestamp": dt.datetime.fromtimestamp(t or fallback, dt.UTC).isoformat()}
            for line, t in zip(rec.logs, at, strict=True)]


def status_body(rec: JobRecord, urls: dict[str, str], *, position: int, with_logs: bool) -> dict[str, Any]:
    """fal's status object for a job (what ``GET .../status`` and each SSE frame carry)."""
    status = FAL_STATUS[rec.state]
    body: dict[str, Any] = {"status": status, "request_id": rec.id, **urls,
                            "logs": log_entries(rec) if with_logs else None}
    if status == IN_QUEUE:
        body["queue_position"] = position
    if status == COMPLETED:
        body["metrics"] = {"inference_time": rec.inference_time} if rec.inference_time is not None else {}
        fail = failure(rec)
        if fail is not None:
            body["error"] = fail.message
            body["error_type"] = fail.error_type
    return body


def error_result(fail: Failure) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` of the result route for a failed job."""
    headers = {"x-fal-error-type": fail.error_type}
    if fail.status_code == 504 and fail.message.startswith("fal dropped the request unbilled"):
        headers["x-fal-request-timeout-type"] = "user"
    if fail.status_code == 422:
        headers["x-fal-retryable"] = "false"
        return 422, {"detail": fail.detail}, headers
    return fail.status_code, {"detail": fail.detail, "error_type": fail.error_type}, headers


def validation_detail(exc: InvalidInput, root: str = "body") -> list[dict[str, Any]]:
    """fal's 422 ``detail`` entries (``loc``, ``msg``, ``type``) for falq's field errors."""
    return [_entry(err, [root]) for err in exc.errors]


def _entry(err: FieldError, loc: list[str | int]) -> dict[str, Any]:
    loc = list(loc)
    for part in err.field.split(".") if err.field and err.field != "input" else []:
        loc.append(int(part) if part.isdigit() else part)
    kind = "missing" if err.message == "is required" else "value_error"
    return {"loc": loc, "msg": err.message, "type": kind}
