"""A hostile fal: speaks just enough of fal's queue protocol to misbehave in every way falq must survive.

Which stage misbehaves, and how, is chosen per job by its prompt: ``"case:<name> ..."``
(any other prompt is the ``good`` case, a well-behaved fal). So one worker can run every
case at once, and each job's outcome is attributable. The media it points at are served
by the same server, so ``FALQ_MEDIA_HOSTS=127.0.0.1:<port>`` allowlists them.

Every endless or slow answer is bounded (bytes and seconds), so a falq bug shows up as a
failed assertion, never as a test run that never ends.

Example::

    with HostileFal() as fal:
        env = {"FALQ_FAL_QUEUE_URL": fal.url, "FALQ_MEDIA_HOSTS": fal.netloc}
        ...  # falq.generate("case:media-html-png")
        fal.submissions[job_id]   # POSTs that carried X-Falq-Job-Id: job_id
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from falq.shared.asgi import BackgroundServer

HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
#: Upper bound of any endless body this server sends (the client must stop long before).
ENDLESS_CAP_BYTES = 96 * 1024 * 1024
#: Upper bound of any trickling answer, in seconds.
TRICKLE_CAP_S = 60.0
GIGABYTES_2 = 2 * 1024**3
GIGABYTES_10 = 10 * 1024**3


def png(width: int = 96, height: int = 64, noise: bool = False) -> bytes:
    """A valid PNG (random pixels with ``noise``, so it does not compress)."""
    from PIL import Image

    buf = io.BytesIO()
    if noise:
        Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buf, "PNG")
    else:
        Image.new("RGB", (width, height), (20, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def jpeg(width: int = 256, height: int = 256) -> bytes:
    """A valid JPEG of a busy (poorly compressible), deterministic pattern."""
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), bytes(range(256)) * (width * height * 3 // 256 + 1)).save(buf, "JPEG")
    return buf.getvalue()


def case_of(prompt: object) -> str:
    """``"case:media-endless whatever"`` -> ``"media-endless"``; anything else -> ``"good"``."""
    if isinstance(prompt, str) and "case:" in prompt:
        return prompt.split("case:", 1)[1].split()[0]
    return "good"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers, media_type="application/json")


async def _endless(first: bytes, filler: bytes, cap: int = ENDLESS_CAP_BYTES) -> AsyncIterator[bytes]:
    """``first`` then ``filler`` repeated, up to ``cap`` bytes."""
    yield first
    sent = len(first)
    while sent < cap:
        yield filler
        sent += len(filler)
        await asyncio.sleep(0)


async def _trickle(request: Request, first: bytes, drip: bytes, every_s: float = 0.3) -> AsyncIterator[bytes]:
    """``first``, then ``drip`` every ``every_s`` until the client leaves (at most TRICKLE_CAP_S)."""
    yield first
    end = time.monotonic() + TRICKLE_CAP_S
    while time.monotonic() < end:
        await asyncio.sleep(every_s)
        if await request.is_disconnected():
            return
        yield drip


class HostileFal:
    """The hostile server on a free 127.0.0.1 port, in a background thread.

    Attributes (read them from the test thread; they are only appended to):
        submissions: POSTs per falq job id (``X-Falq-Job-Id``).
        cases: request id -> case.
        hits: GETs per path (media and queue routes).
        cancels: request ids whose cancel_url was PUT.
    """

    def __init__(self) -> None:
        self.submissions: Counter[str] = Counter()
        self.cases: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self.cancels: list[str] = []
        self.good_png = png()
        self.url = ""
        self.port = 0
        self.app = Starlette(routes=[
            Route("/media/{name}", self.media, methods=["GET"]),
            Route("/hostile/requests/{rid}/status/stream", self.stream, methods=["GET"]),
            Route("/hostile/requests/{rid}/status", self.status, methods=["GET"]),
            Route("/hostile/requests/{rid}/cancel", self.cancel, methods=["PUT"]),
            Route("/hostile/requests/{rid}", self.result, methods=["GET"]),
            Route("/{path:path}", self.submit, methods=["POST"]),
        ])
        self._server: BackgroundServer | None = None

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> HostileFal:
        self._server = BackgroundServer(self.app, log_level="critical", name="hostile-fal").start()
        self.url = self._server.url
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> HostileFal:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- the queue protocol ----------------------------------------------------------------
    def _urls(self, rid: str) -> dict[str, str]:
        base = f"{self.url}/hostile/requests/{rid}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    async def submit(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = {}
        case = case_of(body.get("prompt") if isinstance(body, dict) else None)
        job = request.headers.get("x-falq-job-id", "")
        self.submissions[job] += 1
        rid = uuid.uuid4().hex
        self.cases[rid] = case
        answer: dict[str, Any] = {"status": "IN_QUEUE", "request_id": rid, **self._urls(rid), "queue_position": 0}
        if case == "submit-nonjson":
            return Response(HTML, 200, media_type="text/html")
        if case == "submit-list":
            return _json(["request_id", rid])
        if case == "submit-no-request-id":
            answer.pop("request_id")
        elif case == "submit-no-status-url":
            answer.pop("status_url")
        elif case == "submit-wrong-type":
            answer["request_id"] = 5
        elif case == "submit-huge-length":
            return StreamingResponse(_endless(b'{"request_id":"', b"a" * 65536), 200,
                                     {"content-length": str(GIGABYTES_10)}, media_type="application/json")
        elif case == "submit-huge-body":
            return StreamingResponse(_endless(b'{"request_id":"', b"a" * 65536), 200, media_type="application/json")
        elif case == "submit-slow":
            return StreamingResponse(_trickle(request, b'{"request_id": ', b" "), 200, media_type="application/json")
        elif case == "submit-500-html":
            return Response(HTML, 500, media_type="text/html")
        elif case == "echo-key":  # an API that quotes the credential it refuses
            return _json({"detail": f"Invalid credentials: {request.headers.get('authorization', '')}"}, 401)
        return _json(answer, headers={"x-fal-request-id": rid})

    async def stream(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        case = self.cases.get(rid, "good")
        self.hits[request.url.path] += 1
        sse = "text/event-stream"
        if case.startswith("status-"):
            return _json({"detail": "Not found"}, 404)  # no stream: falq polls
        if case == "stream-bad-json":
            return Response(b'data: {"status": "IN_PROGRESS", \n\n', 200, media_type=sse)
        if case == "stream-unknown-status":
            return Response(b'data: {"status": "EXPLODED"}\n\n', 200, media_type=sse)
        if case == "stream-not-utf8":
            return Response(b'data: {"status": "\xff\xfe"}\n\n', 200, media_type=sse)
        if case == "stream-noise":  # bytes forever, never a status
            return StreamingResponse(_trickle(request, b": hello\n", b"garbage line\n: keepalive\nevent: ping\n\n",
                                              every_s=0.1), 200, media_type=sse)
        if case == "stream-endless-line":
            return StreamingResponse(_endless(b"data: ", b"a" * 65536), 200, media_type=sse)
        done = {"status": "COMPLETED", "logs": [{"message": "done"}], "metrics": {"inference_time": 0.05}}
        frames = f"data: {json.dumps({'status': 'IN_PROGRESS', 'logs': []})}\n\ndata: {json.dumps(done)}\n\n"
        return Response(frames.encode(), 200, media_type=sse)

    async def status(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        case = self.cases.get(rid, "good")
        self.hits[request.url.path] += 1
        if case == "status-unknown":
            return _json({"status": "DONE?"})
        if case == "status-nonjson":
            return Response(HTML, 200, media_type="text/html")
        if case == "status-list":
            return _json([{"status": "COMPLETED"}])
        if case == "status-slow":
            return StreamingResponse(_trickle(request, b'{"status": ', b" "), 202, media_type="application/json")
        return _json({"status": "COMPLETED", "logs": [], "metrics": {"inference_time": 0.05}})

    async def cancel(self, request: Request) -> Response:
        self.cancels.append(request.path_params["rid"])
        return _json({"status": "CANCELLATION_REQUESTED"}, 202)

    def media_url(self, case: str) -> str:
        name = f"{case}.png"
        return {
            "media-metadata-url": "http://169.254.169.254/latest/meta-data",
            "media-evil-host": "http://evil.example/x.png",
            "media-https-loopback": f"https://127.0.0.1:{self.port}/media/{name}",
            "media-https-localhost": f"https://localhost:{self.port}/media/{name}",
        }.get(case, f"{self.url}/media/{name}")

    async def result(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        case = self.cases.get(rid, "good")
        self.hits[request.url.path] += 1
        image = {"url": self.media_url(case), "content_type": "image/png"}
        if case == "result-nonjson":
            return Response(HTML, 200, media_type="text/html")
        if case == "result-list":
            return _json([image])
        if case == "result-no-images":
            return _json({"seed": 1})
        if case == "result-images-string":
            return _json({"images": "x", "seed": 1})
        if case == "result-seed-abc":
            return _json({"images": [image], "seed": "abc"})
        if case == "result-empty-images":
            return _json({"images": [], "seed": 1})
        if case == "result-huge-length":
            return StreamingResponse(_endless(b'{"images":"', b"a" * 65536), 200,
                                     {"content-length": str(GIGABYTES_10)}, media_type="application/json")
        return _json({"images": [image], "seed": 7, "has_nsfw_concepts": [False]})

    # --- media ----------------------------------------------------------------------------
    async def media(self, request: Request) -> Response:
        name = request.path_params["name"].removesuffix(".png")
        self.hits[request.url.path] += 1
        if name == "media-redirect-off":
            return Response(b"", 302, {"location": "http://evil.example/x.png"})
        if name == "media-redirect-metadata":
            return Response(b"", 302, {"location": "http://169.254.169.254/latest/meta-data/iam/"})
        if name == "media-html-png":
            return Response(HTML, 200, media_type="image/png")
        if name == "media-gif":
            return Response(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", 200, media_type="image/png")
        if name == "media-huge-length":
            return StreamingResponse(_endless(self.good_png, b"\0" * 65536), 200,
                                     {"content-length": str(GIGABYTES_2)}, media_type="image/png")
        if name == "media-endless":
            return StreamingResponse(_endless(self.good_png, b"\0" * 65536), 200, media_type="image/png")
        if name == "media-truncated-png":
            data = png(256, 256, noise=True)
            return Response(data[: len(data) // 2], 200, media_type="image/png")
        if name == "media-truncated-jpeg":  # the header parses, Content-Length matches the cut bytes
            data = jpeg(256, 256)
            return Response(data[: len(data) // 2], 200, media_type="image/jpeg")
        if name == "media-truncated-once":  # a CDN that cut the first transfer only
            data = jpeg(256, 256)
            cut = self.hits[request.url.path] == 1
            return Response(data[: len(data) // 2] if cut else data, 200, media_type="image/jpeg")
        if name == "media-404":
            return Response(b"gone", 404, media_type="text/plain")
        if name == "media-500":
            return Response(b"busy", 500, media_type="text/plain")
        return Response(self.good_png, 200, media_type="image/png")
