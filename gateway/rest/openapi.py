"""The gateway's OpenAPI 3.1 document, served at ``GET /openapi.json``.

Written by hand, route by route, so it says exactly what the gateway answers: every status a
route can answer (401/403/503 of the auth layer on every authenticated operation), and each
answer's schema (:mod:`falq.gateway.rest.openapi_schemas`). Only the request bodies that already
exist as pydantic models (the four endpoints' inputs and the REST bodies) are generated from
those models, so a schema change cannot drift from the doc; the limits, budget and tenant
bodies are widened to what :mod:`falq.producers.admin` really takes (numbers as text too).
fal's routes are spelled out for the one app falq serves (``fal-ai/qwen-image-2``): OpenAPI
path templates cannot hold the slash-separated ``{owner}/{app}/{path}`` of fal's ids.

Every route of :func:`falq.gateway.app.routes` is here but the web console's (``/ui``: HTML
pages); ``tests/unit/test_openapi.py`` fails when one is missing, and
``tests/system/test_gateway_openapi_schemathesis.py`` holds every answer of a real gateway to it.
The JSONL bodies (the ``POST /v1/batches`` upload, the results and errors files) are
described as the array of their lines, as OpenAPI 3.2 reads sequential media types.

Example::

    doc = build_document()
    doc["paths"]["/v1/jobs"]["get"]["parameters"][0]["name"]     # 'state'
"""

from __future__ import annotations

from functools import cache
from typing import Any

from falq.gateway.rest.batches import MAX_LIMIT, MAX_NAME, MAX_UPLOAD
from falq.gateway.rest.jobs import BulkItem, JobIn
from falq.gateway.rest.limits import BudgetIn, LimitsIn, TenantIn
from falq.gateway.rest.openapi_schemas import SCHEMAS
from falq.producers.bulk.enqueue import DEFAULT_ENDPOINT
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.fal.schemas import EditInput, TextToImageInput
from falq.shared.jobs.records import STATES

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


def _not_found(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A 404 of a route with an id in its path. An id holding a line break (``%0A``, ``%0D``)
    matches no route pattern, so Starlette's router answers it with its own plain-text 404."""
    return {"description": f"{description} (an id holding a line break: the router's plain-text 404)",
            "content": {**_content(schema), "text/plain": {"schema": {"const": "Not Found"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    known = {
        400: _resp("Not possible in the job's current state", ref("Error")),
        401: _resp("Missing or wrong API key", ref("Error")),
        403: _resp("The API key lacks the route's scope (or is not the operator's)", ref("Error")),
        404: _not_found("Unknown job, or another tenant's (the same answer)", ref("NotFound")),
        405: _resp("Method not allowed", ref("Error")),
        409: _resp("Not applicable to the job's state", ref("JobRecord")),
        422: _resp("Invalid request: nothing was changed", ref("ValidationError")),
        503: _resp("Redis, the broker or S3 unavailable (Retry-After: 1)", ref("Error")),
    }
    return {str(c): known[c] for c in codes}


#: What every authenticated operation may answer besides its own codes: no or a wrong key
#: (AuthMiddleware), a key without the route's scope (``require``, checked first), and Redis
#: unreachable while the key is looked up.
_AUTH_ERRORS = (401, 403, 503)


def _param(name: str, where: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


_RID = _param("request_id", "path", {"type": "string", "minLength": 1, "maxLength": 200},
              "The request id from submit (= the falq job id)")
_JOB_ID = _param("job_id", "path", {"type": "string", "minLength": 1, "maxLength": 200}, "The falq job id")
_LOGS = _param("logs", "query", {"type": "string", "enum": ["0", "1", "true", "false"]},
               "Include the logs tail (fal's `logs=1`; Python's client sends true/false)")


#: The 404 of fal's request routes: ``{status: NOT_FOUND, detail}`` for an unknown id (or another
#: tenant's), ``{detail: "Not found"}`` for a path fal's protocol has no route for (an id made of
#: whitespace is read as no id at all).
_FAL_404 = {"404": _not_found("Unknown request id, or another tenant's (`status: NOT_FOUND`); a path the queue "
                              "protocol does not know (`detail` only)", ref("Error"))}


def _submit_op(endpoint: str) -> dict[str, Any]:
    model = ENDPOINTS[endpoint].input_model.__name__
    return {"post": {
        "tags": ["fal queue"], "operationId": "submit_" + endpoint.replace("/", "_").replace("-", "_"),
        "summary": f"Submit a {endpoint} job (fal's queue submit)",
        "parameters": [
            _param("fal_webhook", "query", {"type": "string", "format": "uri"},
                   "Called back (fal's webhook shape) when the job ends, signed the way fal signs "
                   "(X-Fal-Webhook-*, Ed25519; keys at /.well-known/jwks.json)"),
            _param("X-Fal-Queue-Priority", "header", {"type": "string", "enum": ["normal", "low", ""]},
                   "`low` runs the job in falq's bulk lane and is sent to fal; `normal` (or empty) the "
                   "interactive lane"),
            _param("X-Fal-Request-Start-Timeout", "header", {"type": "string"},
                   "Seconds (> 1) fal may take to start the request, else it drops it unbilled; sent to fal"),
            _param("X-Fal-Request-Timeout", "header", {"type": "string"},
                   "fal's older name of X-Fal-Request-Start-Timeout (the newer wins)"),
            _param("X-Fal-Store-IO", "header", {"type": "string", "enum": ["0", "1", "true", "false"]},
                   "`0`: fal keeps no copy of the payloads in its history; sent to fal"),
            _param("X-Fal-Object-Lifecycle-Preference", "header", {"type": "string"},
                   "A JSON object (expiration_duration_seconds >= 60, initial_acl ...) sent to fal"),
            _param("x-fal-no-retry", "header", {"type": "string", "enum": ["1", "true", "yes", "0", "false", "no"]},
                   "`1`: fal does not retry failed runners itself; sent to fal"),
            _param("X-Fal-Runner-Hint", "header", {"type": "string", "minLength": 1, "maxLength": 256},
                   "fal's routing hint; sent to fal"),
            _param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 200,
                                                 "pattern": r"^\S+$"}, "Same key again: the same job"),
            _param("X-Falq-Metadata", "header", {"type": "string"}, "A JSON object stored as the job's metadata"),
        ],
        "requestBody": {"required": True, "content": _content(ref(model))},
        "responses": {"200": _resp("Enqueued", ref("SubmitResponse")), **_errors(*_AUTH_ERRORS, 422)},
    }}


def _fal_paths() -> dict[str, Any]:
    base = f"/{APP}/requests/{{request_id}}"
    paths: dict[str, Any] = {f"/{ep}": _submit_op(ep) for ep in ENDPOINTS}
    paths[f"{base}/status"] = {"get": {
        "tags": ["fal queue"], "operationId": "status", "summary": "Status (202 until COMPLETED, then 200)",
        "parameters": [_RID, _LOGS],
        "responses": {"200": _resp("COMPLETED", ref("QueueStatus")), "202": _resp("Pending", ref("QueueStatus")),
                      **_errors(*_AUTH_ERRORS), **_FAL_404}}}
    paths[f"{base}/status/stream"] = {"get": {
        "tags": ["fal queue"], "operationId": "status_stream",
        "summary": "Server-sent status events: one `data:` frame per change, closed after COMPLETED",
        "parameters": [_RID, _LOGS],
        "responses": {"200": {"description": "SSE stream: `data:` events holding a QueueStatus as JSON, `: ping` "
                                             "comments every 15 s while nothing changes",
                              "content": {"text/event-stream": {"schema": ref("StatusEvent")}}},
                      **_errors(*_AUTH_ERRORS), **_FAL_404}}}
    paths[base] = {"get": {
        "tags": ["fal queue"], "operationId": "result",
        "summary": "Result: images as presigned URLs of falq's S3 copies (also of a job cancelled after fal "
                   "finished it: billed, kept); a failed job answers fal's error (422 validation, 499 cancelled, "
                   "500/503/504)",
        "parameters": [_RID],
        "responses": {"200": _resp("Completed", ref("Result")), **_errors(400, *_AUTH_ERRORS), **_FAL_404,
                      "422": _resp("The job failed validation at fal", ref("ValidationError")),
                      "499": _resp("The job was cancelled", ref("FalError"))}}}
    paths[f"{base}/cancel"] = {"put": {
        "tags": ["fal queue"], "operationId": "cancel", "summary": "Cancel",
        "parameters": [_RID],
        "responses": {"202": _resp("Cancellation requested", ref("CancelStatus")),
                      "400": _resp("Already completed", ref("CancelStatus")), **_errors(*_AUTH_ERRORS), **_FAL_404}}}
    return paths


def _op(op_id: str, summary: str, responses: dict[str, Any], *, tag: str = "falq", params: Any = None,
        body: dict[str, Any] | None = None, public: bool = False, content: dict[str, Any] | None = None,
        description: str | None = None) -> dict[str, Any]:
    """One operation; an authenticated one also answers 401, 403 and 503 (``_AUTH_ERRORS``).

    ``body`` is a JSON request body's schema; ``content`` a whole request-body object for any
    other media type (the JSONL upload of ``POST /v1/batches``).
    """
    all_responses = responses if public else {**_errors(*_AUTH_ERRORS), **responses}
    op: dict[str, Any] = {"tags": [tag], "operationId": op_id, "summary": summary, "responses": all_responses}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": _content(body)}
    if content is not None:
        op["requestBody"] = content
    if public:
        op["security"] = []
    return op


def _rest_paths() -> dict[str, Any]:
    list_params = [
        _param("state", "query", {"type": "string", "enum": [*STATES, ""]}, "Only jobs in this state (empty: any)"),
        _param("since", "query", {"type": "string"}, "Epoch seconds, ISO time or a duration ago (30s, 2h, 1d)"),
        _param("until", "query", {"type": "string"}, "Exclusive upper bound; `next_until` pages on"),
        # Not an enum: the route takes any value, and one that is no endpoint matches no job.
        _param("endpoint", "query", {"type": "string"}, f"Only this endpoint ({', '.join(ENDPOINTS)})"),
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
        "/v1/jobs/{job_id}": {"get": _op("get_job", "One job's record (and result once completed, or "
                                                    "cancelled after fal finished it)",
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
        **_batch_paths(),
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
        "/.well-known/jwks.json": {"get": _op(
            "jwks", "The public keys of falq's outgoing fal_webhook signatures (a JWKS in fal's shape; no API key)",
            {"200": _resp("JWKS", {"type": "object", "required": ["keys"],
                                   "properties": {"keys": {"type": "array", "items": {"type": "object"}}}}),
             "503": _resp("Redis unreachable", ref("Error"))},
            tag="fal webhooks", public=True)},
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
    pattern = TenantIn.model_json_schema()["properties"]["name"]["pattern"]
    name = _param("name", "path", {"type": "string", "pattern": pattern},
                  "The tenant's name (another spelling: 422 on name)", required=True)
    key_id = _param("key_id", "path", {"type": "string", "minLength": 1}, "The key's id (falq tenants key list)",
                    required=True)
    no_tenant = {"404": _not_found("Unknown tenant (for a non-operator also another tenant's: the same answer)",
                                   ref("Error"))}
    key_body = {"type": "object", "additionalProperties": False, "required": ["scopes"], "properties": {
        "scopes": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": ["submit", "read", "admin"]}},
        "label": {"type": "string", "maxLength": 100, "description": "printable characters"}}}
    return {
        "/v1/tenants": {
            "get": _op("list_tenants", "Tenants (the operator: all; other keys: their own)",
                       {"200": _resp("Tenants", ref("TenantList"))}),
            "post": _op("create_tenant", "Create a tenant (operator)",
                        {"201": _resp("The tenant", ref("Tenant")), **_errors(422)}, body=ref("TenantIn")),
        },
        "/v1/tenants/{name}": {
            "get": _op("get_tenant", "One tenant (another tenant's name: 404, as an unknown one)",
                       {"200": _resp("The tenant", ref("Tenant")), **no_tenant, **_errors(422)}, params=[name]),
            "patch": _op("patch_tenant", "Change some of a tenant's settings (operator)",
                         {"200": _resp("The tenant", ref("Tenant")), **no_tenant, **_errors(422)}, params=[name],
                         body=ref("TenantPatch")),
            "delete": _op("delete_tenant", "Remove a tenant and its keys (operator; refused while it has "
                          "unfinished jobs, and for default)",
                          {"200": _resp("Removed", ref("TenantRemoved")), **no_tenant, **_errors(422)}, params=[name]),
        },
        "/v1/tenants/{name}/keys": {
            "get": _op("list_keys", "The tenant's API keys: id, label, scopes, created, last 4 characters (operator)",
                       {"200": _resp("Keys", ref("ApiKeyList")), **no_tenant, **_errors(422)}, params=[name]),
            "post": _op("create_key", "A new API key of the tenant, answered once (operator)",
                        {"201": _resp("The key (shown only here; Cache-Control: no-store)", ref("ApiKeyCreated")),
                         **no_tenant, **_errors(422)}, params=[name], body=key_body),
        },
        "/v1/tenants/{name}/keys/{key_id}": {
            "delete": _op("revoke_key", "Revoke a key at once (operator; an unknown key id: 422 on key_id)",
                          {"200": _resp("Revoked", ref("ApiKeyRevoked")), **no_tenant, **_errors(422)},
                          params=[name, key_id]),
        },
    }


#: What ``POST /v1/batches`` says about its body (the route and :func:`falq.producers.bulk.enqueue.upload_lines`).
_UPLOAD_RULES = (
    "A JSONL file: one JSON object per line, as `falq bulk` takes (UTF-8, an optional BOM, blank lines skipped, "
    "`\\r\\n` or `\\n`), at most {max_bytes} bytes. The Content-Type is not checked (curl's `--data-binary` sends "
    "`application/x-www-form-urlencoded`); `application/jsonl` is the one to send. Every line is validated "
    "before anything is enqueued: a body that is empty, whitespace only or over the size limit is a 422 on "
    "`body`; bad lines are a 422 naming each by line and field (`loc: [body, \"line 3\", input.prompt]`, and "
    "`invalid[]` with the raw line), and nothing is enqueued. A line's `id` (1-200 characters, unique in the "
    "upload) lets edits of later lines reference its outputs (`falq:LINE_ID#N` in `input.image_urls`); "
    "`falq:JOB_ID#N` names an existing job of the tenant. The schema below reads the stream as an array of its "
    "lines. Sending the same bytes again answers 200 with the same batch and jobs."
)


def _batch_paths() -> dict[str, Any]:
    """``/v1/batches`` (:mod:`falq.gateway.rest.batches`): a JSONL upload, its batch, its output files."""
    bid = _param("batch_id", "path", {"type": "string", "minLength": 1, "maxLength": 200},
                 "The batch id (`b` and 24 hex digits)")
    no_batch = {"404": _not_found("Unknown batch, or another tenant's (the same answer)", ref("NotFound"))}
    jsonl_rows = {"description": "JSONL, one row per job in line order (the schema reads the file as an array of "
                                 "its rows; an empty file when there is none)",
                  "content": {"application/jsonl": {"schema": {"type": "array", "items": ref("BatchRow")}}}}
    flag = {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$", "default": "false"}
    upload = {"required": True, "description": "The JSONL file (its rules: the operation's description)", "content": {
        "application/jsonl": {
            "schema": {"type": "array", "minItems": 1, "items": ref("BatchLine")},
            "example": [{"id": "fox", "input": {"prompt": "a red fox in the snow", "num_images": 1}},
                        {"endpoint": "fal-ai/qwen-image-2/edit", "lane": "bulk", "metadata": {"set": "spring"},
                         "input": {"prompt": "the same fox, at night", "image_urls": ["falq:fox#0"]}}],
        }}}
    create_422 = _resp("Invalid upload or query, bad lines (`invalid`), or an estimate over what is left of the "
                       "budget (`price`, `loc: [budget]`): nothing was enqueued",
                       {"anyOf": [ref("BatchRejected"), ref("BatchOverBudget"), ref("ValidationError")]})
    return {
        "/v1/batches": {
            "get": _op("list_batches", "The caller's tenant's batches, newest first",
                       {"200": _resp("Batches (without `tree`)", ref("BatchList")), **_errors(422)},
                       params=[_param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                                         "default": 50}, "How many (50)")]),
            "post": _op("create_batch", "Upload a JSONL file of jobs as one batch (OpenAI-Batch style)",
                        {"201": _resp("The batch, its price and how many jobs it holds", ref("BatchCreated")),
                         "200": _resp("The same upload was sent before: the same batch and jobs; or, with "
                                      "`dry_run=true`, the quote (nothing enqueued)",
                                      {"anyOf": [ref("BatchCreated"), ref("BatchQuote")]}),
                         "422": create_422},
                        description=_UPLOAD_RULES.format(max_bytes=MAX_UPLOAD), content=upload, params=[
                            _param("name", "query", {"type": "string", "maxLength": MAX_NAME},
                                   "The batch's name (empty or absent: `upload`)"),
                            _param("allow_over_budget", "query", flag,
                                   "`true` (or `1`, any case) starts the batch even when its estimate exceeds what is "
                                   "left of the daily or the tenant's budget"),
                            _param("dry_run", "query", flag,
                                   "`true`: validate and quote the upload at the account's prices (`num_images` and "
                                   "chained edits counted); nothing is enqueued"),
                            _param("max_spend", "query", {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,6})?$"},
                                   "The batch's spend cap in USD (0 to 1000000000): jobs are submitted only while its "
                                   "billed plus reserved spend stays within it; the rest wait as "
                                   "`paused: batch_spend_cap` until the cap is raised (PATCH)"),
                            _param("priority", "query", {"type": "string", "enum": ["normal", "low"]},
                                   "X-Fal-Queue-Priority of the batch's jobs (default: the tenant's, else normal). "
                                   "`low` waits behind every customer's normal requests on fal's shared "
                                   "per-endpoint queue; no discount is documented")]),
        },
        "/v1/batches/{batch_id}": {"get": _op(
            "get_batch", "Counts by state, spend, throughput, ETA and the tree of a chained batch",
            {"200": _resp("The batch", ref("Batch")), **no_batch}, params=[bid]),
            "patch": _op("set_batch_cap", "Set or raise the batch's spend cap (`max_spend`); jobs waiting at it "
                         "go on within one poll once they fit",
                         {"200": _resp("The batch", ref("Batch")), **no_batch, **_errors(422)}, params=[bid],
                         body=ref("BatchCapIn"))},
        "/v1/batches/{batch_id}/cancel": {"post": _op(
            "cancel_batch", "Cancel every job of the batch that has not ended",
            {"200": _resp("The batch, and the jobs by outcome", ref("BatchCancelled")), **no_batch}, params=[bid])},
        "/v1/batches/{batch_id}/retry": {"post": _op(
            "retry_batch", "Run the batch's failed jobs again (`only=moderated`: those fal's checker refused)",
            {"200": _resp("The jobs queued again", ref("RetryFailed")), **no_batch, **_errors(422)}, params=[
                bid, _param("only", "query", {"type": "string", "enum": ["failed", "moderated"], "default": "failed"},
                            "Which failed jobs")])},
        "/v1/batches/{batch_id}/results": {"get": _op(
            "batch_results", "The output file: a row per completed job (presigned URLs of the images)",
            {"200": jsonl_rows, **no_batch}, params=[bid])},
        "/v1/batches/{batch_id}/errors": {"get": _op(
            "batch_errors", "The error file: a row per job that did not complete (failed, cancelled, still running, "
            "record gone)", {"200": jsonl_rows, **no_batch}, params=[bid])},
    }


def _model_schemas() -> dict[str, Any]:
    """Request-body schemas generated from the pydantic models, ``$defs`` hoisted into components."""
    out: dict[str, Any] = {}
    for model in (TextToImageInput, EditInput, JobIn, BulkItem, LimitsIn, BudgetIn, TenantIn):
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    _as_admin_reads(out)
    # PATCH /v1/tenants/{name}: TenantIn's fields but the name, every one optional
    out["TenantPatch"] = {**{k: v for k, v in out["TenantIn"].items() if k != "required"}, "title": "TenantPatch",
                          "properties": {k: v for k, v in out["TenantIn"]["properties"].items() if k != "name"}}
    out["BatchLine"] = _batch_line()
    return out


#: A number as its decimal text, which :mod:`falq.producers.admin` takes too (the CLI's spelling).
_NUMBER_TEXT = {"type": "string", "pattern": r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$",
                "description": "a number's decimal text"}
_NULL_TEXT = {"type": "string", "pattern": "^\\s*([Nn][Oo][Nn][Ee]|[Nn][Uu][Ll][Ll])\\s*$",
              "description": "`none` or `null`: no cap"}


def _as_admin_reads(out: dict[str, Any]) -> None:
    """Widen the limits, budget and tenant bodies to what their one set of rules
    (:mod:`falq.producers.admin`, shared with the CLI) accepts: a number or its decimal text,
    for a tenant's caps also ``none``/``null`` text, ``null`` for a flag (false), a tenant's
    endpoints (every one) and its S3 prefix (the tenant's name)."""
    def widen(model: str, field: str, *extra: dict[str, Any]) -> None:
        prop = out[model]["properties"][field]
        keep = {k: prop.pop(k) for k in ("default", "title", "description") if k in prop}
        out[model]["properties"][field] = {"anyOf": [prop, *extra], **keep}

    for field in ("rate", "burst", "max_outstanding"):
        widen("LimitsIn", field, _NUMBER_TEXT)
    for field in ("resume", "reset"):
        widen("LimitsIn", field, {"type": "null"})
    widen("BudgetIn", "budget_usd", _NUMBER_TEXT)
    widen("TenantIn", "weight", _NUMBER_TEXT)
    for field in ("max_outstanding", "rate", "budget_usd"):
        widen("TenantIn", field, _NUMBER_TEXT, _NULL_TEXT)
    widen("TenantIn", "endpoints", {"type": "null"})
    widen("TenantIn", "s3_prefix", {"type": "null"})


def _batch_line() -> dict[str, Any]:
    """One line of a ``POST /v1/batches`` upload (the fields :mod:`falq.producers.bulk.enqueue` knows)."""
    return {
        "type": "object", "title": "BatchLine", "additionalProperties": False, "required": ["input"],
        "properties": {
            "endpoint": {"enum": list(ENDPOINTS), "default": DEFAULT_ENDPOINT},
            "input": {"anyOf": [ref("TextToImageInput"), ref("EditInput")],
                      "description": "the endpoint's input; an edit's `image_urls` may hold `falq:LINE_ID#N` "
                                     "(output N of the line with that id) or `falq:JOB_ID#N`"},
            "id": {"type": "string", "minLength": 1, "maxLength": 200, "description": "unique in the upload"},
            "metadata": {"type": ["object", "null"]},
            "lane": {"enum": ["interactive", "bulk"], "default": "bulk"},
            "callback_url": {"type": ["string", "null"], "description": "an http(s) URL called when the job ends"},
        },
    }


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
