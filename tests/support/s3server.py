"""Real local servers for storage and mirroring tests: moto's S3 and a tiny media host.

``moto_s3()`` runs moto's S3 in a thread on 127.0.0.1 (random port) and yields its
endpoint URL. ``media_server()`` serves canned answers (a PNG, HTML posing as a PNG,
redirects, huge or endless bodies, 503s, dropped connections) over plain HTTP.

moto keeps its state per process, so tests should use unique bucket names.

Example::

    with moto_s3() as endpoint, media_server() as media:
        settings = Settings(s3_endpoint_url=endpoint, media_hosts=media.allow, allow_private_media=True)
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.server import ThreadedMotoServer

from falq.shared.settings import Settings

__all__ = ["MediaServer", "make_png", "media_server", "moto_s3", "s3_settings"]


@contextmanager
def moto_s3() -> Iterator[str]:
    """Run moto's S3 on 127.0.0.1 (random port); yields ``http://127.0.0.1:<port>``."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_png(width: int = 4, height: int = 3, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small valid PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class MediaServer:
    """A running media host: ``url(path)``, ``allow`` (a media_hosts entry) and hit counts."""

    host: str
    port: int
    routes: dict[str, Route]
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def allow(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, **headers: str) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        h.send_header(name.replace("_", "-"), value)
    h.end_headers()
    h.wfile.write(body)


def _default_routes(png: bytes, port: int) -> dict[str, Route]:
    def redirect(to: str) -> Route:
        return lambda h: _send(h, 302, b"", "text/plain", Location=to)

    def huge_length(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(10**12))
        h.end_headers()
        h.wfile.write(png)

    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(png)
        try:
            for _ in range(100_000):
                h.wfile.write(b"\0" * 65536)
        except OSError:
            pass

    def slow(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(len(png)))
        h.end_headers()
        h.wfile.write(png[:10])
        h.wfile.flush()
        time.sleep(3)

    def reset(h: BaseHTTPRequestHandler) -> None:
        # SO_LINGER 0 makes close() send a RST instead of a FIN.
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h.close_connection = True

    html = b"<!DOCTYPE html><html><body>Access denied</body></html>"
    return {
        "/img.png": lambda h: _send(h, 200, png, "image/png"),
        "/html.png": lambda h: _send(h, 200, html, "image/png"),
        "/redirect-ok": redirect("/img.png"),
        "/redirect-chain": redirect("/redirect-ok"),
        "/redirect-loop": redirect("/redirect-loop"),
        "/redirect-off": redirect(f"http://localhost:{port}/img.png"),
        "/redirect-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
        "/huge-length": huge_length,
        "/endless": endless,
        "/slow": slow,
        "/503": lambda h: _send(h, 503, b"busy", "text/plain", Retry_After="7"),
        "/429": lambda h: _send(h, 429, b"slow down", "text/plain"),
        "/404": lambda h: _send(h, 404, b"nope", "text/plain"),
        "/reset": reset,
    }


@contextmanager
def media_server(png: bytes | None = None) -> Iterator[MediaServer]:
    """Serve canned media answers on 127.0.0.1 (random port) from a thread."""
    state: dict[str, MediaServer] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            server = state["server"]
            path = self.path.split("?")[0]
            server.hits[path] = server.hits.get(path, 0) + 1
            route = server.routes.get(path)
            if route is None:
                _send(self, 404, b"not found", "text/plain")
            else:
                route(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the default 5 drops handshakes under concurrent clients

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the /reset and /endless routes break connections on purpose

    httpd = Server(("127.0.0.1", 0), Handler)
    port = int(httpd.server_address[1])
    state["server"] = MediaServer("127.0.0.1", port, _default_routes(png or make_png(), port))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["server"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def s3_settings(endpoint: str, **overrides: object) -> Settings:
    """Settings for a moto endpoint with a fresh, unique bucket (ignores env files)."""
    fields: dict[str, object] = {
        "s3_endpoint_url": endpoint,
        "s3_bucket": f"falq-test-{uuid.uuid4().hex[:12]}",
        "s3_prefix": "falq",
        "s3_region": "us-east-1",
        "aws_access_key_id": "AKIATESTKEYID0000000",
        "aws_secret_access_key": "test-secret-value-never-printed",
    }
    fields.update(overrides)
    return Settings(_env_file=None, **fields)  # type: ignore[arg-type, call-arg]
