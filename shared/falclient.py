"""The one HTTP client falq uses to talk to fal's queue API.

It speaks the protocol described in fal's docs (submit, status, status stream, result,
cancel, storage upload) over ``httpx`` and turns every answer into either a typed value
or a typed error from :mod:`shared.errors`. It never retries by itself: retry policy is
the caller's (the worker pipeline), so that every retry is visible in the job record.

After submit, it follows the ``status_url``/``response_url``/``cancel_url`` that fal
returned instead of rebuilding them (some apps reject rebuilt URLs).

Example::

    fal = FalClient(settings)
    sub = fal.submit("fal-ai/qwen-image-2/text-to-image", {"prompt": "a red fox"})
    for st in fal.stream_status(sub.status_url):
        if st.status == "COMPLETED":
            break
    output = fal.result(sub.response_url)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx

from shared.errors import (
    FalAccountLocked,
    FalAuthError,
    FalBadAnswer,
    FalRejected,
    FalTransientError,
    fal_failure,
)
from shared.settings import Settings
from shared.sse import bounded_lines

T = TypeVar("T")
_RETRYABLE_CODES = {408, 409, 425, 429, 500, 502, 503, 504}
_MAX_JSON_BYTES = 8 * 1024 * 1024
_MAX_BODY_BYTES = _MAX_JSON_BYTES * 8  # sync_mode results carry images as data URIs
#: httpx's timeouts are per read, so a trickling body never times out: a whole answer must
#: arrive within this many times ``fal_http_timeout_s``.
_BODY_DEADLINE_FACTOR = 2.0


@dataclass(frozen=True)
class Submitted:
    """fal's answer to a submit: where to follow the request."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None


@dataclass(frozen=True)
class Status:
    """One status of a request. ``status`` is IN_QUEUE, IN_PROGRESS or COMPLETED."""

    status: str
    queue_position: int | None = None
    logs: list[str] = field(default_factory=list)
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

    def __init__(self, settings: Settings, http: httpx.Client | None = None, max_connections: int = 2000) -> None:
        self.settings = settings
        timeout = httpx.Timeout(settings.fal_http_timeout_s, connect=10.0, pool=60.0)
        self.http = http or httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=256),
            headers={"User-Agent": "falq/0.1"},
        )
        key = settings.fal_key_value()
        self._auth = {"Authorization": f"Key {key}"} if key else {}

    def close(self) -> None:
        self.http.close()

    # --- calls -----------------------------------------------------------------------------------
    def submit(
        self,
        endpoint: str,
        payload: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        webhook_url: str | None = None,
    ) -> Submitted:
        """POST the input to ``{queue_url}/{endpoint}``; return where to follow it."""
        url = f"{self.settings.fal_queue_url}/{endpoint}"
        if webhook_url:
            url += "?" + urlencode({"fal_webhook": webhook_url})
        resp = self._call("POST", url, json=payload, headers=headers)
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

    def stream_status(self, status_url: str, *, logs: bool = True, read_timeout: float = 30.0) -> Iterator[Status]:
        """Yield statuses from fal's SSE stream until the server closes it.

        Raises :class:`FalTransientError` on network trouble (the caller reconnects or
        falls back to polling) and :class:`StreamUnsupported` when the server has no stream.
        """
        url = status_url.rstrip("/") + "/stream"
        timeout = httpx.Timeout(self.settings.fal_http_timeout_s, read=read_timeout, pool=60.0)
        try:
            with self.http.stream(
                "GET",
                url,
                params={"logs": "1" if logs else "0"},
                headers={**self._auth, "Accept": "text/event-stream"},
                timeout=timeout,
            ) as resp:
                if resp.status_code in (404, 405, 501):
                    raise StreamUnsupported(f"status stream answered {resp.status_code}")
                if resp.status_code >= 300:
                    resp.read()
                    self._raise_for_status(resp)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    raise StreamUnsupported("status stream is not text/event-stream")
                data: list[str] = []
                size = 0
                quiet_until = time.monotonic() + read_timeout
                for line in bounded_lines(resp.iter_bytes(), _MAX_JSON_BYTES):
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip())
                        size += len(line)
                        if size > _MAX_JSON_BYTES:
                            raise FalBadAnswer("status stream sent an oversized event")
                    elif line == "" and data:
                        yield self._status_of("\n".join(data))
                        data, size = [], 0
                        quiet_until = time.monotonic() + read_timeout
                    if time.monotonic() > quiet_until:
                        # Bytes keep coming but no status (comments, noise): end like a quiet
                        # stream, so the caller checks cancel/deadline and reconnects.
                        return
                if data:
                    yield self._status_of("\n".join(data))
        except httpx.ReadTimeout:
            # Nothing new within read_timeout: end quietly, the caller reconnects.
            return
        except httpx.TransportError as exc:
            raise FalTransientError(f"status stream: {type(exc).__name__}", reason="transport") from None
        except UnicodeDecodeError:
            raise FalBadAnswer("status stream sent bytes that are not UTF-8") from None

    def result(self, response_url: str) -> dict[str, Any]:
        """GET the output. A failed request raises the right :class:`FalRequestFailed`."""
        resp = self._call("GET", response_url, check=False)
        if resp.status_code < 300:
            body = self._json(resp)
            if not isinstance(body, dict):
                raise FalBadAnswer("fal's result is not a JSON object")
            return body
        if resp.status_code in (401, 403, 402, 408, 409, 425, 429) or resp.status_code == 404:
            self._raise_for_status(resp)
        # The request ran and failed: the app's status and error body come back here.
        error_type, detail = _error_info(resp)
        detail = self.scrub(detail)
        if resp.status_code == 400 and "in progress" in detail.lower():
            raise FalTransientError("result requested before completion", reason="not_ready")
        if error_type is None and resp.status_code >= 500:
            error_type = "internal_error"
        raise fal_failure(f"fal request failed ({resp.status_code}): {detail}", error_type, resp.status_code)

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
        """Upload bytes to fal's storage the way the JS client does; return the file URL."""
        init = self._call(
            "POST",
            f"{self.settings.fal_rest_url}/storage/upload/initiate",
            params={"storage_type": "fal-cdn-v3"},
            json={"content_type": content_type, "file_name": file_name},
        )
        body = self._json(init)
        try:
            upload_url, file_url = _str(body, "upload_url"), _str(body, "file_url")
        except (KeyError, TypeError) as exc:
            raise FalBadAnswer(f"fal's upload answer lacks {exc}") from None
        try:
            put = self.http.put(upload_url, content=data, headers={"Content-Type": content_type})
        except httpx.TransportError as exc:
            raise FalTransientError(f"upload: {type(exc).__name__}", reason="transport") from None
        if put.status_code >= 300:
            self._raise_for_status(put)
        return file_url

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
    ) -> httpx.Response:
        limit_s = self.settings.fal_http_timeout_s * _BODY_DEADLINE_FACTOR
        try:
            with self.http.stream(
                method, url, json=json, params=params, headers={**self._auth, **(headers or {})}
            ) as resp:
                deadline = time.monotonic() + limit_s
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
                    if time.monotonic() > deadline:
                        raise FalTransientError(f"fal's answer to {method} {_safe(url)} was still arriving after "
                                                f"{limit_s:.0f}s (slow or endless body)", reason="slow_answer")
                    chunks.append(chunk)
                resp._content = b"".join(chunks)
        except httpx.TransportError as exc:
            raise FalTransientError(f"{method} {_safe(url)}: {type(exc).__name__}", reason="transport") from None
        if check and resp.status_code >= 300:
            self._raise_for_status(resp)
        return resp

    def _raise_for_status(self, resp: httpx.Response) -> None:
        code = resp.status_code
        _, detail = _error_info(resp)
        detail = self.scrub(detail)
        where = f"{resp.request.method} {_safe(str(resp.request.url))}"
        if code in (401, 403):
            raise FalAuthError(
                f"fal refused the key {self.settings.key_suffix()} ({code}) on {where}: {detail}"
            )
        if code == 402 or "locked" in detail.lower():
            raise FalAccountLocked(
                f"fal account for key {self.settings.key_suffix()} is locked or out of credit ({code}): {detail}",
                reason="account_locked",
            )
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


def parse_status(body: Any) -> Status:
    """Validate a status body the way fal's Python client does."""
    if not isinstance(body, dict):
        raise FalBadAnswer("fal's status answer is not a JSON object")
    status = body.get("status")
    if status not in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
        raise FalBadAnswer(f"fal's status answer has unknown status {str(status)[:40]!r}")
    raw_logs = body.get("logs") or []
    logs = [str(x.get("message", "")) if isinstance(x, dict) else str(x) for x in raw_logs][-500:] \
        if isinstance(raw_logs, list) else []
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


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            import time

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _safe(url: str) -> str:
    """A URL without its query string (which may carry tokens) for messages."""
    return url.split("?", 1)[0]
