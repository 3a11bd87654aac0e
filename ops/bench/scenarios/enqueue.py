"""Enqueue: ``falq bulk`` of a 10,000-line file (quick: 2,000), lines per second.

The real command runs in its own process (``python -m falq.cli bulk FILE --no-wait
--json``): it validates the whole file, then enqueues it with pipelined Redis writes
(job record, idempotency key, state index, one message per job). Reference 1's producer
side: a loop of ``apply_async`` publishing the same number of no-op Celery messages
(``python -m falq.ops.bench.noop_app N``), what a user without falq writes. No workers run.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from falq.ops.bench.harness import Harness
from falq.ops.bench.model import REF_NOOP, Row
from falq.testing.stack import ROOT


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


NAME = "enqueue"


def run(h: Harness) -> list[Row]:
    n = h.size("enqueue.lines", 2000, 10_000)
    note = f"{n} lines" + (" (quick: scaled down)" if h.quick else "")
    h.reset()
    path = h.stack.workdir / f"bench-{n}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"input": {"prompt": f"enqueue benchmark line {i}", "seed": i}}) + "\n")

    cpu0, t0 = _child_cpu(), time.monotonic()
    out = subprocess.run([sys.executable, "-m", "falq.cli", "bulk", str(path), "--no-wait", "--json"], cwd=ROOT,
                         env=h.env(), check=True, capture_output=True, text=True, timeout=300).stdout
    wall, cpu = time.monotonic() - t0, _child_cpu() - cpu0
    doc = json.loads(out[out.index("{"):])
    enqueue_s = float(doc["enqueue_s"])

    cpu0, t0 = _child_cpu(), time.monotonic()
    ref_out = subprocess.run([sys.executable, "-m", "falq.ops.bench.noop_app", str(n)], cwd=ROOT, env=h.env(),
                             check=True, capture_output=True, text=True, timeout=300).stdout
    ref_wall, ref_cpu = time.monotonic() - t0, _child_cpu() - cpu0
    publish_s = float(ref_out.strip().splitlines()[-1])
    return [
        Row(NAME, "enqueue phase", "lines/s", n / enqueue_s, n / publish_s, REF_NOOP, None,
            note + "; reference: apply_async loop"),
        Row(NAME, "whole command (validate + enqueue + start-up)", "lines/s", n / wall, n / ref_wall, REF_NOOP),
        Row(NAME, "producer CPU per line", "ms", cpu * 1000 / n, ref_cpu * 1000 / n, REF_NOOP),
    ]
