"""Chain: a 2-level pipeline (generates, each edited several times from its own output).

falq: one batch of ``n`` generates and ``n * edits`` edits whose ``image_urls`` is
``falq:LINE_ID#0`` (:mod:`falq.shared.batches.chains`), enqueued at once; each edit waits (no
worker slot, no message) until its generate completed and its image is in S3, then runs on
the presigned S3 copy. Measured: from the enqueue to the last edit in S3.

Two configurations of the emulator, each at the same fixed latency ``L``:

* **fal's concurrency** (the emulator's default, 40 requests in progress per key, the top of
  fal's 2..40; falq at its default ``FALQ_MAX_OUTSTANDING`` of 44). 500 jobs of ``L`` on 40
  slots need at least ``max(2 * L, 500 * L / 40)``: that bound is the critical path the goal
  (falq within 1.1x) is measured against. A chain costs a fal slot nothing while it waits, so
  the question is whether falq keeps fal's slots busy while the children are released.
* **No cap**: every job can run at once, so the critical path is ``2 * L``. Here the run is
  bound by how fast this machine pushes 500 jobs through submit, follow and the S3 copy while
  the emulator and the S3 stand-in share its cores; the CPU seconds of falq's workers, of this
  process (the emulator and the S3 stand-in run in it) and of Redis are reported beside it.

References in the same run: the chain of one generate and one edit through falq alone, and
the fal-client chain script (:mod:`falq.ops.bench.falclient_chain`), which waits for each
generate and then submits its edits with the generated URL (no S3 copy, no durability).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from falq.ops.bench.harness import Harness, children, cpu_s
from falq.ops.bench.model import REF_FAL_CLIENT, Goal, Row, percentile
from falq.testing.stack import ROOT

NAME = "chain"
WORKERS, CONCURRENCY = 2, 500
#: The emulator's default concurrency (fal's top tier) and falq's default cap above it.
FAL_CONCURRENCY, MAX_OUTSTANDING = 40, 44
EDIT = "fal-ai/qwen-image-2/edit"
T2I = "fal-ai/qwen-image-2/text-to-image"


def _falq_run(h: Harness, n: int, edits: int, *, tag: str = "",
              env: dict[str, str] | None = None) -> tuple[float, dict[str, float]]:
    from dataclasses import replace

    from falq.producers.bulk.batches import enqueue_batch, open_batch
    from falq.producers.bulk.parse import BulkLine

    falq = h.falq()
    lines: list[BulkLine] = []
    for i in range(n):
        gen = falq.validate(T2I, {"prompt": f"chain root {i}", "seed": i}, lane="bulk")
        lines.append(BulkLine(len(lines) + 1, f"g{i}", replace(gen, idempotency_key=f"bench-g{i}")))
        for k in range(edits):
            ed = falq.validate(EDIT, {"prompt": f"edit {i}.{k}", "image_urls": [f"falq:g{i}#0"]}, lane="bulk")
            lines.append(BulkLine(len(lines) + 1, f"e{i}.{k}", replace(ed, idempotency_key=f"bench-e{i}.{k}")))
    if not h.stack.workers:
        h.start_falq_workers(WORKERS, CONCURRENCY, env=env)
    lines = [replace(ln, request=replace(ln.request, idempotency_key=f"{tag}{ln.request.idempotency_key}"))
             for ln in lines]
    workers = [c for p in h.stack.workers for c in children(p.pid)]
    redis_pid = h.stack.redis.proc.pid if h.stack.redis.proc else None
    cpu0 = (cpu_s(workers), cpu_s([os.getpid()]), cpu_s([redis_pid] if redis_pid else []))
    t0 = time.time()
    batch, _ = open_batch(falq, name="bench chain", source_name="bench", source_sha256="0" * 64,
                          run_key=f"bench{tag}")
    ids = enqueue_batch(falq, lines, batch)
    total = len(ids)
    base = h.completed()
    h.wait_until(lambda: h.completed() >= base + total, 120 + total / 5, 0.05, f"{total} chained jobs")
    cpu1 = (cpu_s(workers), cpu_s([os.getpid()]), cpu_s([redis_pid] if redis_pid else []))
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
              "generates_done_max_s": max(roots), "cpu_workers_s": cpu1[0] - cpu0[0],
              "cpu_testbed_s": cpu1[1] - cpu0[1], "cpu_redis_s": cpu1[2] - cpu0[2]}
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
    jobs = n * (1 + edits)
    note = f"{n} generates x {edits} edits, latency {latency:g}s, {WORKERS} workers x {CONCURRENCY}"

    # At fal's concurrency: the goal.
    capped = {"latency": f"fixed:{latency}", "concurrency": FAL_CONCURRENCY}
    cap_env = {"FALQ_MAX_OUTSTANDING": str(MAX_OUTSTANDING)}
    h.reset(**capped)
    cap_script = _script_run(h, n, edits)
    h.reset(**capped)
    cap_s, cd = _falq_run(h, n, edits, tag="cap-", env=cap_env)
    bound = max(2 * latency, jobs * latency / FAL_CONCURRENCY)
    cap_note = (f"{note}; emulator at {FAL_CONCURRENCY} in progress per key (its default), falq "
                f"FALQ_MAX_OUTSTANDING={MAX_OUTSTANDING} (its default)")

    # No cap: the machine's bound.
    h.reset(latency=f"fixed:{latency}")
    script = _script_run(h, n, edits)
    h.reset(latency=f"fixed:{latency}")
    single_s, _ = _falq_run(h, 1, 1, tag="single-")  # one generate -> one edit, nothing else running
    falq_s, d = _falq_run(h, n, edits)
    critical = 2 * latency
    detail = (f"; a link (parent in S3 -> child queued) p50 {d['release_p50_ms']:.0f} ms, "
              f"p90 {d['release_p90_ms']:.0f} ms; parent in S3 -> child at fal p50 "
              f"{d['link_to_submit_p50_ms']:.0f} ms; generates done p50 {d['generates_done_p50_s']:.1f}s, "
              f"last {d['generates_done_max_s']:.1f}s; CPU during the run: falq workers "
              f"{d['cpu_workers_s']:.1f}s, emulator + S3 stand-in {d['cpu_testbed_s']:.1f}s, "
              f"Redis {d['cpu_redis_s']:.1f}s")
    return [
        Row(NAME, f"wall time vs critical path at fal's concurrency ({FAL_CONCURRENCY})", "s", cap_s, bound,
            f"max(2L, {jobs}L/{FAL_CONCURRENCY})", Goal("ratio", "<=", 1.1),
            cap_note + f"; enqueue to the last edit in S3; a link p50 {cd['release_p50_ms']:.0f} ms",
            extra=dict(cd)),
        Row(NAME, f"fal-client chain script at fal's concurrency ({FAL_CONCURRENCY})", "s", cap_script, bound,
            f"max(2L, {jobs}L/{FAL_CONCURRENCY})", None, cap_note + "; the reference script on the same emulator"),
        Row(NAME, "wall time vs critical path, no cap (2 x latency)", "s", falq_s, critical, "critical path", None,
            note + "; no concurrency cap: bound by this machine pushing 500 jobs through submit, follow and "
            "the S3 copy beside the emulator and the S3 stand-in (CPU below)" + detail, extra=dict(d)),
        Row(NAME, "wall time vs one generate -> edit alone", "s", falq_s, single_s, "1x1 chain (falq)", None,
            note + "; no cap; reference: the same chain of one generate and one edit through falq, alone"),
        Row(NAME, "wall time vs fal-client chain script, no cap", "s", falq_s, script, REF_FAL_CLIENT, None,
            note + "; the script waits for each generate, then submits its edits (no S3 copy)"),
    ]
