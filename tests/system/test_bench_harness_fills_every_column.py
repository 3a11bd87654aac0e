"""The benchmark harness end to end on its cheapest scenario (``falq bench --only enqueue``).

Runs the real ``falq bulk`` command and the Celery reference on a fresh local stack with a
few hundred lines, then checks the table, chart and JSON are complete: every row has a
positive falq figure, a positive reference figure and their ratio. Goals are not
asserted: timings on a shared machine are not a test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from falq.ops.bench import report
from falq.ops.bench.harness import Harness
from falq.ops.bench.scenarios import SCENARIOS
from falq.testing.stack import DevStack


def test_the_commands_scenario_names_are_the_scenarios() -> None:
    # `falq bench --only` checks (and `--help` lists) names without importing the harness.
    from falq.ops.bench.cli import SCENARIO_NAMES

    assert tuple(SCENARIOS) == SCENARIO_NAMES


@pytest.mark.timeout(180)
def test_enqueue_scenario_fills_every_column(tmp_path: Path) -> None:
    with DevStack(workdir=tmp_path / "stack") as stack:
        h = Harness(stack, quick=True, sizes={"enqueue.lines": 200})
        try:
            rows = SCENARIOS["enqueue"](h)
        finally:
            h.stop_all()
    assert rows and all(r.scenario == "enqueue" for r in rows)
    for r in rows:
        assert r.falq > 0 and r.reference > 0, r
        assert math.isfinite(r.ratio) and r.ratio > 0 and r.ref_name, r
    text = report.table(rows)
    assert "enqueue phase" in text and "celery no-op" in text and "x" in text
    png, doc = tmp_path / "bench.png", tmp_path / "bench.json"
    report.chart(png, rows, "test")
    report.write_json(doc, rows, {"command": "test"})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(doc.read_text())
    assert all(row["falq"] > 0 and row["reference"] > 0 and row["ratio"] > 0 for row in data["rows"])
