"""Serving the emulator: a blocking :func:`run`, a background :class:`EmulatorServer`, the CLI.

uvicorn runs with uvloop and httptools when installed and the access log off, so the
emulator is never the bottleneck of a benchmark. Images are realistic-size by default
(about 1.7 MB per 1 MP PNG, ~0.13 s to render); ``--small-images`` brings back the flat
ones and ``--tiny-images`` 64-pixel ones when transfer size does not matter.

Example::

    with EmulatorServer(latency="0", concurrency=2) as emu:
        httpx.post(f"{emu.url}/fal-ai/qwen-image-2/text-to-image", json={"prompt": "fox"},
                   headers={"Authorization": "Key test"})
        emu.requests()["peak_in_flight"]
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import httpx
import uvicorn

from falq.emulator.app import create_app
from falq.emulator.config import EmulatorConfig
from falq.shared.asgi import BackgroundServer, base_url, bind, uvicorn_config


class _QuietDrops(logging.Filter):
    """Hide uvicorn's complaint about the connections we drop on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


_QUIET = _QuietDrops()


def _uvicorn_config(app: Any, log_level: str) -> uvicorn.Config:
    logging.getLogger("uvicorn.error").addFilter(_QUIET)  # idempotent: same filter object
    return uvicorn_config(app, log_level)


def run(
    host: str = "127.0.0.1",
    port: int = 8790,
    config: EmulatorConfig | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the emulator in the foreground until interrupted; prints the base URL first."""
    sock = bind(host, port)
    print(f"falq fal emulator listening on {base_url(host, sock)}", flush=True)
    server = uvicorn.Server(_uvicorn_config(create_app(config), log_level))
    server.run(sockets=[sock])


class EmulatorServer(BackgroundServer):
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
        super().__init__(create_app(self.config), host=host, port=port, log_level=log_level, name="falq-emulator")
        logging.getLogger("uvicorn.error").addFilter(_QUIET)  # the drops are on purpose
        self.emulator = self.app.state.emulator

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
    p.add_argument("--log-steps", type=int, default=12, help="'step i/N' log lines per request")
    p.add_argument("--keys", default=None, help="comma-separated accepted keys (default: any non-empty key)")
    p.add_argument("--locked-keys", default="", help="comma-separated keys refused as locked on submit")
    p.add_argument("--locked-status", type=int, default=403, choices=(402, 403),
                   help="status of the locked-account answer (403 live, 402 legacy)")  # fmt: skip
    for name in ("fail-5xx", "fail-429", "drop", "slow", "completed-error", "submit-500-created", "moderation-rate"):
        p.add_argument(f"--{name}", type=float, default=0.0, help="rate in [0,1]")
    p.add_argument("--slow-s", type=float, default=2.0)
    p.add_argument("--fault-seed", type=int, default=None)
    p.add_argument("--tiny-images", action="store_true", help="render at most 64x64 px (benchmarks)")
    p.add_argument("--small-images", action="store_true",
                   help="flat backgrounds (~25 KB per 1 MP PNG) instead of realistic-size textured ones")  # fmt: skip
    p.add_argument("--stream-mode", choices=("live", "legacy"), default="live",
                   help="status stream: live (events on change, ': ping') or legacy (frames every 1 s)")  # fmt: skip
    p.add_argument("--stream-heartbeat-s", type=float, default=15.0, help="seconds between ': ping' comments")
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
        locked_status=args.locked_status,
        fail_5xx=args.fail_5xx,
        fail_429=args.fail_429,
        drop=args.drop,
        slow=args.slow,
        completed_error=args.completed_error,
        submit_500_created=args.submit_500_created,
        moderation_rate=args.moderation_rate,
        slow_s=args.slow_s,
        fault_seed=args.fault_seed,
        tiny_images=args.tiny_images,
        small_images=args.small_images,
        stream_mode=args.stream_mode,
        stream_heartbeat_s=args.stream_heartbeat_s,
        public_url=args.public_url,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry (``python -m falq.emulator`` / ``falq emulator``). Returns the exit code."""
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
