"""Fault injection: 5xx, 429, dropped connections and slow answers, drawn per call.

Faults act at the ingress, before routing, like a misbehaving gateway in front of fal:

* ``5xx``: an nginx-style HTML error page (502/503/504 by default) **without**
  ``x-fal-request-id``, on any call kind, the shape fal's edge sends and fal-client treats
  as a retryable ingress error (its ``_is_ingress_error`` looks for "nginx" in the body);
* ``429``: ``{"detail": ...}``, with ``Retry-After`` on a share of them;
* ``drop``: the response starts (200, ``content-length: 1000``) and the connection closes
  after a few body bytes; httpx raises ``httpx.RemoteProtocolError`` ("peer closed
  connection without sending complete message body");
* ``slow``: the answer is delayed by ``slow_s`` and then served normally.

A faulted submit never creates a request, with one deliberate exception:
``submit_500_created`` lets the submit through, so the request IS created and runs, and
then answers 500 ``{"detail": "Internal server error"}`` **with** ``x-fal-request-id``:
the case where fal may have created the request and a client must not blindly resubmit.
``submit_outage_s`` is an edge outage: while it lasts every submit answers the nginx 502
page without ``x-fal-request-id`` and nothing is created (a minute or more of these is what
fal's edge does now and then, reference section 11.4).
The per-request ``completed_error`` and ``moderation_rate`` draws happen at submit time
(:meth:`FaultInjector.draw_completed_error`, :meth:`FaultInjector.draw_moderation`).

The middleware also does the connection accounting for benchmarks: every queue call is
attributed to its request id (from the path, or for a submit from the answer's
``x-fal-request-id``) together with its ASGI ``scope["client"]``, see
:meth:`falq.emulator.core.Emulator.note_call`.

Example::

    >>> inj = FaultInjector(EmulatorConfig(fail_429=1.0, fault_seed=1))
    >>> inj.draw("status")
    '429'
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from falq.emulator.config import CallKind, EmulatorConfig
from falq.emulator.state import Stats

SUBMIT_500_SCOPE_KEY = "falq.submit_500_created"  # set on the ASGI scope, read by the submit route
SUBMIT_500_BODY = {"detail": "Internal server error"}

_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


class FaultInjector:
    """Seedable draws of faults; one RNG for every call so a seed replays a run."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.fault_seed)

    def configure(self, config: EmulatorConfig, reseed: bool = False) -> None:
        self.config = config
        if reseed:
            self.rng = random.Random(config.fault_seed)

    def draw(self, kind: CallKind) -> str | None:
        """The fault for one call of ``kind``: ``drop``, ``5xx``, ``429``, ``slow`` or None."""
        cfg = self.config
        if kind not in cfg.fault_calls:
            return None
        for name, rate in (
            ("drop", cfg.drop),
            ("5xx", cfg.fail_5xx),
            ("429", cfg.fail_429),
            ("slow", cfg.slow),
        ):
            if rate > 0 and self.rng.random() < rate:
                return name
        return None

    def _chance(self, rate: float) -> bool:
        # No draw at rate 0, so adding a fault kind does not shift the replay of old seeds.
        return rate > 0 and self.rng.random() < rate

    def draw_completed_error(self) -> bool:
        """Whether a new request finishes with ``runner_disconnected``."""
        return self._chance(self.config.completed_error)

    def draw_moderation(self) -> bool:
        """Whether a new request is moderated (``moderation_rate``)."""
        return self._chance(self.config.moderation_rate)

    def draw_submit_500(self) -> bool:
        """Whether a submit that passed the per-call faults gets the created-then-500 answer."""
        return "submit" in self.config.fault_calls and self._chance(self.config.submit_500_created)


def classify(method: str, path: str) -> CallKind | None:
    """Which kind of queue/file call a request is, or None for admin, storage and platform-API routes."""
    if path.startswith(("/_emulator", "/.well-known", "/storage/", "/v1/")):
        return None
    if path.startswith("/files/"):
        return "file" if method in ("GET", "HEAD") and path != "/files/upload" else None
    p = path.rstrip("/")
    if "/requests/" in p:
        if p.endswith("/cancel"):
            return "cancel" if method == "PUT" else None
        if p.endswith("/status/stream"):
            return "stream"
        if p.endswith("/status"):
            return "status"
        return "result"
    return "submit" if method == "POST" and p.count("/") >= 2 else None


def request_id_in_path(path: str) -> str | None:
    """The id after the last ``requests`` segment of a queue path, if any."""
    parts = [p for p in path.split("/") if p]
    if "requests" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("requests")
    return parts[i + 1] if i + 1 < len(parts) else None


def _client(scope: Scope) -> tuple[str, int] | None:
    client = scope.get("client")
    if not client:
        return None
    return str(client[0]), int(client[1])


def _nginx_page(code: int) -> bytes:
    """fal's edge error page (what fal-client's ``_is_ingress_error`` recognises by "nginx")."""
    reason = _REASONS.get(code, "Server Error")
    return (f"<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} "
            f"{reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode()


async def _send_simple(send: Send, code: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Emulator(Protocol):
    """What the middleware needs of :class:`falq.emulator.core.Emulator` (which builds on this
    module, so it is named by its shape rather than imported)."""

    config: EmulatorConfig
    faults: FaultInjector
    stats: Stats

    def note_call(self, rid: str | None, kind: str, client: Any) -> None: ...

    def submit_outage(self) -> bool: ...


class FaultMiddleware:
    """ASGI middleware counting queue/file calls and injecting the configured faults."""

    def __init__(self, app: ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = classify(scope["method"], scope["path"])
        if kind is None:
            await self.app(scope, receive, send)
            return
        emu = self.emulator
        emu.stats.calls[kind] += 1
        client = _client(scope)
        if kind == "submit":
            emu.note_call(None, kind, client)  # the id is only known from the answer
            send = self._attributing(send, client)
        elif kind != "file":
            emu.note_call(request_id_in_path(scope["path"]), kind, client)
        if kind == "submit" and emu.submit_outage():
            emu.stats.faults["submit_outage"] += 1
            emu.stats.rejected["submit_outage"] += 1
            emu.stats.rejected_submits["outage"] += 1
            await _send_simple(send, 502, _nginx_page(502), [(b"content-type", b"text/html")])
            return
        fault = emu.faults.draw(kind)
        if fault is None:
            if kind == "submit" and emu.faults.draw_submit_500():
                scope[SUBMIT_500_SCOPE_KEY] = True
            await self.app(scope, receive, send)
            return
        emu.stats.faults[fault] += 1
        if fault == "slow":
            await asyncio.sleep(emu.config.slow_s)
            await self.app(scope, receive, send)
            return
        emu.stats.rejected[fault] += 1
        if kind == "submit":
            emu.stats.rejected_submits[fault] += 1
        if fault == "drop":
            start = {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
            }
            await send(start)
            await send({"type": "http.response.body", "body": b'{"status": "IN_', "more_body": True})
            return  # uvicorn closes the transport: the client sees an incomplete body
        if fault == "5xx":
            code = emu.faults.rng.choice(emu.config.fail_5xx_codes)
            await _send_simple(send, code, _nginx_page(code), [(b"content-type", b"text/html")])
            return
        headers = [(b"content-type", b"application/json")]
        if emu.faults.rng.random() < emu.config.retry_after_rate:
            headers.append((b"retry-after", str(emu.config.retry_after_s).encode()))
        await _send_simple(send, 429, b'{"detail":"Too many requests (emulated rate limit)"}', headers)

    def _attributing(self, send: Send, client: tuple[str, int] | None) -> Send:
        """Wrap ``send`` so a submit's answer credits its connection to the new request id."""
        emu = self.emulator

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-fal-request-id":
                        emu.note_call(value.decode("latin-1"), "submit", client)
                        break
            await send(message)

        return wrapped
