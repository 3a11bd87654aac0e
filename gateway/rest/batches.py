"""``/v1/batches``: batches over HTTP, OpenAI-Batch style (a JSONL upload, counts, an output
file and an error file). Thin layer over :mod:`falq.producers.bulk.batches`, as ``falq batch`` is.

* ``POST /v1/batches?name=&allow_over_budget=`` -- the body is a JSONL file (at most
  ``MAX_UPLOAD`` bytes, refused on its Content-Length before it is read; its Content-Type is not
  checked, as curl's ``--data-binary`` sends a form type), one line per job exactly as
  ``falq bulk`` takes (``{endpoint?, input, id?, metadata?, lane?, callback_url?}``;
  an edit's ``image_urls`` may hold ``falq:LINE_ID#N`` or ``falq:JOB_ID#N``). Every line is
  validated first: one bad line -> 422 naming each by line and field, nothing enqueued. An
  estimate over what is left of the budget -> 422 on ``budget`` unless ``allow_over_budget=true``.
  Else 201 with the batch (200 when the same upload was sent before: the same batch and jobs).
  ``?dry_run=true``: validate and quote the upload at the account's prices (``num_images`` and
  chained edits counted), enqueue nothing (200 ``{dry_run, price, jobs}``). ``?max_spend=USD``:
  the batch's spend cap (:mod:`falq.shared.spend.batch_cap`); ``?priority=normal|low``: the
  ``X-Fal-Queue-Priority`` of its jobs.
* ``PATCH /v1/batches/{id}`` ``{"max_spend": 40}`` -- set or raise the spend cap (null: none)
* ``GET /v1/batches?limit=`` -- the caller's tenant's batches, newest first
* ``GET /v1/batches/{id}`` -- counts by state, spend, throughput, ETA, the tree of a chained batch
* ``POST /v1/batches/{id}/cancel`` and ``POST /v1/batches/{id}/retry?only=failed|moderated``
* ``GET /v1/batches/{id}/results`` and ``GET /v1/batches/{id}/errors`` -- JSONL

Another tenant's batch answers 404 exactly as an unknown id.

Example::

    curl -H "Authorization: Key $K" --data-binary @pipeline.jsonl "http://gw/v1/batches?name=spring"
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from falq.gateway.auth import Principal, require
from falq.gateway.core import Gateway, Unprocessable, blocking, json_response, read_json
from falq.producers.bulk.batches import PRIORITIES, PRIORITY_RULE, Batches, enqueue_batch, open_batch, price
from falq.producers.bulk.enqueue import upload_lines
from falq.producers.client import Falq
from falq.shared.errors import InvalidInput
from falq.shared.spend.batch_cap import CAP_RULE, parse_cap

#: Largest upload accepted (bytes).
MAX_UPLOAD = 64 * 1024 * 1024
#: Most batches one ``GET /v1/batches`` lists.
MAX_LIMIT = 1000
#: Longest batch name (characters).
MAX_NAME = 200
_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _falq(gw: Gateway, who: Principal) -> Falq:
    """A producer client of the caller's tenant over the gateway's connections."""
    return Falq(gw.settings, redis_client=gw.falq.redis, celery_app=gw.falq.app, tenant=who.tenant)


def _service(gw: Gateway, who: Principal) -> Batches:
    return Batches(_falq(gw, who), tenant=who.tenant)


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise Unprocessable.field(["query", name], "must be true or false")
    return raw in ("true", "1")


async def create_batch(request: Request) -> Response:
    who = require(request, "submit")
    gw = _gw(request)
    # The query first: a bad flag or name is answered without reading (or storing) the upload.
    name = request.query_params.get("name") or "upload"
    if len(name) > MAX_NAME:
        raise Unprocessable.field(["query", "name"], f"must be at most {MAX_NAME} characters")
    over_ok = _flag(request, "allow_over_budget")
    dry_run = _flag(request, "dry_run")
    raw_cap = request.query_params.get("max_spend")
    try:
        cap = parse_cap(raw_cap) if raw_cap is not None else None
    except InvalidInput:
        raise Unprocessable.field(["query", "max_spend"], CAP_RULE) from None
    priority = request.query_params.get("priority")
    if priority is not None and priority not in PRIORITIES:
        raise Unprocessable.field(["query", "priority"], PRIORITY_RULE)
    data = await _read_upload(request)
    if not data.strip():
        raise Unprocessable.field(["body"], "must be a JSONL file of at least one job")
    return await blocking(_create, gw, who, data, name, over_ok, dry_run, cap, priority)


async def _read_upload(request: Request) -> bytes:
    """The body, refused (422 on ``body``) as soon as it is known to exceed ``MAX_UPLOAD``: from
    its Content-Length before reading, else while reading, so an oversized upload is never held
    whole in memory."""
    too_big = Unprocessable.field(["body"], f"must be at most {MAX_UPLOAD} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_UPLOAD:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _create(gw: Gateway, who: Principal, data: bytes, name: str, over_ok: bool, dry_run: bool = False,
            cap: float | None = None, priority: str | None = None) -> Response:
    import hashlib

    falq = _falq(gw, who)
    try:
        lines, rejects, run_key = upload_lines(falq, data, name=name)
    except InvalidInput:
        raise  # the upload as a whole (no job in it): the app's handler answers 422
    except (RecursionError, ValueError):
        # json.loads raises these, not JSONDecodeError, for a line nested too deeply or holding an
        # integer of more than 4300 digits; the parser lets them through (a 500). Name the line.
        bad = _unparsable_line(data)
        if bad is None:
            raise
        return _unparsable(*bad)
    if rejects:
        detail = [{"loc": ["body", f"line {r.line}", *([e.field] if e.field else [])], "msg": e.message,
                   "type": "value_error"} for r in rejects for e in r.errors]
        return json_response(422, {"detail": detail, "invalid": [r.to_json() for r in rejects]})
    cost = price(falq, lines, max_spend=cap)
    if dry_run:
        return json_response(200, {"dry_run": True, "price": cost.as_json(), "jobs": len(lines)})
    if cost.exceeds and not over_ok:
        return json_response(422, {"detail": [{"loc": ["budget"], "type": "value_error",
                                               "msg": f"the estimated ${cost.total_usd:.2f} exceeds what is left of "
                                                      "the budget (send allow_over_budget=true to start anyway)"}],
                                   "price": cost.as_json()})
    batch, created = open_batch(falq, name=name, source_name=name, source_sha256=hashlib.sha256(data).hexdigest(),
                                run_key=run_key, max_spend=cap)
    ids = enqueue_batch(falq, lines, batch, priority=priority)
    doc = Batches(falq, tenant=who.tenant).show(batch.id).as_json()
    doc.update(price=cost.as_json(), jobs=len(ids))
    return json_response(201 if created else 200, doc)


def _unparsable_line(data: bytes) -> tuple[int, str, str] | None:
    """``(line number, message, raw line)`` of the first line ``json.loads`` fails on with
    something other than a ``JSONDecodeError`` (run only after such a failure)."""
    for n, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        text = raw.decode("utf-8", "replace").rstrip("\r")
        try:
            json.loads(text)
        except RecursionError:
            return n, "is not valid JSON (nested too deeply)", text
        except json.JSONDecodeError:
            continue
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            return n, f"is not valid JSON ({str(exc).split(';')[0][:120]})", text
    return None


def _unparsable(line: int, msg: str, raw: str) -> Response:
    """The 422 of a line the parser cannot read, in the shape of every bad-line answer."""
    shown = raw if len(raw) <= 1000 else raw[:1000] + "..."
    return json_response(422, {"detail": [{"loc": ["body", f"line {line}"], "msg": msg, "type": "value_error"}],
                               "invalid": [{"line": line, "errors": [{"field": "", "message": msg}], "raw": shown}]})


async def list_batches(request: Request) -> Response:
    who = require(request, "read")
    raw = request.query_params.get("limit", "50")
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise Unprocessable.field(["query", "limit"], f"must be an integer from 1 to {MAX_LIMIT}")
    found = await blocking(_service(_gw(request), who).recent, int(raw))
    return json_response(200, {"object": "list", "data": [b.as_json() for b in found]})


async def get_batch(request: Request) -> Response:
    who = require(request, "read")
    view = await blocking(_service(_gw(request), who).show, request.path_params["batch_id"])
    return json_response(200, view.as_json())


async def set_batch_cap(request: Request) -> Response:
    who = require(request, "submit")
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"max_spend"}:
        raise Unprocessable.field(["body"], 'must be {"max_spend": USD} (null or "none" removes the cap)')
    try:
        parse_cap(body["max_spend"])
    except InvalidInput:
        raise Unprocessable.field(["body", "max_spend"], CAP_RULE) from None
    view = await blocking(_service(_gw(request), who).set_cap, request.path_params["batch_id"], body["max_spend"])
    return json_response(200, view.as_json())


async def cancel_batch(request: Request) -> Response:
    who = require(request, "submit")
    svc = _service(_gw(request), who)
    bid = request.path_params["batch_id"]
    out = await blocking(svc.cancel, bid)
    doc = (await blocking(svc.show, bid)).as_json()
    doc["outcomes"] = out
    return json_response(200, doc)


async def retry_batch(request: Request) -> Response:
    who = require(request, "submit")
    only = request.query_params.get("only", "failed")
    if only not in ("failed", "moderated"):
        raise Unprocessable.field(["query", "only"], "must be failed or moderated")
    svc = _service(_gw(request), who)
    done = await blocking(svc.retry, request.path_params["batch_id"], which=only)
    return json_response(200, {"retried": done, "count": len(done)})


async def batch_results(request: Request) -> Response:
    return await _rows(request, 0)


async def batch_errors(request: Request) -> Response:
    return await _rows(request, 1)


async def _rows(request: Request, which: int) -> Response:
    who = require(request, "read")
    rows: Any = (await blocking(_service(_gw(request), who).rows, request.path_params["batch_id"]))[which]
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return Response(body, status_code=200, media_type="application/jsonl")


__all__ = ["batch_errors", "batch_results", "cancel_batch", "create_batch", "get_batch", "list_batches",
           "retry_batch", "set_batch_cap"]
