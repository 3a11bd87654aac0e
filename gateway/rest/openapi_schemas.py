"""The response schemas of the gateway's OpenAPI document (see :mod:`falq.gateway.rest.openapi`).

Each schema is the shape the route's code builds (the ``as_json`` / ``model_dump`` it answers),
so the schemathesis run (``tests/system/test_gateway_openapi_schemathesis.py``) can hold every answer
to it: a field renamed or a status word added in the code fails that test until it is here.

Example::

    SCHEMAS["QueueStatus"]["properties"]["status"]["enum"]    # ['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED']
"""

from __future__ import annotations

from typing import Any

from falq.shared.jobs.records import STATES


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

def _tenant_schemas() -> dict[str, dict[str, Any]]:
    """``/v1/tenants``: a tenant as :class:`falq.shared.tenants.store.Tenant` dumps it, and its keys
    as :meth:`falq.shared.tenants.store.ApiKey.as_json` gives them (never the key but once, at creation)."""
    key_props = {"id": STR, "tenant": STR, "scopes": {"type": "array", "items": {"enum": ["submit", "read", "admin"]}},
                 "label": STR, "created": NUM, "last4": STR}
    return {
        "Tenant": obj({"name": STR, "weight": NUM, "max_outstanding": {"type": ["integer", "null"]},
                       "rate": NULLABLE_NUM, "budget_usd": NULLABLE_NUM,
                       "endpoints": {"type": "array", "items": STR, "description": "empty: every endpoint"},
                       "s3_prefix": {"type": "string", "description": "empty: the tenant's name"},
                       "priority": {"enum": ["normal", "low", None],
                                    "description": "X-Fal-Queue-Priority of its jobs (null: the lane's setting)"}},
                      ["name", "weight", "max_outstanding", "rate", "budget_usd", "endpoints", "s3_prefix"],
                      additionalProperties=False),
        "TenantList": obj({"tenants": {"type": "array", "items": ref("Tenant")}}, ["tenants"]),
        "TenantRemoved": obj({"removed": STR}, ["removed"]),
        "ApiKeyInfo": obj(key_props, list(key_props), additionalProperties=False),
        "ApiKeyList": obj({"keys": {"type": "array", "items": ref("ApiKeyInfo")}}, ["keys"]),
        "ApiKeyCreated": obj({**key_props, "key": {"type": "string", "description": "the key itself: shown only here"}},
                             [*key_props, "key"], additionalProperties=False),
        "ApiKeyRevoked": obj({"revoked": STR}, ["revoked"]),
    }


def _batch_schemas() -> dict[str, dict[str, Any]]:
    """``/v1/batches``: :meth:`falq.shared.batches.store.Batch.as_json` (plus ``tree`` from
    :class:`falq.producers.bulk.batches.BatchView`), the price of an upload, and the JSONL rows."""
    counts = obj({s: INT for s in STATES}, list(STATES), additionalProperties=False)
    usd_row = obj({"jobs": INT, "images": INT, "unit_usd": NUM, "usd": NUM}, ["jobs", "images", "unit_usd", "usd"])
    line_error = obj({"field": {"type": "string", "description": "dotted (input.prompt); empty: the whole line"},
                      "message": STR}, ["field", "message"])
    batch_id = {"type": "string", "pattern": "^b[0-9a-f]{24}$"}
    return {
        "Batch": obj({
            "id": batch_id, "object": {"const": "batch"}, "name": STR, "tenant": STR,
            "source": obj({"file_name": STR, "sha256": STR, "run_key": STR}, ["file_name", "sha256", "run_key"]),
            "created_at": NUM, "finished_at": {**NULLABLE_NUM, "description": "when the last job ended (null while "
                                                                              "some still run)"},
            "status": {"enum": ["in_progress", "paused", "completed"],
                       "description": "paused: some jobs wait at the batch's spend cap (see paused_reason)"},
            "paused_reason": {**NULLABLE_STR, "description": "why jobs wait (batch_spend_cap: ...), else null"},
            "spend_cap": {"oneOf": [{"type": "null"}, obj({
                "max_spend_usd": {**NULLABLE_NUM, "description": "the cap (null: none)"},
                "billed_usd": NUM, "reserved_usd": NUM,
                "waiting": {**INT, "description": "jobs paused at the cap (paused: batch_spend_cap)"},
                "paused_reason": NULLABLE_STR}, ["max_spend_usd", "billed_usd", "reserved_usd", "waiting"])]},
            "counts": counts, "total": INT, "done": INT,
            "spend": obj({"estimated_usd": NUM, "billed_usd": NUM}, ["estimated_usd", "billed_usd"]),
            "throughput_per_min": NUM, "eta_s": {**NULLABLE_NUM, "description": "null: no job has ended yet"},
            "tree": {"type": "array", "description": "per depth of a chained batch (0: jobs without parents), "
                                                     "counts by state; absent in listings, empty for a flat batch",
                     "items": obj({"depth": INT, "counts": {"type": "object", "additionalProperties": INT},
                                   "total": INT}, ["depth", "counts", "total"])},
        }, ["id", "object", "name", "tenant", "source", "created_at", "finished_at", "status", "counts", "total",
            "done", "spend", "throughput_per_min", "eta_s"]),
        "BatchList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Batch")}},
                         ["object", "data"]),
        "BatchPrice": obj({
            "images": INT, "jobs": INT, "by_endpoint": {"type": "object", "additionalProperties": usd_row},
            "estimated_usd": NUM, "day": STR, "spent_today_usd": NUM, "budget_usd": NULLABLE_NUM,
            "remaining_usd": NULLABLE_NUM, "tenant": STR, "tenant_budget_usd": NULLABLE_NUM,
            "tenant_remaining_usd": NULLABLE_NUM, "exceeds_budget": BOOL,
            "price_source": {"enum": ["fal_pricing_api", "list_price_fallback"],
                             "description": "the account's prices from fal's pricing API, or the configured list "
                                            "prices when it was unreachable"},
            "chained_jobs": {**INT, "description": "jobs that edit another line's output (priced as all others)"},
            "max_spend_usd": NULLABLE_NUM, "over_max_spend": BOOL,
        }, ["images", "jobs", "by_endpoint", "estimated_usd", "day", "spent_today_usd", "budget_usd", "remaining_usd",
            "tenant", "tenant_budget_usd", "tenant_remaining_usd", "exceeds_budget"]),
        "BatchCreated": {"allOf": [ref("Batch"), obj({"price": ref("BatchPrice"), "jobs": INT},
                                                     ["price", "jobs", "tree"])]},
        "BatchQuote": obj({"dry_run": {"const": True}, "price": ref("BatchPrice"), "jobs": INT},
                          ["dry_run", "price", "jobs"]),
        "BatchCapIn": obj({"max_spend": {"type": ["number", "string", "null"],
                                         "description": "USD from 0 to 1000000000; null or none removes the cap"}},
                          ["max_spend"], additionalProperties=False),
        "BatchCancelled": {"allOf": [ref("Batch"), obj({"outcomes": {
            "type": "object", "additionalProperties": INT,
            "description": "jobs by what cancelling did to them (cancelled, requested, ...)"}}, ["outcomes", "tree"])]},
        "BatchRejected": obj({
            "detail": {"type": "array", "items": obj({
                "loc": {"type": "array", "items": {"type": ["string", "integer"]},
                        "description": "body, `line N`, then the field (dotted)"},
                "msg": STR, "type": STR}, ["loc", "msg", "type"])},
            "invalid": {"type": "array", "items": obj({"line": {"type": "integer", "minimum": 1},
                                                       "errors": {"type": "array", "items": line_error},
                                                       "raw": {"type": "string", "description": "the line as sent"}},
                                                      ["line", "errors", "raw"])},
        }, ["detail", "invalid"]),
        "BatchOverBudget": obj({"detail": {
            "type": "array", "items": obj({"loc": {"type": "array", "items": {"const": "budget"}}, "msg": STR,
                                           "type": STR}, ["loc", "msg", "type"])}, "price": ref("BatchPrice")},
            ["detail", "price"]),
        "BatchRow": obj({
            "line": {"type": "integer", "minimum": 1}, "id": {**NULLABLE_STR, "description": "the line's id"},
            "job_id": STR, "state": {"enum": [*STATES, "missing"]},
            "outputs": {"type": "array", "items": obj({
                "bucket": STR, "key": STR, "sha256": STR, "size": INT, "content_type": STR,
                "width": {"type": ["integer", "null"]}, "height": {"type": ["integer", "null"]},
                "presigned_url": NULLABLE_STR}, ["bucket", "key", "presigned_url"])},
            "error": {"oneOf": [{"type": "null"}, obj({"type": STR, "message": STR,
                                                        "categories": {"description": "fal's moderation verdict"}},
                                                       ["type", "message"])]},
            "moderated": BOOL, "cost": NUM, "cost_source": {"enum": ["estimate", "fal_billable_units"]},
            "tenant": STR, "metadata": {"type": "object"}, "parents": {"type": "array", "items": STR},
        }, ["line", "id", "job_id", "state", "outputs", "error", "metadata", "parents"]),
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": obj({"detail": {}, "error_type": STR}, ["detail"]),
    "NotFound": obj({"status": {"const": "NOT_FOUND"}, "detail": STR}, ["status", "detail"]),
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
    "StatusEvent": obj({"event": {"const": "message"}, "id": STR,
                        "data": {"type": "string", "contentMediaType": "application/json",
                                 "contentSchema": ref("QueueStatus")}}, ["data"],
                       description="one server-sent event of the status stream"),
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
    **_tenant_schemas(),
    **_batch_schemas(),
}
