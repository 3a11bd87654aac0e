"""The web console's gallery: one page of 60 thumbnails, timed as a browser loads it.

``python -m falq.ops.bench.console`` (``--jobs 60``): a DevStack with realistic 1024x1024 PNGs
from the emulator (about 1.7 MB each), one worker, 60 completed jobs, the gateway on a free
port, signed in through the console's own form. A "page view" is the gallery's HTML plus every
thumbnail it names, fetched over 6 connections at once (what Chromium opens per host on
HTTP/1.1). Timed, in the same run:

* **first view** -- every thumbnail is made from its S3 copy (Pillow) and stored in S3;
* **S3-cached** -- the gateway's memory cache emptied (a restart, another replica): thumbnails
  come from S3, none is made again;
* **warm** -- a repeated view: thumbnails from the gateway's memory;
* **reference** -- the same page with the 60 full images instead of thumbnails (what a
  gallery without thumbnails would load).

The goal is a page of 60 under 1 s once the thumbnails exist (S3-cached and warm). The
figure is the median of ``--views`` page views; nothing here is a timed test.
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
import httpx

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command

KEY = "falq-bench-console-key-0123456789"
PARALLEL = 6
_THUMB = re.compile(r'src="(/ui/jobs/[0-9a-f]+/thumb/\d+)"')


def sign_in(base: str) -> httpx.Client:
    """A client holding a console session (through the sign-in form, as a browser does)."""
    c = httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=PARALLEL))
    form = c.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None, form.text[:500]
    done = c.post("/ui/login", data={"csrf": token.group(1), "key": KEY, "next": "/ui/gallery"})
    assert done.status_code == 303, done.text[:500]
    return c


def page_view(c: httpx.Client, *, full: bool = False) -> tuple[float, int, int]:
    """Load the gallery and every image it shows; returns (seconds, images, bytes)."""
    t0 = time.perf_counter()
    html = c.get("/ui/gallery").text
    urls = _THUMB.findall(html)
    if full:
        urls = [u.replace("/thumb/", "/image/") for u in urls]

    def get(u: str) -> int:
        r = c.get(u)
        r.raise_for_status()
        return len(r.content)

    with ThreadPoolExecutor(PARALLEL) as pool:
        sizes = list(pool.map(get, urls))
    return time.perf_counter() - t0, len(urls), sum(sizes) + len(html)


def run(jobs: int, views: int) -> dict[str, Any]:
    from falq.gateway.console import console_of
    from falq.gateway.server import GatewayServer
    from falq.ops.stack import DevStack
    from falq.producers import Falq
    from falq.producers.client import JobRequest

    with DevStack(emulator={"latency": "fixed:0.2", "concurrency": 64, "small_images": False}) as stack:
        stack.start_worker(concurrency=64)
        settings = stack.settings()
        falq = Falq(settings)
        reqs = [JobRequest("fal-ai/qwen-image-2/text-to-image",
                           {"prompt": f"gallery bench {i}", "seed": i, "image_size": {"width": 1024, "height": 1024}},
                           "interactive") for i in range(jobs)]
        ids = [job_id for job_id, _ in falq.submit_many(reqs)]
        recs = [falq.job(i).wait(300) for i in ids]
        assert all(r.state == "completed" for r in recs), [r.error for r in recs if r.state != "completed"]
        image_bytes = statistics.median(r.outputs[0].size for r in recs)
        with GatewayServer(settings, api_keys=[KEY]) as gw:
            console = console_of(gw.app)  # the mounted console's state (its thumbnail cache)
            c = sign_in(gw.url)
            first = page_view(c)
            made = console.thumbs.made
            s3_cached, warm, full = [], [], []
            for _ in range(views):
                console.thumbs.memory = type(console.thumbs.memory)(console.thumbs.memory.max_bytes)
                s3_cached.append(page_view(c))
                warm.append(page_view(c))
                full.append(page_view(c, full=True))
            c.close()
    med = {name: statistics.median(v[0] for v in rows) for name, rows in
           (("s3_cached", s3_cached), ("warm", warm), ("full", full))}
    return {"jobs": jobs, "images_per_page": first[1], "thumbnails_made": made, "image_bytes": image_bytes,
            "first_s": first[0], "first_bytes": first[2], "s3_cached_s": med["s3_cached"], "warm_s": med["warm"],
            "page_bytes": warm[0][2], "full_s": med["full"], "full_bytes": full[0][2]}


@click.command(name="console", help=__doc__, context_settings=HELP_OPTIONS)
@click.option("--jobs", type=int, default=60, show_default=True, help="completed jobs (= thumbnails on the page)")
@click.option("--views", type=int, default=5, show_default=True, help="page views per figure (median)")
def command(jobs: int, views: int) -> int:
    doc = run(jobs, views)
    n = doc["images_per_page"]
    print(f"gallery page with {n} images, {doc['jobs']} jobs, images {doc['image_bytes'] / 1e6:.1f} MB each "
          f"(median), {PARALLEL} connections:")
    first = f"first view (makes {doc['thumbnails_made']} thumbnails)"
    print(f"  {first:35} {doc['first_s'] * 1000:8.0f} ms  {doc['first_bytes'] / 1e6:6.2f} MB")
    for label, secs, size in (("thumbnails cached in S3", doc["s3_cached_s"], doc["page_bytes"]),
                              ("warm (gateway memory)", doc["warm_s"], doc["page_bytes"]),
                              (f"reference: the {n} full images", doc["full_s"], doc["full_bytes"])):
        print(f"  {label:35} {secs * 1000:8.0f} ms  {size / 1e6:6.2f} MB")
    ok = n == doc["jobs"] and doc["s3_cached_s"] < 1.0 and doc["warm_s"] < 1.0
    print(f"goal: a page of {n} thumbnails under 1 s once made: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m falq.ops.bench.console``; returns the exit code (1 when the goal is not met)."""
    return run_command(command, argv, prog_name="python -m falq.ops.bench.console")


if __name__ == "__main__":
    sys.exit(main())
