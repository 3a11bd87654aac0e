"""Mirror latency: from fal marking a request COMPLETED to the image being in S3.

1 MP PNGs (1024x1024, real rendered images, not tiny ones), latencies spread uniformly so
completions arrive over several seconds instead of all at once. falq's figure per job is
``record.timestamps["completed"]`` (written after the S3 upload was verified) minus the
emulator's ``completed_at`` for that request. Reference 2 (fal-client script) gets the
same jobs; its figure is completion to result in hand (it copies nothing), so the ratio
shows what falq's download + upload + record write add to merely noticing completion.
"""

from __future__ import annotations

import time

from falq.ops.bench import references as ref
from falq.ops.bench.harness import Harness
from falq.ops.bench.model import REF_FAL_CLIENT, Goal, Row, percentile

NAME = "mirror"
PAYLOAD = {"image_size": {"width": 1024, "height": 1024}, "output_format": "png"}


def _by_request(h: Harness, since: float) -> dict[str, float]:
    return {r["request_id"]: r["completed_at"] for r in h.emulator_requests(since) if r.get("completed_at")}


def run(h: Harness) -> list[Row]:
    n, lo, hi = (30, 0.5, 3.0) if h.quick else (150, 1.0, 16.0)
    emulator = {"latency": f"uniform:{lo:g},{hi:g}", "tiny_images": False, "render_cache_size": 4 * n}
    note = f"{n} jobs, 1024x1024 PNG, latency uniform {lo:g}-{hi:g}s" + (" (quick: scaled down)" if h.quick else "")

    h.reset(**emulator)
    falq = h.falq()
    h.start_falq_workers(1, 200)
    since = time.time() - 1
    ids = h.enqueue(n, "mirror", PAYLOAD)
    h.wait_until(lambda: h.completed() >= n, hi * 3 + 120, 0.2, f"{n} mirror jobs")
    fal_done = _by_request(h, since)
    recs = [r for r in falq.store.get_many(ids) if r is not None and r.request_id in fal_done]
    lat = [r.timestamps["completed"] - fal_done[r.request_id] for r in recs]
    size = recs[0].outputs[0].size if recs and recs[0].outputs else 0

    h.reset(**emulator)
    since = time.time() - 1
    doc = ref.fal_client_run(h, n, n, payload=PAYLOAD)
    fal_done = _by_request(h, since)
    ref_lat = [r["done_at"] - fal_done[r["request_id"]] for r in doc["results"] if r["request_id"] in fal_done]
    note += f", {size / 1e3:.0f} KB each" if size else ""
    return [
        Row(NAME, "COMPLETED to in S3, p50", "ms", percentile(lat, 50) * 1000, percentile(ref_lat, 50) * 1000,
            REF_FAL_CLIENT, Goal("falq", "<", 150), note + "; reference: to result in hand"),
        Row(NAME, "COMPLETED to in S3, p99", "ms", percentile(lat, 99) * 1000, percentile(ref_lat, 99) * 1000,
            REF_FAL_CLIENT, None),
    ]
