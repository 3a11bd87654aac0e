"""``python -m falq.ops.bench`` (and ``falq bench``): run the scenarios, print the table, draw the chart.

Options: ``--quick`` (scaled down, under two minutes), ``--only SCENARIO`` (repeatable),
``--out docs/bench.png``, ``--json PATH``. Exit status 0 when every goal checked was
met, 1 when one was missed.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from falq.ops.bench.model import Row
from falq.ops.stack import ROOT


def run(quick: bool, only: list[str] | None = None) -> list[Row]:
    """Start the stack, run the chosen scenarios in order, return all rows."""
    from falq.ops.bench.harness import Harness
    from falq.ops.bench.scenarios import SCENARIOS
    from falq.ops.stack import DevStack

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


def main(argv: list[str] | None = None) -> int:
    from falq.ops.bench import report
    from falq.ops.bench.scenarios import SCENARIOS

    p = argparse.ArgumentParser(prog="python -m falq.ops.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="scaled-down run, under two minutes")
    p.add_argument("--only", action="append", choices=list(SCENARIOS), metavar="SCENARIO",
                   help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench.png", help="PNG chart (default docs/bench.png)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    a = p.parse_args(argv)

    t0 = time.monotonic()
    rows = run(a.quick, a.only)
    took = time.monotonic() - t0
    command = ("python -m falq.ops.bench" + (" --quick" if a.quick else "")
               + "".join(f" --only {o}" for o in a.only or []))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"falq bench ({'quick' if a.quick else 'full'}) {stamp}, {platform.node()}, took {took:.0f}s"
    print(f"{title}\ncommand: {command}\n")
    print(report.table(rows))
    report.chart(a.out, rows, title)
    print(f"\nchart: {a.out}")
    if a.json:
        report.write_json(a.json, rows, {"command": command, "quick": a.quick, "took_s": took, "at": stamp})
        print(f"json: {a.json}")
    return 1 if any(r.met is False for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
