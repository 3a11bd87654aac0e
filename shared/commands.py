"""Running a module's click command as a function that returns its exit code.

Each falq module with a command line (the worker, the emulator, the gateway, Flower, the
metrics exporter, the demo, the benchmarks) defines one :class:`click.Command`. The
``falq`` CLI registers that same object as a subcommand, and the module's ``main(argv)``
(its ``python -m`` entry point) runs it through :func:`run`, which returns what the
command returned instead of exiting: click's standalone mode always exits 0 after a
command returns.

Example::

    command = click.command(name="emulator")(_serve)

    def main(argv: list[str] | None = None) -> int:
        return run(command, argv)

    if __name__ == "__main__":
        sys.exit(main())
"""

from __future__ import annotations

import click

#: ``-h`` works as well as ``--help`` (as with argparse, and as in the ``falq`` group).
HELP_OPTIONS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
#: Exit code after Ctrl-C (128 + SIGINT), as the ``falq`` CLI uses.
EXIT_INTERRUPTED = 130


def run(command: click.Command, argv: list[str] | None = None, prog_name: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run ``command``; returns the exit code.

    Usage errors print click's message and return 2; ``--help`` prints and returns 0; a
    callback's integer result is the exit code (``None`` is 0).
    """
    try:
        result = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def verbatim(doc: str) -> str:
    """A module docstring as click help that keeps its line breaks (argparse's raw description).

    The first paragraph stays wrappable (it is also the short help); every later paragraph
    gets click's ``\\b`` marker, so tables and examples print as written.
    """
    first, *rest = doc.strip().split("\n\n")
    return "\n\n".join([first, *(f"\b\n{p}" for p in rest)])
