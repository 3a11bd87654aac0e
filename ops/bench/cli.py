"""The benchmarks' command: ``falq bench`` and ``python -m falq.ops.bench`` run :data:`bench`.

Runs the scenarios, prints the table, draws the chart. Options: ``--quick`` (scaled down,
about eight minutes on a 2-core machine), ``--only SCENARIO`` (repeatable), ``--out docs/bench.png``, ``--json
PATH``. Exit status 0 when every goal checked was met, 1 when one was missed.

Kept light: importing it costs only click, so the CLI's start-up does not pay for the
harness until the command runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command

if TYPE_CHECKING:
    from falq.ops.bench.model import Row

#: The scenarios in the order of a full run: the names of
#: :data:`falq.ops.bench.scenarios.SCENARIOS`, written out so ``--help`` and the option's
#: check need not import the harness (a test keeps the two equal).
SCENARIO_NAMES = ("overhead", "inflight", "saturation", "mirror", "limiter", "enqueue", "cost", "connections",
                  "recovery", "chain", "fairness", "profile")


@click.command(name="bench", context_settings=HELP_OPTIONS)
@click.option("--quick", is_flag=True, help="Scaled-down run, about eight minutes on 2 cores.")
@click.option("--only", multiple=True, type=click.Choice(SCENARIO_NAMES), metavar="SCENARIO",
              help=f"Run only this scenario (repeatable): {', '.join(SCENARIO_NAMES)}.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG chart  [default: docs/bench.png]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the rows as JSON.")
def bench(quick: bool, only: tuple[str, ...], out: Path | None, json_path: Path | None) -> int:
    """Benchmark falq beside Celery, fal-client and naive Celery on a local stack; print a table, draw a chart."""
    import platform
    from datetime import UTC, datetime

    from falq.ops.bench import report
    from falq.testing.stack import ROOT

    out = out or ROOT / "docs" / "bench.png"
    t0 = time.monotonic()
    rows = run(quick, list(only) or None)
    took = time.monotonic() - t0
    command = "python -m falq.ops.bench" + (" --quick" if quick else "") + "".join(f" --only {o}" for o in only)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"falq bench ({'quick' if quick else 'full'}) {stamp}, {platform.node()}, took {took:.0f}s"
    print(f"{title}\ncommand: {command}\n")
    print(report.table(rows))
    report.chart(out, rows, title)
    print(f"\nchart: {out}")
    if json_path:
        report.write_json(json_path, rows, {"command": command, "quick": quick, "took_s": took, "at": stamp})
        print(f"json: {json_path}")
    return 1 if any(r.met is False for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m falq.ops.bench``: run :data:`bench` on ``argv``; returns the exit code."""
    return run_command(bench, argv, prog_name="python -m falq.ops.bench")


def run(quick: bool, only: list[str] | None = None) -> list[Row]:
    """Start the stack, run the chosen scenarios in order, return all rows."""
    from falq.ops.bench.harness import Harness
    from falq.ops.bench.scenarios import SCENARIOS
    from falq.testing.stack import DevStack

    names = only or list(SCENARIOS)
    rows: list[Row] = []
    with DevStack() as stack:
        h = Harness(stack, quick=quick)
        try:
            for name in names:
                t0 = time.monotonic()
                print(f"bench: {name} ...", file=sys.stderr, flush=True)
                rows += SCENARIOS[name](h)
                print(f"bench: {name} took {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
        finally:
            h.stop_all()
    return rows
