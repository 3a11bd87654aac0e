"""fal's shapes of a finished job: the failure it reports, its result body, its webhook payload.

Pure functions of a job record (no I/O but the ``presign`` callable). The gateway answers
fal's result route with them (:mod:`falq.gateway.fal.views`), and the workers' webhook sender
(:mod:`falq.workers.callbacks.sender`) posts :func:`fal_payload` to a job's ``fal_webhook``, so a
caller that came through fal's protocol gets the body fal would send, whoever delivers it.

Example::

    fal_payload(rec, storage.presign)
    # {'request_id': ..., 'gateway_request_id': ..., 'status': 'OK', 'payload': {'images': [...]}, 'error': None}
"""

from __future__ import annotations

import base64
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from falq.shared.jobs.records import JobRecord

_HTTP_422 = re.compile(r"\(422\)|answered 422|status code:? 422")


@dataclass(frozen=True)
class Failure:
    """How a failed or cancelled job answers on fal's result route."""

    status_code: int
    error_type: str
    message: str
    detail: Any


def failure(rec: JobRecord) -> Failure | None:
    """The error a finished-but-unsuccessful job reports, or None when it did not fail."""
    if rec.kept_after_cancel:
        # fal completed the request despite the cancel: live fal answers its result like any
        # completed one (fal-ai/fal projects/fal/tests/e2e/test_apps.py test_app_cancellation:
        # "normal app should just ignore the cancellation", then `get()` returns the result;
        # fal_client's `get()` waits for COMPLETED and returns the result body, no cancel mark
        # exists in the protocol). So status, result and webhook answer it as completed; falq's
        # own `cancelled` state and `fal_outcome` stay visible in its REST view of the job.
        return None
    if rec.state == "cancelled":
        return Failure(499, "client_cancelled", "Request was cancelled", "Request was cancelled")
    if rec.state != "failed":
        return None
    err = rec.error
    kind, message = (err.type, err.message) if err else ("internal_error", "the job failed")
    if kind == "content_policy":
        entry = {"loc": ["body", "prompt"], "msg": message, "type": "content_policy_violation",
                 "url": "https://docs.fal.ai/errors#content_policy_violation", "categories": rec.moderation or []}
        return Failure(422, "content_policy_violation", message, [entry])
    if kind == "start_timeout":
        return Failure(504, "request_timeout", message, message)
    if kind == "invalid_input" or _HTTP_422.search(message):
        return Failure(422, "validation_error", message,
                       [{"loc": ["body"], "msg": message, "type": "value_error"}])
    if kind == "deadline_exceeded":
        return Failure(504, "request_timeout", message, message)
    if kind == "attempts_exhausted" or (err is not None and err.retryable):
        return Failure(503, "runner_scheduling_failure", message, message)
    return Failure(500, kind if kind != "permanent" else "internal_error", message, message)


def result_body(rec: JobRecord, presign: Callable[[str], str],
                read: Callable[[str], bytes] | None = None) -> dict[str, Any]:
    """fal's output shape for a job with a result (:attr:`JobRecord.has_result`: completed, or
    finished by fal after a cancel), image URLs replaced by presigned S3 URLs.

    Each image also carries ``s3`` (bucket, key, sha256) so callers can address the copy
    directly. ``presign`` turns an object key into a GET URL. For a ``sync_mode`` job,
    ``read`` fetches each copy and the URL is a data URI, as fal answers ``sync_mode``.
    """
    sync = bool(rec.input.get("sync_mode")) and read is not None

    def url(key: str, content_type: str) -> str:
        if sync and read is not None:
            return f"data:{content_type};base64,{base64.b64encode(read(key)).decode()}"
        return presign(key)

    images = [{
        "url": url(img.key, img.content_type),
        "content_type": img.content_type,
        "file_name": posixpath.basename(img.key),
        "file_size": img.size,
        "width": img.width,
        "height": img.height,
        "s3": {"bucket": img.bucket, "key": img.key, "sha256": img.sha256},
    } for img in sorted(rec.outputs, key=lambda i: i.index)]
    return {"images": images, "seed": rec.seed}


def fal_payload(rec: JobRecord, presign: Callable[[str], str]) -> dict[str, Any]:
    """fal's webhook body for a finished job (what ``?fal_webhook=`` receives).

    ``status`` is ``OK`` with the result as ``payload``, or ``ERROR`` with fal's error body
    and ``error`` = ``"Invalid status code: <code>"``, as fal's own webhooks carry it.
    """
    fail = failure(rec)
    if fail is None:
        return {"request_id": rec.id, "gateway_request_id": rec.id, "status": "OK",
                "payload": result_body(rec, presign), "error": None}
    payload = {"detail": fail.detail} if fail.status_code == 422 else \
        {"detail": fail.detail, "error_type": fail.error_type}
    return {"request_id": rec.id, "gateway_request_id": rec.id, "status": "ERROR", "payload": payload,
            "error": f"Invalid status code: {fail.status_code}"}
