"""Serving an ASGI app with uvicorn, in the foreground or in a background thread.

One way to serve for everything falq runs over HTTP (the fal emulator, the gateway):
uvloop and httptools when installed, the access log off, a deep listen backlog.

Example::

    with BackgroundServer(app, name="falq-gateway") as server:
        httpx.get(f"{server.url}/healthz")
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn


def uvicorn_config(app: Any, log_level: str) -> uvicorn.Config:
    """uvicorn settings shared by falq's HTTP servers."""
    return uvicorn.Config(
        app,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        access_log=False,
        log_level=log_level,
        lifespan="on",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
        backlog=4096,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0 picks a free one), bound before uvicorn starts so the
    URL is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def base_url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class BackgroundServer:
    """An ASGI app served by uvicorn in a daemon thread (tests, benchmarks, the demo).

    Parameters:
        app: the ASGI application.
        host, port: where to listen; port 0 picks a free one.
        log_level: uvicorn's log level.
        name: the thread's name.

    Attributes: ``url`` (no trailing slash) once started.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 name: str = "falq-http") -> None:
        self.app = app
        self.host, self.port, self.log_level, self.name = host, port, log_level, name
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 10.0) -> Self:
        """Start serving; returns once the server accepts connections."""
        sock = bind(self.host, self.port)
        self.url = base_url(self.host, sock)
        self._server = uvicorn.Server(uvicorn_config(self.app, self.log_level))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name=self.name,
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} failed to start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
