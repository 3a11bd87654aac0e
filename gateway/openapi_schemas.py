"""The response schemas of the gateway's OpenAPI document (see :mod:`falq.gateway.openapi`).

Example::

    SCHEMAS["QueueStatus"]["properties"]["status"]["enum"]    # ['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED']
"""

from __future__ import annotations

from typing import Any

from falq.shared.records import STATES


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, **extra}
    if required:
        out["required"] = required
    return out


STR: dict[str, Any] = {"type": "string"}
NUM: dict[str, Any] = {"type": "number"}
INT: dict[str, Any] = {"type": "integer"}
BOOL: dict[str, Any] = {"type": "boolean"}
NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
NULLABLE_NUM: dict[str, Any] = {"type": ["number", "null"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": obj({"detail": {}, "error_type": STR}, ["detail"]),
    "NotFound": obj({"status": {"const": "NOT_FOUND"}, "detail": STR}),
    "FalError": obj({"detail": {}, "error_type": STR}, ["detail"]),
    "ValidationError": obj({
        "detail": {"type": "array", "items": obj({"loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                                                  "msg": STR, "type": STR}, ["loc", "msg", "type"])},
        "invalid": {"type": "array", "items": obj({"index": INT, "errors": {"type": "array"}})},
    }, ["detail"]),
    "LogEntry": obj({"message": STR, "level": STR, "source": STR, "timestamp": STR},
                    ["message", "level", "source", "timestamp"]),
    "SubmitResponse": obj({
        "status": {"const": "IN_QUEUE"}, "request_id": STR, "gateway_request_id": STR,
        "response_url": STR, "status_url": STR, "cancel_url": STR, "queue_position": INT,
        "logs": {"type": "null"}, "metrics": {"type": "object"},
    }, ["status", "request_id", "response_url", "status_url", "cancel_url", "queue_position"]),
    "QueueStatus": obj({
        "status": {"enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
        "request_id": STR, "response_url": STR, "status_url": STR, "cancel_url": STR,
        "queue_position": {"type": "integer", "minimum": 0, "description": "jobs ahead in falq's queue (IN_QUEUE)"},
        "logs": {"type": ["array", "null"], "items": ref("LogEntry")},
        "metrics": obj({"inference_time": NUM}),
        "error": STR, "error_type": STR,
    }, ["status", "request_id", "logs"]),
    "S3Location": obj({"bucket": STR, "key": STR, "sha256": STR}, ["bucket", "key", "sha256"]),
    "Image": obj({
        "url": {"type": "string", "description": "presigned GET URL of falq's S3 copy"},
        "content_type": STR, "file_name": STR, "file_size": INT, "width": INT, "height": INT, "s3": ref("S3Location"),
    }, ["url", "content_type", "s3"]),
    "Result": obj({"images": {"type": "array", "items": ref("Image")}, "seed": {"type": ["integer", "null"]}},
                  ["images", "seed"]),
    "CancelStatus": obj({"status": {"enum": ["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]}}, ["status"]),
    "JobRecord": obj({
        "id": STR, "endpoint": STR, "input": {"type": "object"}, "lane": {"enum": ["interactive", "bulk"]},
        "state": {"enum": list(STATES)}, "fal_status": {"enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
        "paused": NULLABLE_STR, "timestamps": {"type": "object", "additionalProperties": NUM},
        "created_at": NUM, "updated_at": NUM, "attempts": INT, "request_id": NULLABLE_STR,
        "errors": {"type": "array", "items": {"type": "object"}}, "error": {"type": ["object", "null"]},
        "error_type": STR, "outputs": {"type": "array", "items": {"type": "object"}},
        "seed": {"type": ["integer", "null"]}, "cost_estimate": NUM, "idempotency_key": NULLABLE_STR,
        "metadata": {"type": "object"}, "callback_url": NULLABLE_STR, "logs": {"type": "array", "items": STR},
        "result": ref("Result"), "retried": BOOL,
    }, ["id", "endpoint", "state"]),
    "JobList": obj({
        "jobs": {"type": "array", "items": ref("JobRecord")}, "count": INT, "scanned": INT,
        "truncated": {"type": "boolean", "description": "the metadata scan stopped at its cap; page on"},
        "next_until": {**NULLABLE_NUM, "description": "pass as `until` for the next page"},
        "history": {"type": "string", "enum": ["included", "unavailable", "off"],
                    "description": "finished jobs from the catalogue: merged in, unreachable now, or not kept"},
    }, ["jobs", "count", "truncated", "next_until"]),
    "BulkResult": obj({
        "jobs": {"type": "array", "items": obj({"index": INT, "id": STR, "created": BOOL})},
        "created": INT, "existing": INT,
    }, ["jobs", "created", "existing"]),
    "RetryFailed": obj({"retried": {"type": "array", "items": STR}, "count": INT}, ["retried", "count"]),
    "Limits": obj({
        "config": obj({"rate": NUM, "burst": INT, "max_outstanding": INT,
                       "max_outstanding_per_endpoint": {"type": "object", "additionalProperties": INT},
                       "budget_daily": NULLABLE_NUM}),
        "keys": {"type": "array", "items": {"type": "object"}},
        "resumed": {"type": "array", "items": STR},
    }, ["config", "keys"]),
    "Budget": obj({"day": STR, "spent_usd": NUM, "budget_usd": NULLABLE_NUM, "remaining_usd": NULLABLE_NUM,
                   "jobs_paused": INT}, ["day", "spent_usd", "budget_usd", "remaining_usd", "jobs_paused"]),
    "Health": obj({"ok": BOOL}, ["ok"]),
    "Ready": obj({"ok": BOOL, "checks": {"type": "object", "additionalProperties": STR}}, ["ok", "checks"]),
    "Ok": obj({"ok": BOOL}, ["ok"]),
}
