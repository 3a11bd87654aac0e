"""The fal client's status stream reader against a real HTTP server that pings (``: ping``).

It waits through pings without reconnecting, hands over the first event, and closes at once
(its reader thread does not stay blocked on the socket).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from falq.shared.asgi import BackgroundServer
from falq.shared.fal.client import FalClient, Status, StreamEnd
from falq.shared.settings import Settings

FAL_KEY = "test-key-1234567890"


def settings(**kw: Any) -> Settings:
    return Settings(**{"fal_key": FAL_KEY, **kw})


class PingServer:
    """An SSE endpoint that pings every 0.2 s, sends one event after ``data_after`` s (never if None)
    and then keeps pinging."""

    def __init__(self, data_after: float | None = 1.0) -> None:
        self.connections = 0
        self.disconnected = threading.Event()

        async def stream(request: Request) -> Response:
            self.connections += 1

            async def frames() -> AsyncIterator[bytes]:
                started = time.monotonic()
                sent = False
                try:
                    while time.monotonic() - started < 30:
                        await asyncio.sleep(0.2)
                        if not sent and data_after is not None and time.monotonic() - started >= data_after:
                            body = {"status": "IN_PROGRESS", "logs": [
                                {"message": "step 1", "timestamp": "2026-01-01T00:00:00Z"}]}
                            yield f"data: {json.dumps(body)}\n\n".encode()
                            sent = True
                        else:
                            yield b": ping\n\n"
                finally:
                    self.disconnected.set()

            return StreamingResponse(frames(), media_type="text/event-stream")

        self.app = Starlette(routes=[Route("/fal-ai/app/requests/r-1/status/stream", stream)])


def test_status_stream_waits_through_pings_and_closes_promptly() -> None:
    srv = PingServer()
    with BackgroundServer(srv.app, name="ping-sse") as server:
        fal = FalClient(settings(fal_queue_url=server.url))
        try:
            stream = fal.open_stream(f"{server.url}/fal-ai/app/requests/r-1/status", read_timeout=5)
            got: list[Status | None] = []
            started = time.monotonic()
            while time.monotonic() - started < 8:
                item = stream.next(timeout=0.3)
                assert item is not StreamEnd
                got.append(item)  # type: ignore[arg-type]
                if item is not None:
                    break
            nones, last = got[:-1], got[-1]
            assert isinstance(last, Status), got
            assert last.status == "IN_PROGRESS" and [e.message for e in last.logs] == ["step 1"]
            assert len(nones) >= 2 and all(x is None for x in nones)  # ~1 s of pings, polled every 0.3 s
            assert 0.7 < time.monotonic() - started < 4
            assert stream.next(timeout=0.5) is None  # only pings again: nothing new, no error

            t0 = time.monotonic()
            stream.close()
            assert time.monotonic() - t0 < 1.0
            stream._thread.join(timeout=1.0)
            assert not stream._thread.is_alive(), "the reader thread still blocks on the socket"
            assert time.monotonic() - t0 < 1.5
            assert srv.connections == 1  # pings kept the one connection; no reconnects
            assert srv.disconnected.wait(5), "the server never saw the connection go"
            stream.close()  # idempotent
        finally:
            fal.close()


def test_status_stream_close_while_only_pings_arrive() -> None:
    srv = PingServer(data_after=None)
    with BackgroundServer(srv.app, name="ping-sse") as server:
        fal = FalClient(settings(fal_queue_url=server.url))
        try:
            with fal.open_stream(f"{server.url}/fal-ai/app/requests/r-1/status", read_timeout=5) as stream:
                assert stream.next(timeout=0.5) is None
                assert stream.next(timeout=0.5) is None
                t0 = time.monotonic()
            assert time.monotonic() - t0 < 1.0
            stream._thread.join(timeout=1.0)
            assert not stream._thread.is_alive()
        finally:
            fal.close()


def test_closing_a_finished_stream_leaves_its_pooled_connection_alone() -> None:
    """A stream the server ended gives its connection back to the client's pool, where another
    job's request may take it: closing the stream afterwards must not shut that socket down
    (seen as a ReadError on another job's result GET in a busy worker)."""

    async def stream(request: Request) -> Response:
        async def frames() -> AsyncIterator[bytes]:
            yield f"data: {json.dumps({'status': 'COMPLETED'})}\n\n".encode()

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(1.0)
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/fal-ai/app/requests/r-1/status/stream", stream), Route("/slow", slow)])
    with BackgroundServer(app, name="ended-sse") as server:
        fal = FalClient(settings(fal_queue_url=server.url), max_connections=1)
        try:
            stream = fal.open_stream(f"{server.url}/fal-ai/app/requests/r-1/status", read_timeout=5)
            done = stream.next(timeout=5)
            assert isinstance(done, Status) and done.done
            assert stream.next(timeout=5) is StreamEnd  # the response is closed: its connection is pooled
            outcome: list[object] = []
            other = threading.Thread(target=lambda: outcome.append(_get(fal, f"{server.url}/slow")))
            other.start()
            time.sleep(0.3)  # the other request is now waiting for its answer on that connection
            stream.close()
            other.join(timeout=10)
            assert outcome == [200], outcome
        finally:
            fal.close()


def _get(fal: FalClient, url: str) -> object:
    try:
        return fal.http.get(url).status_code
    except Exception as exc:  # what the caller sees instead of the answer
        return exc
