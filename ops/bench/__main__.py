"""``python -m falq.ops.bench`` (and ``falq bench``): run the scenarios, print the table, draw the chart.

Options: ``--quick`` (scaled down, about eight minutes on 2 cores), ``--only SCENARIO`` (repeatable),
``--out docs/bench.png``, ``--json PATH``. Exit status 0 when every goal checked was
met, 1 when one was missed. The command is :data:`falq.ops.bench.cli.bench`.
"""

from falq.ops.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
