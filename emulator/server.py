"""Serving the emulator: a blocking :func:`run`, a background :class:`EmulatorServer`, the CLI.

uvicorn runs with uvloop and httptools when installed and the access log off, so the
emulator is never the bottleneck of a benchmark.

Example::

    with EmulatorServer(latency="0", concurrency=2) as emu:
        httpx.post(f"{emu.url}/fal-ai/qwen-image-2/text-to-image", json={"prompt": "fox"},
                   headers={"Authorization": "Key test"})
        emu.requests()["peak_in_flight"]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import socket
import sys
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from emulator.app import create_app
from emulator.config import EmulatorConfig


class _QuietDrops(logging.Filter):
    """Hide uvicorn's complaint about the connections we drop on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


_QUIET = _QuietDrops()


def _uvicorn_config(app: Any, log_level: str) -> uvicorn.Config:
    logging.getLogger("uvicorn.error").addFilter(_QUIET)  # idempotent: same filter object
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


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def run(
    host: str = "127.0.0.1",
    port: int = 8790,
    config: EmulatorConfig | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the emulator in the foreground until interrupted; prints the base URL first."""
    sock = _bind(host, port)
    print(f"falq fal emulator listening on {_url(host, sock)}", flush=True)
    server = uvicorn.Server(_uvicorn_config(create_app(config), log_level))
    server.run(sockets=[sock])


class EmulatorServer:
    """The emulator on a free port in a background thread, for tests and benchmarks.

    Parameters:
        config: a full :class:`EmulatorConfig` (default: defaults), updated with ``overrides``.
        host: interface to bind (default 127.0.0.1).
        port: 0 picks a free port.
        **overrides: any :class:`EmulatorConfig` field, e.g. ``latency="0"``.

    Attributes: ``url`` (base URL, no trailing slash), ``emulator`` (the engine; only touch it
    from the server loop), ``app``.

    Example::

        with EmulatorServer(latency="fixed:0.2", fail_429=0.1, fault_seed=3) as emu:
            ...  # point a client at emu.url
            emu.configure(fail_429=0)
            data = emu.requests(since=t0)
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        **overrides: Any,
    ) -> None:
        base = config or EmulatorConfig()
        self.config = base.updated(overrides) if overrides else base
        self.host = host
        self.port = port
        self.log_level = log_level
        self.app = create_app(self.config)
        self.emulator = self.app.state.emulator
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 10.0) -> EmulatorServer:
        """Start serving; returns once the server accepts connections."""
        sock = _bind(self.host, self.port)
        self.url = _url(self.host, sock)
        self._server = uvicorn.Server(_uvicorn_config(self.app, self.log_level))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="falq-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("emulator failed to start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- conveniences over the admin routes (thread-safe: they go through HTTP) ---

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Partially update the running config (``POST /_emulator/config``)."""
        resp = httpx.post(f"{self.url}/_emulator/config", json=changes, timeout=10)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def requests(self, since: float | None = None) -> dict[str, Any]:
        """``GET /_emulator/requests`` as a dict."""
        params = {"since": str(since)} if since is not None else None
        resp = httpx.get(f"{self.url}/_emulator/requests", params=params, timeout=30)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def reset(self) -> None:
        httpx.post(f"{self.url}/_emulator/reset", timeout=10).raise_for_status()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="falq emulator",
        description="Offline emulator of fal's queue API for the Qwen-Image-2 endpoints.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8790, help="0 picks a free port")
    p.add_argument("--latency", default="fixed:1", help="0 | N | fixed:N | uniform:LO,HI | lognormal:MU,SIGMA")
    p.add_argument("--concurrency", type=int, default=40, help="max IN_PROGRESS per key (0 = unlimited)")
    p.add_argument("--log-steps", type=int, default=5)
    p.add_argument("--keys", default=None, help="comma-separated accepted keys (default: any non-empty key)")
    p.add_argument("--locked-keys", default="", help="comma-separated keys answered 402 on submit")
    for name in ("fail-5xx", "fail-429", "drop", "slow", "completed-error"):
        p.add_argument(f"--{name}", type=float, default=0.0, help="rate in [0,1]")
    p.add_argument("--slow-s", type=float, default=2.0)
    p.add_argument("--fault-seed", type=int, default=None)
    p.add_argument("--tiny-images", action="store_true", help="render at most 64x64 px (benchmarks)")
    p.add_argument("--public-url", default=None, help="base URL to put in returned URLs")
    p.add_argument("--log-level", default="warning")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    return EmulatorConfig(
        latency=args.latency,
        concurrency=args.concurrency,
        log_steps=args.log_steps,
        accepted_keys=split(args.keys) if args.keys else None,
        locked_keys=split(args.locked_keys),
        fail_5xx=args.fail_5xx,
        fail_429=args.fail_429,
        drop=args.drop,
        slow=args.slow,
        completed_error=args.completed_error,
        slow_s=args.slow_s,
        fault_seed=args.fault_seed,
        tiny_images=args.tiny_images,
        public_url=args.public_url,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry (``python -m emulator`` / ``falq emulator``). Returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        print(f"invalid emulator settings: {exc}", file=sys.stderr)
        return 2
    try:
        run(args.host, args.port, config, args.log_level)
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
