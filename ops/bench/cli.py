"""``falq bench``: the click face of :mod:`falq.ops.bench` (registered in ``falq.cli.main``).

Kept light: importing it costs only click, so the CLI's start-up does not pay for the
harness until the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Scaled-down run, under two minutes.")
@click.option("--only", multiple=True, metavar="SCENARIO",
              help="Run only this scenario (repeatable): overhead, inflight, saturation, mirror, limiter, "
              "enqueue, cost.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG chart  [default: docs/bench.png]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the rows as JSON.")
def bench(quick: bool, only: tuple[str, ...], out: Path | None, json_path: Path | None) -> None:
    """Benchmark falq beside Celery, fal-client and naive Celery on a local stack; print a table, draw a chart."""
    from falq.ops.bench.__main__ import main

    argv = (["--quick"] if quick else []) + [x for o in only for x in ("--only", o)]
    argv += (["--out", str(out)] if out else []) + (["--json", str(json_path)] if json_path else [])
    raise SystemExit(main(argv))
