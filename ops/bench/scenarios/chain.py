"""Chain: a 2-level pipeline (generates, each edited several times from its own output).

falq: one batch of ``n`` generates and ``n * edits`` edits whose ``image_urls`` is
``falq:LINE_ID#0`` (:mod:`falq.shared.chains`), enqueued at once; each edit waits (no
worker slot, no message) until its generate completed and its image is in S3, then runs on
the presigned S3 copy. Measured: from the enqueue to the last edit in S3.

References, in the same run at the same emulator latency ``L`` (fixed, no concurrency cap):

* the critical path, ``2 * L`` (one generate, then one edit): the goal is falq within 1.1x;
* the fal-client chain script (:mod:`falq.ops.bench.falclient_chain`): waits for each
  generate, then submits its edits with the generated URL (no S3 copy, no durability).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from falq.ops.bench.harness import Harness
from falq.ops.bench.model import REF_FAL_CLIENT, Goal, Row, percentile
from falq.ops.stack import ROOT

NAME = "chain"
WORKERS, CONCURRENCY = 2, 500
EDIT = "fal-ai/qwen-image-2/edit"
T2I = "fal-ai/qwen-image-2/text-to-image"


def _falq_run(h: Harness, n: int, edits: int, *, tag: str = "") -> tuple[float, dict[str, float]]:
    from dataclasses import replace

    from falq.producers.batches import enqueue_batch, open_batch
    from falq.producers.bulk_parse import BulkLine

    falq = h.falq()
    lines: list[BulkLine] = []
    for i in range(n):
        gen = falq.validate(T2I, {"prompt": f"chain root {i}", "seed": i}, lane="bulk")
        lines.append(BulkLine(len(lines) + 1, f"g{i}", replace(gen, idempotency_key=f"bench-g{i}")))
        for k in range(edits):
            ed = falq.validate(EDIT, {"prompt": f"edit {i}.{k}", "image_urls": [f"falq:g{i}#0"]}, lane="bulk")
            lines.append(BulkLine(len(lines) + 1, f"e{i}.{k}", replace(ed, idempotency_key=f"bench-e{i}.{k}")))
    if not h.stack.workers:
        h.start_falq_workers(WORKERS, CONCURRENCY)
    lines = [replace(ln, request=replace(ln.request, idempotency_key=f"{tag}{ln.request.idempotency_key}"))
             for ln in lines]
    t0 = time.time()
    batch, _ = open_batch(falq, name="bench chain", source_name="bench", source_sha256="0" * 64,
                          run_key=f"bench{tag}")
    ids = enqueue_batch(falq, lines, batch)
    total = len(ids)
    base = h.completed()
    h.wait_until(lambda: h.completed() >= base + total, 120 + total / 5, 0.05, f"{total} chained jobs")
    recs = [r for r in falq.store.get_many(ids) if r is not None]
    failed = [r for r in recs if r.state != "completed"]
    if failed:
        raise RuntimeError(f"bench chain: {len(failed)} job(s) did not complete: {failed[0].errors}")
    by_id = {r.id: r for r in recs}
    # The cost of a link: from the parent's completion (image in S3) to the child being queued,
    # and to the child's submission at fal.
    release = [r.timestamps["queued"] - max(by_id[p].timestamps["completed"] for p in r.parents)
               for r in recs if r.parents]
    submit = [r.submitted_at - max(by_id[p].timestamps["completed"] for p in r.parents)
              for r in recs if r.parents and r.submitted_at]
    roots = [r.timestamps["completed"] - t0 for r in recs if not r.parents]
    detail = {"release_p50_ms": percentile(release, 50) * 1000, "release_p90_ms": percentile(release, 90) * 1000,
              "link_to_submit_p50_ms": percentile(submit, 50) * 1000, "generates_done_p50_s": percentile(roots, 50),
              "generates_done_max_s": max(roots)}
    return max(r.timestamps["completed"] for r in recs) - t0, detail


def _script_run(h: Harness, n: int, edits: int) -> float:
    out = h.stack.workdir / f"fal-client-chain-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "falq.ops.bench.falclient_chain", "--url", h.stack.emu.url, "--n", str(n),
            "--edits", str(edits), "--out", str(out)]
    subprocess.run(argv, cwd=ROOT, env=h.env(), check=True, timeout=600, stdout=subprocess.DEVNULL)
    doc = json.loads(out.read_text())
    return float(max(r["done_at"] for r in doc["results"]) - doc["started"])


def run(h: Harness) -> list[Row]:
    n, edits = h.size("chain.generates", 100, 100), h.size("chain.edits", 4, 4)
    latency = 3.0 if h.quick else 5.0
    note = f"{n} generates x {edits} edits, latency {latency:g}s, {WORKERS} workers x {CONCURRENCY}"
    h.reset(latency=f"fixed:{latency}")
    script = _script_run(h, n, edits)
    h.reset(latency=f"fixed:{latency}")
    single_s, _ = _falq_run(h, 1, 1, tag="single-")  # one generate -> one edit, nothing else running
    falq_s, d = _falq_run(h, n, edits)
    critical = 2 * latency
    detail = (f"; a link (parent in S3 -> child queued) p50 {d['release_p50_ms']:.0f} ms, "
              f"p90 {d['release_p90_ms']:.0f} ms; parent in S3 -> child at fal p50 "
              f"{d['link_to_submit_p50_ms']:.0f} ms; generates done p50 {d['generates_done_p50_s']:.1f}s, "
              f"last {d['generates_done_max_s']:.1f}s")
    return [
        Row(NAME, "wall time vs critical path (2 x latency)", "s", falq_s, critical, "critical path",
            Goal("ratio", "<=", 1.1), note + "; enqueue to the last edit in S3" + detail, extra=dict(d)),
        Row(NAME, "wall time vs one generate -> edit alone", "s", falq_s, single_s, "1x1 chain (falq)", None,
            note + "; reference: the same chain of one generate and one edit through falq, alone"),
        Row(NAME, "wall time vs fal-client chain script", "s", falq_s, script, REF_FAL_CLIENT, None,
            note + "; the script waits for each generate, then submits its edits (no S3 copy)"),
    ]
