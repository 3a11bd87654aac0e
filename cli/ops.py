"""Operations commands of the ``falq`` CLI: ``falq top``.

(``falq metrics`` is :data:`falq.ops.exporter.command`, registered in :mod:`falq.cli.main`.)

Example::

    falq top --once
"""

from __future__ import annotations

import click

from falq.cli.output import EXIT_UNAVAILABLE, handle_errors


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

