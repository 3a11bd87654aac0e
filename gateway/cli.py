"""``falq api``: the click command the ``falq`` CLI registers (arguments go to :func:`falq.gateway.server.main`).

Example::

    FALQ_API_KEYS=k1 falq api --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
               add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def api(args: tuple[str, ...]) -> int:
    """Serve falq over HTTP: fal's queue protocol + falq's REST API (try `falq api --help`)."""
    from falq.gateway.server import main

    return main(list(args))
