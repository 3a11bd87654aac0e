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

import logging
import sys
from collections.abc import Callable
from typing import Any

import click
import httpx
import uvicorn

from falq.emulator.app import create_app
from falq.emulator.config import EmulatorConfig
from falq.shared.asgi import BackgroundServer, base_url, bind, uvicorn_config
from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command


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


_RATES = ("fail-5xx", "fail-429", "drop", "slow", "completed-error", "submit-500-created", "moderation-rate")


def _rate_options(fn: Callable[..., int]) -> Callable[..., int]:
    for name in reversed(_RATES):
        fn = click.option(f"--{name}", type=float, default=0.0, show_default=True, help="rate in [0,1]")(fn)
    return fn


@click.command(name="emulator", context_settings=HELP_OPTIONS)
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", type=int, default=8790, show_default=True, help="0 picks a free port")
@click.option("--latency", default="fixed:1", show_default=True,
              help="0 | N | fixed:N | uniform:LO,HI | lognormal:MU,SIGMA")
@click.option("--concurrency", type=int, default=40, show_default=True, help="max IN_PROGRESS per key (0 = unlimited)")
@click.option("--log-steps", type=int, default=12, show_default=True, help="'step i/N' log lines per request")
@click.option("--keys", default=None, help="comma-separated accepted keys (default: any non-empty key)")
@click.option("--locked-keys", default="", help="comma-separated keys refused as locked on submit")
@click.option("--locked-status", type=click.Choice(["402", "403"]), default="403", show_default=True,
              help="status of the locked-account answer (403 live, 402 legacy)")
@_rate_options
@click.option("--slow-s", type=float, default=2.0, show_default=True, help="seconds a --slow request is delayed")
@click.option("--fault-seed", type=int, default=None, help="seed of the fault draws (default: random)")
@click.option("--tiny-images", is_flag=True, help="render at most 64x64 px (benchmarks)")
@click.option("--small-images", is_flag=True,
              help="flat backgrounds (~25 KB per 1 MP PNG) instead of realistic-size textured ones")
@click.option("--stream-mode", type=click.Choice(["live", "legacy"]), default="live", show_default=True,
              help="status stream: live (events on change, ': ping') or legacy (frames every 1 s)")
@click.option("--stream-heartbeat-s", type=float, default=15.0, show_default=True,
              help="seconds between ': ping' comments")
@click.option("--public-url", default=None, help="base URL to put in returned URLs")
@click.option("--log-level", default="warning", show_default=True, help="uvicorn's log level")
def command(host: str, port: int, log_level: str, **options: Any) -> int:
    """Offline emulator of fal's queue API for the Qwen-Image-2 endpoints."""
    try:
        config = config_from_options(**options)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        print(f"invalid emulator settings: {exc}", file=sys.stderr)
        return 2
    try:
        run(host, port, config, log_level)
    except OSError as exc:
        print(f"cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def config_from_options(*, keys: str | None, locked_keys: str, locked_status: str, **options: Any) -> EmulatorConfig:
    """The :class:`EmulatorConfig` of the command's options (the ones named like its fields pass as they are)."""
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    return EmulatorConfig(
        accepted_keys=split(keys) if keys else None,
        locked_keys=split(locked_keys),
        locked_status=int(locked_status),
        **options,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m falq.emulator`` (``falq emulator`` runs :data:`command` itself). Returns the exit code."""
    return run_command(command, argv, prog_name="python -m falq.emulator")
