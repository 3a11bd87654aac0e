"""The worker's command line: ``falq worker`` and ``python -m falq.workers`` run this :data:`command`.

gevent must patch the standard library before anything opens a socket. ``python -m
falq.workers`` (:mod:`falq.workers.__main__`) patches first and then runs :data:`command`;
``falq worker`` runs the same command in the CLI's process, which is not patched, so there
the command checks its options and then replaces the process with ``python -m
falq.workers`` and the same options (a fresh, patched interpreter). This module imports
only click until the worker starts.

Example::

    falq worker --concurrency 500 --lanes bulk
    python -m falq.workers -c 500 --lanes bulk -l INFO
"""

from __future__ import annotations

import os
import sys

import click

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command

LANES = ("interactive", "bulk")


def _lanes(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    lanes = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in lanes if x not in LANES]
    if bad:
        raise click.BadParameter(f"unknown lane(s) {', '.join(bad)}; use interactive and/or bulk")
    return lanes


@click.command(name="worker", context_settings=HELP_OPTIONS)
@click.option("--concurrency", "-c", type=int, default=None,
              help="jobs in flight per process (default FALQ_WORKER_CONCURRENCY)")
@click.option("--lanes", default="interactive,bulk", callback=_lanes,
              help="lanes to consume, in priority order (default interactive,bulk)")
@click.option("--loglevel", "-l", default="INFO", show_default=True, help="log level")
@click.option("--hostname", "-n", default=None, help="Celery node name (default falq@HOST; %h is the host)")
def command(concurrency: int | None, lanes: list[str], loglevel: str, hostname: str | None) -> int:
    """Run a falq worker (Celery, gevent pool)."""
    if not _gevent_patched():
        argv = ["--lanes", ",".join(lanes), "--loglevel", loglevel]
        argv += ["--concurrency", str(concurrency)] if concurrency is not None else []
        argv += ["--hostname", hostname] if hostname is not None else []
        # A fresh interpreter: gevent must patch the standard library before falq is imported.
        os.execvp(sys.executable, [sys.executable, "-m", "falq.workers", *argv])
        return 1  # not reached
    return _run(concurrency, lanes, loglevel, hostname)


def main(argv: list[str] | None = None) -> int:
    """Run :data:`command` on ``argv`` (``python -m falq.workers``); returns the exit code."""
    return run_command(command, argv, prog_name="python -m falq.workers")


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def _run(concurrency: int | None, lanes: list[str], loglevel: str, hostname: str | None) -> int:
    import socket

    from falq.shared.logs import setup_logging
    from falq.shared.settings import get_settings
    from falq.workers.app import app
    from falq.workers.signals import install

    settings = get_settings()
    setup_logging(loglevel, settings)
    concurrency = concurrency or settings.worker_concurrency
    _raise_fd_limit(concurrency)
    queues = [settings.queue_interactive if x == "interactive" else settings.queue_bulk for x in lanes]
    if settings.catalogue:  # an outdated catalogue schema stops the worker here, naming `falq db upgrade`
        from falq.workers.maintenance.archive import check_catalogue

        problem = check_catalogue(settings)
        if problem:
            click.echo(f"error: {problem}", err=True)
            return 2
    install()
    app.worker_main([
        "worker", "-P", "gevent", "-c", str(concurrency), "-Q", ",".join(queues), "-E",
        "-n", hostname or f"falq@{socket.gethostname()}", "-l", loglevel, "--without-mingle", "--without-gossip",
    ])
    return 0


def _raise_fd_limit(concurrency: int) -> None:
    import resource

    # Each job waiting on fal holds one socket (the SSE stream); raise the soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, concurrency * 3 + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
