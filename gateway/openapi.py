"""The gateway's OpenAPI 3.1 document, served at ``GET /openapi.json``.

Written by hand, route by route, so it says exactly what the gateway answers; only the
request bodies that already exist as pydantic models (the four endpoints' inputs and the
REST bodies) are generated from those models, so a schema change cannot drift from the doc.
fal's routes are spelled out for the one app falq serves (``fal-ai/qwen-image-2``): OpenAPI
path templates cannot hold the slash-separated ``{owner}/{app}/{path}`` of fal's ids.

Example::

    doc = build_document()
    doc["paths"]["/v1/jobs"]["get"]["parameters"][0]["name"]     # 'state'
"""

from __future__ import annotations

from functools import cache
from typing import Any

from falq.gateway.limits_routes import BudgetIn, LimitsIn, TenantIn
from falq.gateway.openapi_schemas import SCHEMAS
from falq.gateway.rest_routes import BulkItem, JobIn
from falq.shared.endpoints import ENDPOINTS
from falq.shared.records import STATES
from falq.shared.schemas import EditInput, TextToImageInput

APP = "fal-ai/qwen-image-2"
REF = "#/components/schemas/{model}"
_JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = _content(schema)
    return out


def _errors(*codes: int) -> dict[str, Any]:
    known = {
        400: _resp("Not possible in the job's current state", ref("Error")),
        401: _resp("Missing or wrong API key", ref("Error")),
        404: _resp("Unknown job", ref("NotFound")),
        405: _resp("Method not allowed", ref("Error")),
        409: _resp("Not applicable to the job's state", ref("JobRecord")),
        422: _resp("Invalid request: nothing was changed", ref("ValidationError")),
        503: _resp("Redis or S3 unavailable", ref("Error")),
    }
    return {str(c): known[c] for c in codes}


def _param(name: str, where: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


_RID = _param("request_id", "path", {"type": "string", "minLength": 1, "maxLength": 200},
              "The request id from submit (= the falq job id)")
_JOB_ID = _param("job_id", "path", {"type": "string", "minLength": 1, "maxLength": 200}, "The falq job id")
_LOGS = _param("logs", "query", {"type": "string", "enum": ["0", "1", "true", "false"]},
               "Include the logs tail (fal's `logs=1`; Python's client sends true/false)")


def _submit_op(endpoint: str) -> dict[str, Any]:
    model = ENDPOINTS[endpoint].input_model.__name__
    return {"post": {
        "tags": ["fal queue"], "operationId": "submit_" + endpoint.replace("/", "_").replace("-", "_"),
        "summary": f"Submit a {endpoint} job (fal's queue submit)",
        "parameters": [
            _param("fal_webhook", "query", {"type": "string", "format": "uri"},
                   "Called back (fal's webhook shape, X-Falq-Signature) when the job ends"),
            _param("X-Fal-Queue-Priority", "header", {"type": "string", "enum": ["normal", "low"]},
                   "`low` runs the job in falq's bulk lane, `normal` in the interactive lane"),
            _param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 200,
                                                 "pattern": r"^\S+$"}, "Same key again: the same job"),
            _param("X-Falq-Metadata", "header", {"type": "string"}, "A JSON object stored as the job's metadata"),
        ],
        "requestBody": {"required": True, "content": _content(ref(model))},
        "responses": {"200": _resp("Enqueued", ref("SubmitResponse")), **_errors(401, 422, 503)},
    }}


def _fal_paths() -> dict[str, Any]:
    base = f"/{APP}/requests/{{request_id}}"
    paths: dict[str, Any] = {f"/{ep}": _submit_op(ep) for ep in ENDPOINTS}
    paths[f"{base}/status"] = {"get": {
        "tags": ["fal queue"], "operationId": "status", "summary": "Status (202 until COMPLETED, then 200)",
        "parameters": [_RID, _LOGS],
        "responses": {"200": _resp("COMPLETED", ref("QueueStatus")), "202": _resp("Pending", ref("QueueStatus")),
                      **_errors(401, 404)}}}
    paths[f"{base}/status/stream"] = {"get": {
        "tags": ["fal queue"], "operationId": "status_stream",
        "summary": "Server-sent status events: one `data:` frame per change, closed after COMPLETED",
        "parameters": [_RID, _LOGS],
        "responses": {"200": {"description": "SSE stream of QueueStatus objects",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      **_errors(401, 404)}}}
    paths[base] = {"get": {
        "tags": ["fal queue"], "operationId": "result",
        "summary": "Result: images as presigned URLs of falq's S3 copies; a failed job answers fal's error "
                   "(422 validation, 499 cancelled, 500/503/504)",
        "parameters": [_RID],
        "responses": {"200": _resp("Completed", ref("Result")), **_errors(400, 401, 404),
                      "422": _resp("The job failed validation at fal", ref("ValidationError")),
                      "499": _resp("The job was cancelled", ref("FalError"))}}}
    paths[f"{base}/cancel"] = {"put": {
        "tags": ["fal queue"], "operationId": "cancel", "summary": "Cancel",
        "parameters": [_RID],
        "responses": {"202": _resp("Cancellation requested", ref("CancelStatus")),
                      "400": _resp("Already completed", ref("CancelStatus")), **_errors(401, 404)}}}
    return paths


def _op(op_id: str, summary: str, responses: dict[str, Any], *, tag: str = "falq", params: Any = None,
        body: dict[str, Any] | None = None, public: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"tags": [tag], "operationId": op_id, "summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": _content(body)}
    if public:
        op["security"] = []
    return op


def _rest_paths() -> dict[str, Any]:
    list_params = [
        _param("state", "query", {"type": "string", "enum": list(STATES)}, "Only jobs in this state"),
        _param("since", "query", {"type": "string"}, "Epoch seconds, ISO time or a duration ago (30s, 2h, 1d)"),
        _param("until", "query", {"type": "string"}, "Exclusive upper bound; `next_until` pages on"),
        _param("endpoint", "query", {"type": "string", "enum": list(ENDPOINTS)}, "Only this endpoint"),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size (100)"),
        _param("text", "query", {"type": "string", "maxLength": 500}, "Every word in the prompt (full-text search)"),
        _param("batch_id", "query", {"type": "string"}, "Only jobs of this batch"),
        {"name": "metadata", "in": "query", "style": "deepObject", "explode": True,
         "schema": {"type": "object", "additionalProperties": {"type": "string"}},
         "description": "`metadata.KEY=VALUE` filters (exact match)"},
    ]
    since = [_param("since", "query", {"type": "string"}, "Only jobs that failed after this time")]
    return {
        "/v1/jobs": {
            "get": _op("list_jobs", "List and search jobs (newest first)", {"200": _resp("A page", ref("JobList")),
                                                                            **_errors(401, 422)}, params=list_params),
            "post": _op("create_job", "Enqueue one job", {"201": _resp("Enqueued", ref("JobRecord")),
                                                          "200": _resp("Idempotency key matched", ref("JobRecord")),
                                                          **_errors(401, 422, 503)}, body=ref("JobIn")),
        },
        "/v1/jobs/{job_id}": {"get": _op("get_job", "One job's record (and result once completed)",
                                         {"200": _resp("The record", ref("JobRecord")), **_errors(401, 404)},
                                         params=[_JOB_ID])},
        "/v1/jobs/{job_id}/cancel": {"post": _op("cancel_job", "Ask for a job to be cancelled",
                                                 {"200": _resp("The record", ref("JobRecord")), **_errors(401, 404)},
                                                 params=[_JOB_ID])},
        "/v1/jobs/{job_id}/retry": {"post": _op("retry_job", "Run a failed job again (new attempt, same job)",
                                                {"200": _resp("Queued again", ref("JobRecord")),
                                                 **_errors(401, 404, 409)}, params=[_JOB_ID])},
        "/v1/bulk": {"post": _op("bulk", "Enqueue many jobs: all validated first; any bad item -> 422, none enqueued",
                                 {"200": _resp("Enqueued", ref("BulkResult")), **_errors(401, 422, 503)},
                                 body={"type": "array", "items": ref("BulkItem"), "minItems": 1, "maxItems": 10000})},
        "/v1/retry-failed": {"post": _op("retry_failed", "Retry every failed job (since a time)",
                                         {"200": _resp("Retried", ref("RetryFailed")), **_errors(401, 422)},
                                         params=since)},
        "/v1/limits": {
            "get": _op("get_limits", "Global limits and per-key state", {"200": _resp("Limits", ref("Limits")),
                                                                         **_errors(401)}),
            "put": _op("put_limits", "Change limits (every worker applies them at once)",
                       {"200": _resp("Limits", ref("Limits")), **_errors(401, 422)}, body=ref("LimitsIn")),
        },
        "/v1/budget": {
            "get": _op("get_budget", "Spend today (UTC) and the daily budget", {"200": _resp("Budget", ref("Budget")),
                                                                               **_errors(401)}),
            "put": _op("put_budget", "Set (or clear with null) the daily budget",
                       {"200": _resp("Budget", ref("Budget")), **_errors(401, 422)}, body=ref("BudgetIn")),
        },
        **_tenant_paths(),
        "/healthz": {"get": _op("healthz", "Liveness", {"200": _resp("Alive", ref("Health"))}, tag="probes",
                                public=True)},
        "/readyz": {"get": _op("readyz", "Readiness: Redis answers, the S3 bucket is reachable",
                               {"200": _resp("Ready", ref("Ready")), "503": _resp("Not ready", ref("Ready"))},
                               tag="probes", public=True)},
        "/openapi.json": {"get": _op("openapi", "This document", {"200": _resp("OpenAPI 3.1", {"type": "object"})},
                                     tag="probes", public=True)},
        "/_falq/fal-proxy": {m: _op(
            f"fal_proxy_{m}", "fal's client-proxy convention: the request named by x-fal-target-url "
            "(https://queue.fal.run/...) is served as if sent there",
            {"200": _resp("As the target route answers", {}), "202": _resp("As the target route answers", {}),
             "400": _resp("Target is not a queue.fal.run URL", ref("Error")), **_errors(401, 404, 422)},
            tag="fal queue",
            params=[_param("x-fal-target-url", "header", {"type": "string"}, "The fal URL", required=True)],
        ) for m in ("get", "post", "put")},
        "/_falq/fal-webhook": {"post": _op(
            "fal_webhook", "fal's webhook deliveries (Ed25519-signed; no API key)",
            {"200": _resp("Stored for the workers", ref("Ok")), "401": _resp("Refused", ref("Error")),
             "413": _resp("Too large", ref("Error")), "422": _resp("Not a JSON object", ref("Error")),
             "503": _resp("fal's JWKS or Redis unreachable", ref("Error"))},
            tag="fal webhooks", public=True, body={"type": "object"},
            params=[_param(h, "header", {"type": "string"}, "fal's signature header") for h in (
                "X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp",
                "X-Fal-Webhook-Signature")])},
    }


def _tenant_paths() -> dict[str, Any]:
    """``/v1/tenants``: tenants and their API keys (see the README's scope matrix for who may)."""
    name = _param("name", "path", {"type": "string"}, "The tenant's name", required=True)
    key_id = _param("key_id", "path", {"type": "string"}, "The key's id (falq tenants key list)", required=True)
    obj = {"type": "object"}
    forbidden = {"403": _resp("The key lacks the scope (or is not the operator's)", ref("Error"))}
    return {
        "/v1/tenants": {
            "get": _op("list_tenants", "Tenants (the operator: all; other keys: their own)",
                       {"200": _resp("Tenants", obj), **forbidden, **_errors(401)}),
            "post": _op("create_tenant", "Create a tenant (operator)",
                        {"201": _resp("The tenant", obj), **forbidden, **_errors(401, 422)}, body=ref("TenantIn")),
        },
        "/v1/tenants/{name}": {
            "get": _op("get_tenant", "One tenant (another tenant's name: 404, as an unknown one)",
                       {"200": _resp("The tenant", obj), **forbidden, **_errors(401, 404, 422)}, params=[name]),
            "patch": _op("patch_tenant", "Change some of a tenant's settings (operator)",
                         {"200": _resp("The tenant", obj), **forbidden, **_errors(401, 404, 422)}, params=[name],
                         body=obj),
            "delete": _op("delete_tenant", "Remove a tenant and its keys (operator; refused while it has "
                          "unfinished jobs, and for default)",
                          {"200": _resp("Removed", obj), **forbidden, **_errors(401, 404, 422)}, params=[name]),
        },
        "/v1/tenants/{name}/keys": {
            "get": _op("list_keys", "The tenant's API keys: id, label, scopes, created, last 4 characters (operator)",
                       {"200": _resp("Keys", obj), **forbidden, **_errors(401, 404)}, params=[name]),
            "post": _op("create_key", "A new API key of the tenant, answered once (operator)",
                        {"201": _resp("The key (shown only here)", obj), **forbidden, **_errors(401, 404, 422)},
                        params=[name], body={"type": "object", "properties": {
                            "scopes": {"type": "array", "items": {"enum": ["submit", "read", "admin"]}},
                            "label": {"type": "string"}}, "required": ["scopes"]}),
        },
        "/v1/tenants/{name}/keys/{key_id}": {
            "delete": _op("revoke_key", "Revoke a key at once (operator)",
                          {"200": _resp("Revoked", obj), **forbidden, **_errors(401, 404, 422)},
                          params=[name, key_id]),
        },
    }


def _model_schemas() -> dict[str, Any]:
    """Request-body schemas generated from the pydantic models, ``$defs`` hoisted into components."""
    out: dict[str, Any] = {}
    for model in (TextToImageInput, EditInput, JobIn, BulkItem, LimitsIn, BudgetIn, TenantIn):
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


@cache
def build_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document (built once per process)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "falq HTTP gateway",
            "version": "0.1.0",
            "description": "fal's queue protocol backed by falq (global limits, retries, crash safety, S3 copies), "
                           "plus falq's own REST routes. Authenticate with `Authorization: Key <falq api key>` "
                           "(or `Bearer`).",
        },
        "servers": [{"url": "/"}],
        "security": [{"falqKey": []}],
        "tags": [{"name": "fal queue", "description": "fal's queue protocol (point any fal client here)"},
                 {"name": "falq", "description": "falq's REST routes"},
                 {"name": "probes"}, {"name": "fal webhooks"}],
        "paths": {**_fal_paths(), **_rest_paths()},
        "components": {
            "securitySchemes": {"falqKey": {
                "type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Key <falq api key>` (as fal's clients send it) or `Bearer <falq api key>`",
            }},
            "schemas": {**SCHEMAS, **_model_schemas()},
        },
    }
