"""A fault-injecting HTTP proxy in front of an S3 endpoint, for the chaos suite.

Every PUT passing through fails with a given probability: half of the failures answer
``503 SlowDown`` (what S3 says when throttling), the other half drop the connection after
reading the request. Everything else is forwarded unchanged.

Example::

    with S3FaultProxy(moto_url, put_failure_rate=0.1) as proxy:
        ...  # point FALQ_S3_ENDPOINT_URL at proxy.url
"""

from __future__ import annotations

import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class S3FaultProxy:
    """Parameters: ``target`` (S3 base URL), ``put_failure_rate`` in [0, 1], ``seed``."""

    def __init__(self, target: str, *, put_failure_rate: float, seed: int = 1) -> None:
        self.target = target.rstrip("/")
        self.rate = put_failure_rate
        self.rng = random.Random(seed)
        self.injected = {"503": 0, "drop": 0}
        self.forwarded = 0
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._draw() if self.command == "PUT" else None
                if fault == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if fault == "503":
                    msg = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                resp = proxy._client.request(self.command, proxy.target + self.path, content=body, headers=headers)
                with proxy._lock:
                    proxy.forwarded += 1
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 256
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _draw(self) -> str | None:
        with self._lock:
            if self.rng.random() >= self.rate:
                return None
            kind = "503" if self.rng.random() < 0.5 else "drop"
            self.injected[kind] += 1
            return kind

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self._client.close()
