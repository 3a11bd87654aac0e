"""The one HTTP client falq uses to talk to fal's queue API.

It speaks the protocol described in fal's docs (submit, status, status stream, result,
cancel, storage upload) over ``httpx`` and turns every answer into either a typed value
or a typed error from :mod:`falq.shared.errors`. It never retries by itself: retry policy is
the caller's (the worker pipeline), so that every retry is visible in the job record.

After submit, it follows the ``status_url``/``response_url``/``cancel_url`` that fal
returned instead of rebuilding them (some apps reject rebuilt URLs).

How answers are classified (fal-client ``client.py`` at c6f0afa, fal's docs; see the
README's "fal, as the live service behaves"):

* ``403`` whose detail says ``User is locked`` (or a 402): :class:`FalAccountLocked`, the
  key pauses. Any other 401/403: :class:`FalAuthError`. The test is on fal's wording of the
  lock, never on a loose substring ("Prompt blocked" is not a lock).
* ``422`` with ``detail[].type == "content_policy_violation"``: :class:`FalContentPolicy`.
* ``502/503/504`` without ``x-fal-request-id`` and with nginx's page: :class:`FalIngressError`
  (exactly fal-client's ``_is_ingress_error``), retry the same call.
* ``504`` with ``X-Fal-Request-Timeout-Type``: :class:`FalStartTimeout` on every call (status,
  stream, result), never a transient error: fal dropped the request unbilled.
* On submit only what cannot have created a request is retryable (408, 409, 429, ingress,
  a connection never made); any other 5xx (a plain page from a proxy too) may have come
  after the POST went through, and it or an answer lost after the POST went out is
  :class:`FalSubmitUncertain`.
* A result error is the request's own outcome only when it carries ``x-fal-request-id`` and
  is not a bare 5xx: a 5xx naming no infrastructure ``error_type`` on the result of a request
  is :class:`FalResultError` (fetch the same result again, section 11.1).

Example::

    fal = FalClient(settings)
    sub = fal.submit("fal-ai/qwen-image-2/text-to-image", {"prompt": "a red fox"})
    with fal.open_stream(sub.status_url) as stream:
        while (st := stream.next(timeout=1.0)) is not StreamEnd and not (st and st.done):
            pass
    output = fal.result(sub.response_url).output
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

import httpx

from falq.shared import deadline
from falq.shared.egress import retry_after_s
from falq.shared.errors import (
    TRANSIENT_ERROR_TYPES,
    FalAccountLocked,
    FalAuthError,
    FalBadAnswer,
    FalContentPolicy,
    FalIngressError,
    FalqError,
    FalRejected,
    FalResultError,
    FalResultGone,
    FalStartTimeout,
    FalSubmitUncertain,
    FalTransientError,
    fal_failure,
)
from falq.shared.fal.sse import bounded_lines
from falq.shared.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)
#: Storage paths tried in turn, with the attempts each call gets on it: fal-js's CDN path first,
#: briefly (another path exists), then fal-client's ``gcs`` fallback with fal-client's budget
#: (``MAX_ATTEMPTS = 10``, delays 0.1 s doubling up to 30 s, jittered).
_UPLOAD_PATHS: tuple[tuple[str, int], ...] = (("fal-cdn-v3", 3), ("gcs", 10))
_RETRYABLE_CODES = {408, 409, 425, 429, 500, 502, 503, 504}
#: What fal-client retries on every call, submit included: nothing was created.
_NOTHING_CREATED_CODES = {408, 409, 429}
_INGRESS_CODES = {502, 503, 504}
#: fal's own wording of an exhausted balance: "User is locked. Reason: Exhausted balance...".
_LOCKED_RE = re.compile(r"\buser is locked\b", re.IGNORECASE)
#: Header fal sets on answers from its queue (absent on pages from the edge in front of it).
REQUEST_ID_HEADER = "x-fal-request-id"
#: Set (``user``) on fal's 504 for a request no runner started within its start timeout.
TIMEOUT_TYPE_HEADER = "x-fal-request-timeout-type"
#: Billed units fal reports on inference answers (price = units x the endpoint's unit price).
BILLABLE_UNITS_HEADER = "x-fal-billable-units"
_MAX_JSON_BYTES = 8 * 1024 * 1024
_MAX_BODY_BYTES = _MAX_JSON_BYTES * 8  # sync_mode results carry images as data URIs
#: httpx's timeouts are per read, so trickling headers or a trickling body never time out: a
#: whole answer (connect, headers and body) must arrive within this many times ``fal_http_timeout_s``.
_BODY_DEADLINE_FACTOR = 2.0


@dataclass(frozen=True)
class Submitted:
    """fal's answer to a submit: where to follow the request."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None


class LogEntry(NamedTuple):
    """One line of a request's logs; ``at`` is fal's timestamp as a unix time (0.0 if none)."""

    at: float
    message: str


@dataclass(frozen=True)
class Result:
    """fal's answer to a result GET: the output JSON, its raw bytes, and the billed units."""

    output: dict[str, Any]
    raw: bytes
    billable_units: float | None = None


@dataclass(frozen=True)
class Status:
    """One status of a request. ``status`` is IN_QUEUE, IN_PROGRESS or COMPLETED.

    ``logs`` are what this answer carried: a stream event's new entries, or the recent
    window a polled status returns. Deduplicate by (timestamp, message), never by count.
    """

    status: str
    queue_position: int | None = None
    logs: list[LogEntry] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None

    @property
    def done(self) -> bool:
        return self.status == "COMPLETED"


class FalClient:
    """Typed access to fal's queue API.

    Parameters:
        settings: falq settings (key, queue URL, timeouts).
        http: an ``httpx.Client`` to use; by default one is built. Pass one with a custom
            transport to test against something other than the network.
        max_connections: connection pool size (SSE streams each hold one connection).
    """

    #: Upload retry delays: the first, doubling up to the cap, each jittered by x0.5-1.5
    #: (fal-client's ``BASE_DELAY`` and ``MAX_DELAY``).
    upload_base_delay_s: float = 0.1
    upload_max_delay_s: float = 30.0

    def __init__(self, settings: Settings, http: httpx.Client | None = None, max_connections: int = 2000) -> None:
        self.settings = settings
        timeout = httpx.Timeout(settings.fal_http_timeout_s, connect=10.0, pool=60.0)
        self.http = http or httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=256),
            headers={"User-Agent": "falq/0.1"},
        )
        # Submits go over fresh connections: a pooled keep-alive connection the server (or a
        # load balancer) closed while idle fails as "disconnected without a response", which
        # on a submit is indistinguishable from an answer lost after fal created the request.
        # On a new connection that ambiguity only remains for real failures.
        self.submit_http = http or httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max(10, max_connections // 10), max_keepalive_connections=0),
            headers={"User-Agent": "falq/0.1"},
        )
        # httpx's timeouts are per read: let a total Budget bound each call (see _call).
        deadline.install(self.http)
        deadline.install(self.submit_http)
        key = settings.fal_key_value()
        self._auth = {"Authorization": f"Key {key}"} if key else {}

    def close(self) -> None:
        self.http.close()
        if self.submit_http is not self.http:
            self.submit_http.close()

    # --- calls -----------------------------------------------------------------------------------
    def submit(
        self,
        endpoint: str,
        payload: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        webhook_url: str | None = None,
    ) -> Submitted:
        """POST the input to ``{queue_url}/{endpoint}``; return where to follow it.

        Raises :class:`FalTransientError` only when fal cannot have created a request, and
        :class:`FalSubmitUncertain` when it may have (see the module docstring).
        """
        url = f"{self.settings.fal_queue_url}/{endpoint}"
        if webhook_url:
            url += "?" + urlencode({"fal_webhook": webhook_url})
        try:
            resp = self._call("POST", url, json=payload, headers=headers, check=False, http=self.submit_http)
        except FalTransientError as exc:
            if exc.reason == "connect":
                raise
            raise FalSubmitUncertain(
                f"the answer to the submit was lost after the request was sent ({exc}); fal may have "
                "created and billed a request, so falq does not send it again"
            ) from None
        if resp.status_code >= 300:
            self._raise_for_submit(resp)
        body = self._json(resp)
        if not isinstance(body, dict):
            raise FalBadAnswer("fal's submit answer is not a JSON object")
        try:
            return Submitted(
                request_id=_str(body, "request_id"),
                status_url=_str(body, "status_url"),
                response_url=_str(body, "response_url"),
                cancel_url=_str(body, "cancel_url"),
                queue_position=body.get("queue_position") if isinstance(body.get("queue_position"), int) else None,
            )
        except (KeyError, TypeError) as exc:
            raise FalBadAnswer(f"fal's submit answer lacks {exc}") from None

    def status(self, status_url: str, *, logs: bool = True) -> Status:
        resp = self._call("GET", status_url, params={"logs": "1" if logs else "0"})
        return self._status_of(resp.content)

    def open_stream(self, status_url: str, *, logs: bool = True, read_timeout: float | None = None) -> StatusStream:
        """Open fal's SSE status stream, read by a background thread (see :class:`StatusStream`).

        ``read_timeout`` (default ``FALQ_FAL_STREAM_READ_TIMEOUT_S``) must exceed fal's ~15 s
        heartbeat: a shorter one reconnects every few seconds for every request.
        """
        return StatusStream(self, status_url, logs=logs,
                            read_timeout=read_timeout or self.settings.fal_stream_read_timeout_s)

    def stream_status(self, status_url: str, *, logs: bool = True, read_timeout: float | None = None,
                      on_open: Callable[[httpx.Response | None], None] | None = None) -> Iterator[Status]:
        """Yield statuses from one connection to fal's SSE stream until the server closes it.

        Comment lines (fal's ``: ping`` heartbeat, about every 15 s) keep the connection
        and are skipped. Raises :class:`FalTransientError` on network trouble or silence
        past ``read_timeout`` (the caller reconnects or falls back to polling) and
        :class:`StreamUnsupported` when the server has no stream.

        ``on_open`` is called with the response once it is open, and with None just before the
        response is closed: from then on its connection may serve another request of the pool.
        """
        url = status_url.rstrip("/") + "/stream"
        read = read_timeout or self.settings.fal_stream_read_timeout_s
        timeout = httpx.Timeout(self.settings.fal_http_timeout_s, read=read, pool=60.0)
        try:
            with self.http.stream(
                "GET",
                url,
                params={"logs": "1" if logs else "0"},
                headers={**self._auth, "Accept": "text/event-stream"},
                timeout=timeout,
            ) as resp:
                try:
                    yield from self._read_stream(resp, on_open)
                finally:
                    if on_open is not None:
                        on_open(None)
        except httpx.ReadTimeout:
            raise FalTransientError(f"status stream was silent for {read:.0f}s (no heartbeat)",
                                    reason="stream_silent") from None
        except httpx.TransportError as exc:
            raise FalTransientError(f"status stream: {type(exc).__name__}", reason="transport") from None
        except UnicodeDecodeError:
            raise FalBadAnswer("status stream sent bytes that are not UTF-8") from None

    def _read_stream(self, resp: httpx.Response,
                     on_open: Callable[[httpx.Response | None], None] | None) -> Iterator[Status]:
        """The body of an opened status stream, as statuses (see :meth:`stream_status`)."""
        if on_open is not None:
            on_open(resp)
        if resp.status_code in (404, 405, 501):
            raise StreamUnsupported(f"status stream answered {resp.status_code}")
        if resp.status_code >= 300:
            resp.read()
            self._raise_for_status(resp)
        if "text/event-stream" not in resp.headers.get("content-type", ""):
            raise StreamUnsupported("status stream is not text/event-stream")
        data: list[str] = []
        size = 0
        for line in bounded_lines(resp.iter_bytes(), _MAX_JSON_BYTES):
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
                size += len(line)
                if size > _MAX_JSON_BYTES:
                    raise FalBadAnswer("status stream sent an oversized event")
            elif line == "" and data:
                yield self._status_of("\n".join(data))
                data, size = [], 0
        if data:
            yield self._status_of("\n".join(data))

    def result(self, response_url: str) -> Result:
        """GET the output of a finished request.

        Raises :class:`FalIngressError` (or another :class:`FalTransientError`) when the answer
        says nothing about the request: the same GET may be tried again. A request that
        failed raises :class:`FalContentPolicy`, :class:`FalStartTimeout` or the right
        :class:`FalRequestFailed`; a result fal no longer keeps raises :class:`FalResultGone`.
        """
        resp = self._call("GET", response_url, check=False)
        code = resp.status_code
        if code < 300:
            body = self._json(resp)
            if not isinstance(body, dict):
                raise FalBadAnswer("fal's result is not a JSON object")
            return Result(body, bytes(resp.content), _float_header(resp, BILLABLE_UNITS_HEADER))
        if code in (401, 402, 403, 408, 409, 425, 429):
            self._raise_for_status(resp)
        policy = _content_policy(resp, self.scrub)
        if policy is not None:
            raise policy
        from_queue = REQUEST_ID_HEADER in resp.headers
        if _is_start_timeout(resp):
            raise self._start_timeout(resp)
        if code in (404, 410) and from_queue:
            raise FalResultGone(
                f"fal no longer has the result of request {_request_id(resp)} ({code}): fal keeps results about an "
                "hour (6 minutes at 10 KB or more) unless payload storage is on; falq does not pay for it again"
            )
        error_type, detail = _error_info(resp)
        detail = self.scrub(detail)
        if code == 400 and "in progress" in detail.lower():
            raise FalTransientError("result requested before completion", reason="not_ready")
        if not from_queue:
            # Not fal's account of the request (an edge page, a proxy): ask again, never resubmit.
            self._raise_for_status(resp)
        if code >= 500 and error_type not in TRANSIENT_ERROR_TYPES:
            # A bare 5xx on the result names no outcome of the request (fal-ai/fal#694): fetch the
            # same result again. The caller, who knows whether the status said COMPLETED cleanly,
            # never submits again on it (reference section 11.1).
            raise FalResultError(f"fal answered {code} for the result of request {_request_id(resp)}: {detail[:300]}",
                                 retry_after=_retry_after(resp), reason=f"result_{code}")
        raise fal_failure(f"fal request failed ({code}): {detail}", error_type, code)

    def cancel(self, cancel_url: str) -> str:
        """PUT ``cancel_url``; returns fal's status word (CANCELLATION_REQUESTED, ALREADY_COMPLETED...)."""
        resp = self._call("PUT", cancel_url, check=False)
        if resp.status_code in (200, 202, 400, 404):
            try:
                body = resp.json()
            except ValueError:
                body = {}
            status = body.get("status") if isinstance(body, dict) else None
            return str(status or ("NOT_FOUND" if resp.status_code == 404 else resp.status_code))
        self._raise_for_status(resp)
        return "UNKNOWN"

    def upload(self, data: bytes, content_type: str, file_name: str) -> str:
        """Upload bytes to fal's storage the way fal's clients do; return the file URL.

        ``POST {rest}/storage/upload/initiate?storage_type=fal-cdn-v3`` (fal-js), then ``PUT`` the
        bytes to the ``upload_url`` it returned. Each call is retried like fal-client's
        ``_maybe_retry_request`` (408/409/429, 5xx and transport errors; exponential backoff from
        0.1 s with jitter). When the CDN path still fails, the same upload goes through
        ``storage_type=gcs``, fal-client's fallback (``ea805f65``): an upload blip must not
        refuse an edit. A refused key (401/403) is not retried and not sent down the other path.
        """
        last: FalqError | None = None
        for storage_type, attempts in _UPLOAD_PATHS:
            try:
                return self._upload_via(storage_type, attempts, data, content_type, file_name)
            except (FalAuthError, FalAccountLocked):
                raise
            except (FalTransientError, FalRejected, FalBadAnswer) as exc:
                last = exc
                log.warning("upload of %s through storage_type=%s failed: %s", file_name, storage_type, exc)
        assert last is not None
        raise last

    def _upload_via(self, storage_type: str, attempts: int, data: bytes, content_type: str, file_name: str) -> str:
        init = self._with_upload_retries(attempts, lambda: self._call(
            "POST",
            f"{self.settings.fal_rest_url}/storage/upload/initiate",
            params={"storage_type": storage_type},
            json={"content_type": content_type, "file_name": file_name},
        ))
        body = self._json(init)
        try:
            upload_url, file_url = _str(body, "upload_url"), _str(body, "file_url")
        except (KeyError, TypeError) as exc:
            raise FalBadAnswer(f"fal's upload answer lacks {exc}") from None

        def put() -> httpx.Response:
            # The signed upload URL carries its own authorisation: fal-js sends no key with it.
            try:
                resp = self.http.put(upload_url, content=data, headers={"Content-Type": content_type})
            except httpx.TransportError as exc:
                raise FalTransientError(f"upload: {type(exc).__name__}", reason="transport") from None
            if resp.status_code >= 300:
                self._raise_for_status(resp)
            return resp

        self._with_upload_retries(attempts, put)
        return file_url

    def _with_upload_retries(self, attempts: int, call: Callable[[], httpx.Response]) -> httpx.Response:
        """``call()`` again on what fal-client retries, at most ``attempts`` times in all."""
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except FalTransientError as exc:
                if attempt == attempts:
                    raise
                cap = self.upload_max_delay_s
                delay = min(self.upload_base_delay_s * 2 ** (attempt - 1), cap) * random.uniform(0.5, 1.5)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, cap))
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def sign_file_url(self, file_url: str, expires_in_s: int = 3600) -> str:
        """A signed URL that opens a fal CDN file whatever its ACL (fal's platform API).

        ``POST {FALQ_FAL_PLATFORM_URL}/storage/files/sign?url=<file url without query>`` with
        ``{"expiration_seconds": N}`` (1..604800) answers ``{"signed_url": ...}``; the key needs
        the ``assets:read`` permission (fal docs, platform-apis/v1/storage/files/sign). Used by
        the mirror when an output URL answers 403/404 on an account with restricted file access.
        The request and answer shapes come from that docs page only (no client library calls it
        yet): an answer without ``signed_url`` is a :class:`FalBadAnswer`.
        """
        bare = file_url.split("?", 1)[0]
        resp = self._call("POST", f"{self.settings.fal_platform_url}/storage/files/sign", params={"url": bare},
                          json={"expiration_seconds": max(1, min(int(expires_in_s), 604800))})
        body = self._json(resp)
        try:
            return _str(body, "signed_url")
        except (KeyError, TypeError) as exc:
            raise FalBadAnswer(f"fal's sign answer lacks {exc}") from None

    # --- plumbing --------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        check: bool = True,
        http: httpx.Client | None = None,
    ) -> httpx.Response:
        limit_s = self.settings.fal_http_timeout_s * _BODY_DEADLINE_FACTOR
        # The clock starts at the first socket operation (a wait for a pooled connection does
        # not count) and bounds connect, headers and body together: a server trickling its
        # status line and headers a byte at a time is cut off too (falq.shared.deadline).
        budget = deadline.Budget(limit_s)
        phase = "headers"
        try:
            with deadline.bounded(budget), (http or self.http).stream(
                method, url, json=json, params=params, headers={**self._auth, **(headers or {})}
            ) as resp:
                phase = "body"
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > _MAX_BODY_BYTES:
                    raise FalBadAnswer(f"fal's answer to {method} declares {declared} bytes, over the "
                                       f"{_MAX_BODY_BYTES}-byte limit; refusing")
                chunks: list[bytes] = []
                total = 0
                for chunk in resp.iter_bytes():
                    total += len(chunk)
                    # sync_mode results carry images as data URIs; anything bigger is hostile.
                    if total > _MAX_BODY_BYTES:
                        raise FalBadAnswer(f"fal's answer to {method} exceeded the {_MAX_BODY_BYTES}-byte limit")
                    if budget.expired:
                        raise self._slow(method, url, limit_s, phase)
                    chunks.append(chunk)
                resp._content = b"".join(chunks)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached fal: safe to send again, submit included.
            raise FalTransientError(f"{method} {_safe(url)}: {type(exc).__name__}", reason="connect") from None
        except httpx.TimeoutException as exc:
            if budget.expired:
                raise self._slow(method, url, limit_s, phase) from None
            raise FalTransientError(f"{method} {_safe(url)}: {type(exc).__name__}", reason="transport") from None
        except httpx.TransportError as exc:
            raise FalTransientError(f"{method} {_safe(url)}: {type(exc).__name__}", reason="transport") from None
        if check and resp.status_code >= 300:
            self._raise_for_status(resp)
        return resp

    @staticmethod
    def _slow(method: str, url: str, limit_s: float, phase: str) -> FalTransientError:
        what = "slow or trickling headers" if phase == "headers" else "slow or endless body"
        return FalTransientError(f"fal's answer to {method} {_safe(url)} was still arriving after {limit_s:.0f}s "
                                 f"({what})", reason="slow_answer")

    def _start_timeout(self, resp: httpx.Response) -> FalStartTimeout:
        kind = resp.headers.get(TIMEOUT_TYPE_HEADER, "")[:40]
        return FalStartTimeout(
            f"fal dropped request {_request_id(resp) or '(unnamed)'} unbilled: no runner started it within the "
            f"start timeout (FALQ_FAL_START_TIMEOUT_S={self.settings.fal_start_timeout_s}; "
            f"{resp.request.method} answered 504, timeout type {kind!r})")

    def _raise_for_submit(self, resp: httpx.Response) -> None:
        """A submit's error answer: retryable only if fal cannot have created a request."""
        code = resp.status_code
        if _is_start_timeout(resp):
            raise self._start_timeout(resp)
        if code in _NOTHING_CREATED_CODES or _is_ingress(resp) or code < 500:
            self._raise_for_status(resp)
        _, detail = _error_info(resp)
        rid = _request_id(resp)
        where = f"with request id {rid}" if rid else "without a request id"
        raise FalSubmitUncertain(
            f"fal answered the submit {code} {where}: {self.scrub(detail)[:300]}; fal may have created the request",
            request_id=rid,
        )

    def _raise_for_status(self, resp: httpx.Response) -> None:
        code = resp.status_code
        if _is_start_timeout(resp):
            raise self._start_timeout(resp)
        _, detail = _error_info(resp)
        detail = self.scrub(detail)
        where = f"{resp.request.method} {_safe(str(resp.request.url))}"
        if code == 402 or (code in (401, 403) and _LOCKED_RE.search(detail)):
            # fal answers an exhausted balance with 403 "User is locked. Reason: Exhausted
            # balance..."; one user reports the same text for a filtered prompt, so the job id
            # is logged with the pause (workers.limiter) for an operator to tell them apart.
            raise FalAccountLocked(
                f"fal account for key {self.settings.key_suffix()} is locked ({code}): {detail}",
                reason="account_locked",
            )
        if code in (401, 403):
            raise FalAuthError(
                f"fal refused the key {self.settings.key_suffix()} ({code}) on {where}: {detail}"
            )
        policy = _content_policy(resp, self.scrub)
        if policy is not None:
            raise policy
        if _is_ingress(resp):
            raise FalIngressError(f"fal's edge answered {code} on {where} (no request id): {detail[:120]}",
                                  retry_after=_retry_after(resp), reason=f"ingress_{code}")
        if code in _RETRYABLE_CODES:
            raise FalTransientError(
                f"fal answered {code} on {where}: {detail}", retry_after=_retry_after(resp), reason=f"http_{code}"
            )
        raise FalRejected(f"fal answered {code} on {where}: {detail}", status_code=code, detail=detail)

    def _json(self, resp: httpx.Response) -> Any:
        return self._parsed(resp.content, lambda body: body)

    def _status_of(self, raw: bytes | str) -> Status:
        return self._parsed(raw, parse_status)

    def _parsed(self, raw: bytes | str, parse: Callable[[Any], T]) -> T:
        try:
            return parse(_loads(raw))
        except FalBadAnswer as exc:  # a snippet of the answer may echo what we sent
            raise FalBadAnswer(self.scrub(str(exc))) from None

    def scrub(self, text: str) -> str:
        """``text`` with the fal key masked: fal's error texts go into job records, and a
        server that echoes the Authorization header must not put the key there."""
        key = self.settings.fal_key_value()
        return text.replace(key, "[REDACTED]") if key and len(key) >= 6 else text


class StreamUnsupported(Exception):
    """The status stream is unavailable here; poll instead."""


class _End:
    """The server closed the stream (see :meth:`StatusStream.next`)."""

    def __repr__(self) -> str:
        return "StreamEnd"


#: Returned by :meth:`StatusStream.next` once the server closed the stream.
StreamEnd = _End()


class StatusStream:
    """One connection to a request's status stream, read by a background thread.

    fal sends an event only on changes and a ``: ping`` comment about every 15 s, so a
    request needs this one connection for its whole life. The reader thread (a greenlet
    under gevent) blocks on the socket; the caller polls :meth:`next` with a short timeout
    and so notices cancel, deadline and shutdown within that timeout without reconnecting.
    :meth:`close` shuts the socket down, which wakes the reader at once; only while the response
    is open, since a closed one's connection is back in the pool serving other requests.

    Example::

        with fal.open_stream(rec.status_url) as stream:
            st = stream.next(timeout=1.0)   # a Status, None (nothing new yet) or StreamEnd
    """

    def __init__(self, fal: FalClient, status_url: str, *, logs: bool, read_timeout: float) -> None:
        self._fal = fal
        self._url = status_url
        self._logs = logs
        self._read_timeout = read_timeout
        self._items: queue.Queue[Status | BaseException | _End] = queue.Queue(maxsize=256)
        self._closed = threading.Event()
        self._resp: httpx.Response | None = None
        # Held while the socket is shut down and while the response is let go: once closed, the
        # response's connection is back in the client's pool and may carry another job's request.
        self._resp_lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="falq-status-stream", daemon=True)
        self._thread.start()

    def _opened(self, resp: httpx.Response | None) -> None:
        with self._resp_lock:
            self._resp = resp
        if resp is not None and self._closed.is_set():
            self._shutdown()

    def _put(self, item: Status | BaseException | _End) -> None:
        while not self._closed.is_set():
            try:
                self._items.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    def _read(self) -> None:
        try:
            for st in self._fal.stream_status(self._url, logs=self._logs, read_timeout=self._read_timeout,
                                              on_open=self._opened):
                if self._closed.is_set():
                    return
                self._put(st)
            self._put(StreamEnd)
        except BaseException as exc:  # handed to the caller, who decides
            if not self._closed.is_set():
                self._put(exc)

    def next(self, timeout: float) -> Status | _End | None:
        """The next status, ``None`` if none came within ``timeout`` s, or :data:`StreamEnd`.

        Re-raises what the reader met (:class:`FalTransientError`, :class:`StreamUnsupported`...).
        """
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def _shutdown(self) -> None:
        with self._resp_lock:
            resp = self._resp
            stream = resp.extensions.get("network_stream") if resp is not None else None
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop reading and drop the connection (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._shutdown()

    def __enter__(self) -> StatusStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _log_entry(raw: Any) -> LogEntry:
    if not isinstance(raw, dict):
        return LogEntry(0.0, str(raw)[:2000])
    stamp = raw.get("timestamp")
    at = 0.0
    if isinstance(stamp, str) and stamp:
        with contextlib.suppress(ValueError):
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    elif isinstance(stamp, int | float):
        at = float(stamp)
    return LogEntry(at, str(raw.get("message", ""))[:2000])


def parse_status(body: Any) -> Status:
    """Validate a status body the way fal's Python client does."""
    if not isinstance(body, dict):
        raise FalBadAnswer("fal's status answer is not a JSON object")
    status = body.get("status")
    if status not in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
        raise FalBadAnswer(f"fal's status answer has unknown status {str(status)[:40]!r}")
    raw_logs = body.get("logs") or []
    logs = [_log_entry(x) for x in raw_logs[-500:]] if isinstance(raw_logs, list) else []
    metrics = body.get("metrics") if isinstance(body.get("metrics"), dict) else {}
    pos = body.get("queue_position")
    return Status(
        status=status,
        queue_position=pos if isinstance(pos, int) else None,
        logs=logs,
        metrics=metrics or {},
        error=str(body["error"])[:2000] if body.get("error") else None,
        error_type=str(body["error_type"])[:100] if body.get("error_type") else None,
    )


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        text = raw[:80].decode("utf-8", "replace") if isinstance(raw, bytes) else raw[:80]
        raise FalBadAnswer(f"fal answered non-JSON: {text!r}") from None


def _str(body: Any, key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not value:
        raise TypeError(f"'{key}' (not a non-empty string)")
    return value


def _error_info(resp: httpx.Response) -> tuple[str | None, str]:
    error_type = resp.headers.get("x-fal-error-type")
    try:
        body = resp.json()
    except ValueError:
        return error_type, resp.text[:300] or resp.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail", body.get("message", body.get("status", "")))
        error_type = body.get("error_type") or error_type
        if isinstance(detail, list):
            detail = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []) if p != 'body')}: {d.get('msg', '')}"
                if isinstance(d, dict) else str(d)
                for d in detail
            )
        return (str(error_type) if error_type else None), str(detail)[:1000]
    return error_type, str(body)[:300]


def _request_id(resp: httpx.Response) -> str | None:
    rid = resp.headers.get(REQUEST_ID_HEADER, "").strip()
    return rid[:200] if rid else None


def _is_ingress(resp: httpx.Response) -> bool:
    """Exactly fal-client's ``_is_ingress_error``: 502-504, no ``x-fal-request-id``, and "nginx"
    in the body (fal's edge page). A plain 5xx from something else (a proxy of the user's own)
    may come after the POST went through: on a submit that is an uncertain submit, not this."""
    if resp.status_code not in _INGRESS_CODES or REQUEST_ID_HEADER in resp.headers:
        return False
    return "nginx" in resp.text


def _is_start_timeout(resp: httpx.Response) -> bool:
    """fal's start timeout: 504 with ``X-Fal-Request-Timeout-Type`` (fal-client never retries it)."""
    return resp.status_code == 504 and bool(resp.headers.get(TIMEOUT_TYPE_HEADER))


def _content_policy(resp: httpx.Response, scrub: Callable[[str], str]) -> FalContentPolicy | None:
    """The moderation refusal in a 422 (``detail[].type == "content_policy_violation"``)."""
    if resp.status_code != 422:
        return None
    try:
        body = resp.json()
    except ValueError:
        return None
    items = body.get("detail") if isinstance(body, dict) else None
    hits = [d for d in items if isinstance(d, dict) and d.get("type") == "content_policy_violation"] \
        if isinstance(items, list) else []
    if not hits:
        return None
    categories = sorted({str(c)[:40] for d in hits for c in (d.get("categories") or []) if isinstance(c, str)})
    loc = hits[0].get("loc")
    where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
    msg = str(hits[0].get("msg") or "flagged by a content checker")[:300]
    cats = f" ({', '.join(categories)})" if categories else ""
    return FalContentPolicy(scrub(f"fal's content checker refused {where or 'the input'}{cats}: {msg}"),
                            categories=categories, field=where)


def _float_header(resp: httpx.Response, name: str) -> float | None:
    value = resp.headers.get(name)
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return number if number is not None and 0 <= number < 1e6 else None


def _retry_after(resp: httpx.Response) -> float | None:
    return retry_after_s(resp.headers.get("retry-after"))


def _safe(url: str) -> str:
    """A URL without its query string (which may carry tokens) for messages."""
    return url.split("?", 1)[0]


def request_urls(settings: Settings, endpoint: str, request_id: str) -> tuple[str, str, str]:
    """``(status_url, response_url, cancel_url)`` of a request known only by its id.

    Used only when a submit answer carried ``x-fal-request-id`` but no body to follow;
    built the way fal-client builds them (``{queue}/{owner}/{app}/requests/{id}``).
    """
    base = f"{settings.fal_queue_url}/{'/'.join(endpoint.split('/')[:2])}/requests/{request_id}"
    return f"{base}/status", base, f"{base}/cancel"


def submit_headers(settings: Settings, lane: str, priority: str | None = None) -> dict[str, str]:
    """fal's own submit headers as configured (names from fal-client's ``_headers.py``).

    ``priority`` is the job's own choice (its batch's or its tenant's); None takes the lane's
    setting. ``low`` waits behind every customer's ``normal`` requests on fal's shared queue of
    the endpoint (fal docs, common parameters), so it is only ever an explicit choice.

    Example::

        >>> submit_headers(Settings(fal_media_expiry_s=None, fal_start_timeout_s=None), "bulk")
        {'X-Fal-Queue-Priority': 'normal'}
    """
    if priority not in ("normal", "low"):
        priority = settings.fal_priority_bulk if lane == "bulk" else settings.fal_priority_interactive
    headers: dict[str, str] = {"X-Fal-Queue-Priority": priority}
    if settings.fal_start_timeout_s:
        # Both names: X-Fal-Request-Start-Timeout is fal's new one (it wins when both are sent),
        # X-Fal-Request-Timeout the deprecated one fal-client still sends.
        value = str(float(settings.fal_start_timeout_s))
        headers["X-Fal-Request-Start-Timeout"] = value
        headers["X-Fal-Request-Timeout"] = value
    if settings.fal_media_expiry_s:
        headers["X-Fal-Object-Lifecycle-Preference"] = json.dumps(
            {"expiration_duration_seconds": int(settings.fal_media_expiry_s)})
    if not settings.fal_store_io:
        headers["X-Fal-Store-IO"] = "0"
    if settings.fal_no_retry:
        headers["x-fal-no-retry"] = "1"
    return headers
