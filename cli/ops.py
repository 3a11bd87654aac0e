"""Operations commands of the ``falq`` CLI: ``falq top`` and ``falq metrics``.

Example::

    falq top --once
    FALQ_METRICS_TOKEN=s3cret falq metrics --port 9808
"""

from __future__ import annotations

import click

from falq.cli.output import EXIT_UNAVAILABLE, handle_errors

_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.command()
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@handle_errors
def top(once: bool, interval: float) -> int:
    """Live view: jobs/min, states, latency percentiles, outstanding at fal vs cap, spend today."""
    import redis

    from falq.cli.output import stdout
    from falq.ops.top import run
    from falq.shared.settings import get_settings

    try:
        return run(get_settings(), once=once, interval=interval, console=stdout() if once else None)
    except redis.RedisError as exc:
        click.echo(f"error: Redis unreachable ({type(exc).__name__})", err=True)
        return EXIT_UNAVAILABLE


@click.command(context_settings=_PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def metrics(args: tuple[str, ...]) -> int:
    """Serve falq's Prometheus metrics (auth on by default; see ``falq metrics --help``)."""
    from falq.ops.exporter import main as exporter_main

    return exporter_main(list(args))
