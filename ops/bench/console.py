"""The web console's gallery: one page of 60 thumbnails, timed as a browser loads it.

``python -m falq.ops.bench.console`` (``--jobs 60``): a DevStack with realistic 1024x1024 PNGs
from the emulator (about 1.7 MB each), one worker, the gateway on a free port *while the jobs
run* (as in production), signed in through the console's own form. A "page view" is the
gallery's HTML (what paints the page, each card a placeholder until its image arrives) plus
every thumbnail it names, fetched over 6 connections at once (what Chromium opens per host on
HTTP/1.1); both times are reported. Timed, in the same run:

* **made ahead** -- a batch of ``--jobs`` completes; the gateway makes their thumbnails in
  the background (:mod:`falq.gateway.console.ahead`, ``--ahead-workers`` threads). Reported:
  how long after the batch's last completion every thumbnail was present, and the first view
  once they are;
* **viewed at once** -- a second batch, its gallery opened the moment its last job completed
  (the thumbnails still being made ahead are waited for, or made by the view): the worst
  case, as every job of the batch completes within about a second;
* **a spread batch, viewed at once** -- a third batch whose jobs take 0.2-``--spread`` s at
  fal (uniform), so completions come over a few seconds as in a running batch; viewed the
  moment its last job completed;
* **S3-cached** -- the gateway's memory cache emptied (a restart, another replica): thumbnails
  come from S3, none is made again;
* **warm** -- a repeated view: thumbnails from the gateway's memory;
* **reference** -- the same page with the 60 full images instead of thumbnails (what a
  gallery without thumbnails would load);
* **never seen** -- making ahead stopped and the thumbnails deleted: every one is made while
  the browser waits (an old page, or a gateway started after the jobs ran): the first view
  without making ahead, as it was before.

``--ahead-workers 0`` turns making ahead off: the first views then make every thumbnail.
The goals: a page of 60 under 1 s once the thumbnails exist (S3-cached and warm), and, with
making ahead on, the first view of a finished batch under 1 s. The figures are medians of
``--views`` page views where repeated; nothing here is a timed test.
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import click
import httpx

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command

KEY = "falq-bench-console-key-0123456789"
PARALLEL = 6
_THUMB = re.compile(r'src="(/ui/jobs/[0-9a-f]+/thumb/\d+)"')


@dataclass(frozen=True)
class View:
    """One page view: seconds until the HTML (the page paints) and until every image arrived."""

    html_s: float
    total_s: float
    images: int
    bytes: int


def sign_in(base: str) -> httpx.Client:
    """A client holding a console session (through the sign-in form, as a browser does)."""
    c = httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=PARALLEL))
    form = c.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None, form.text[:500]
    done = c.post("/ui/login", data={"csrf": token.group(1), "key": KEY, "next": "/ui/gallery"})
    assert done.status_code == 303, done.text[:500]
    return c


def page_view(c: httpx.Client, *, full: bool = False) -> View:
    """Load the gallery and every image it shows."""
    t0 = time.perf_counter()
    html = c.get("/ui/gallery").text
    html_s = time.perf_counter() - t0
    urls = _THUMB.findall(html)
    if full:
        urls = [u.replace("/thumb/", "/image/") for u in urls]

    def get(u: str) -> int:
        r = c.get(u)
        r.raise_for_status()
        return len(r.content)

    with ThreadPoolExecutor(PARALLEL) as pool:
        sizes = list(pool.map(get, urls))
    return View(html_s, time.perf_counter() - t0, len(urls), sum(sizes) + len(html))


def _batch(falq: Any, jobs: int, tag: str) -> list[Any]:
    from falq.producers.client import JobRequest

    reqs = [JobRequest("fal-ai/qwen-image-2/text-to-image",
                       {"prompt": f"gallery bench {tag} {i}", "seed": i, "image_size": {"width": 1024, "height": 1024}},
                       "interactive") for i in range(jobs)]
    ids = [job_id for job_id, _ in falq.submit_many(reqs)]
    recs = [falq.job(i).wait(300) for i in ids]
    assert all(r.state == "completed" for r in recs), [r.error for r in recs if r.state != "completed"]
    return recs


def _present_at(console: Any, recs: list[Any], timeout_s: float = 120) -> float | None:
    """``time.time()`` when the last of ``recs``' thumbnails was made ahead (None: making ahead is off)."""
    if console.ahead is None:
        return None
    done = console.ahead.stats.done_at
    deadline = time.monotonic() + timeout_s
    while not all(r.id in done for r in recs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"thumbnails made ahead: {sum(r.id in done for r in recs)}/{len(recs)}")
        time.sleep(0.01)
    return max(done[r.id] for r in recs)


def run(jobs: int, views: int, ahead_workers: int = 2, spread: float = 6.0) -> dict[str, Any]:
    from falq.gateway.console import console_of
    from falq.gateway.server import GatewayServer
    from falq.producers import Falq
    from falq.testing.stack import DevStack

    with DevStack(emulator={"latency": "fixed:0.2", "concurrency": 64, "small_images": False}) as stack:
        stack.start_worker(concurrency=64)
        settings = stack.settings(FALQ_CONSOLE_THUMBS_AHEAD_WORKERS=str(ahead_workers))
        falq = Falq(settings)
        with GatewayServer(settings, api_keys=[KEY]) as gw:
            console = console_of(gw.app)  # the mounted console's state (its thumbnail cache)
            c = sign_in(gw.url)
            c.get("/ui/gallery").raise_for_status()  # a process's first search opens the catalogue (once)
            # 1. A batch completes while the gateway runs; its thumbnails are made ahead.
            recs = _batch(falq, jobs, "a")
            image_bytes = statistics.median(r.outputs[0].size for r in recs)
            last_done = max(r.timestamps["completed"] for r in recs)
            present = _present_at(console, recs)
            stats = console.ahead.stats if console.ahead is not None else None
            each_s = stats.making_s / stats.made if stats is not None and stats.made else None
            ahead_view = page_view(c)
            # 2. Another batch, viewed the moment its last job completed.
            _batch(falq, jobs, "b")
            at_once = page_view(c)
            # 3. A batch whose completions spread over a few seconds, viewed the moment it ended.
            stack.emu.configure(latency=f"uniform:0.2,{spread}")
            recs_b = _batch(falq, jobs, "c")
            spread_view = page_view(c)
            made = console.thumbs.made
            # 4. Thumbnails that exist: from S3 (memory emptied), from memory; the full images.
            s3_cached, warm, full = [], [], []
            for _ in range(views):
                console.thumbs.memory = type(console.thumbs.memory)(console.thumbs.memory.max_bytes)
                s3_cached.append(page_view(c))
                warm.append(page_view(c))
                full.append(page_view(c, full=True))
            # 5. Never seen: making ahead stopped, thumbnails deleted, memory emptied.
            console.close()
            thumbs = console.thumbs
            deleted = thumbs.storage.delete_prefix(thumbs.key(recs_b[0].outputs[0]).rsplit("/", 2)[0] + "/")
            thumbs.memory = type(thumbs.memory)(thumbs.memory.max_bytes)
            before = thumbs.made
            cold = page_view(c)
            cold_made = thumbs.made - before
            c.close()
    med = {name: statistics.median(v.total_s for v in rows) for name, rows in
           (("s3_cached", s3_cached), ("warm", warm), ("full", full))}
    return {"jobs": jobs, "ahead_workers": ahead_workers, "images_per_page": ahead_view.images,
            "image_bytes": image_bytes, "thumbnails_made": made,
            "present_after_s": None if present is None else max(0.0, present - last_done), "each_s": each_s,
            "ahead": ahead_view, "at_once": at_once, "spread": spread_view, "spread_s": spread,
            "s3_cached_s": med["s3_cached"], "warm_s": med["warm"], "page_bytes": warm[0].bytes,
            "full_s": med["full"], "full_bytes": full[0].bytes, "cold": cold, "cold_made": cold_made,
            "deleted": deleted}


def _row(label: str, v: View) -> str:
    return (f"  {label:44} page {v.html_s * 1000:6.0f} ms  all images {v.total_s * 1000:6.0f} ms  "
            f"{v.bytes / 1e6:6.2f} MB")


@click.command(name="console", help=__doc__, context_settings=HELP_OPTIONS)
@click.option("--jobs", type=int, default=60, show_default=True,
              help="completed jobs per batch (= thumbnails on the page)")
@click.option("--views", type=int, default=5, show_default=True, help="page views per repeated figure (median)")
@click.option("--ahead-workers", type=click.IntRange(0, 16), default=2, show_default=True,
              help="FALQ_CONSOLE_THUMBS_AHEAD_WORKERS of the gateway (0: no making ahead)")
@click.option("--spread", type=click.FloatRange(0.5, 60), default=6.0, show_default=True,
              help="the third batch's jobs take 0.2 to this many seconds at fal")
def command(jobs: int, views: int, ahead_workers: int, spread: float) -> int:
    doc = run(jobs, views, ahead_workers, spread)
    n = doc["images_per_page"]
    print(f"gallery page with {n} images, {doc['jobs']} jobs a batch, images {doc['image_bytes'] / 1e6:.1f} MB each "
          f"(median), {PARALLEL} connections, {ahead_workers} thread(s) making thumbnails ahead:")
    if doc["present_after_s"] is not None:
        each = f", {doc['each_s'] * 1000:.0f} ms each in a thread" if doc["each_s"] else ""
        print(f"  every thumbnail made ahead {doc['present_after_s'] * 1000:.0f} ms after the batch's last completion"
              f"{each}")
    print(_row("first view, thumbnails made ahead" if ahead_workers else "first view (makes the thumbnails)",
               doc["ahead"]))
    print(_row("first view the moment the batch ended", doc["at_once"]))
    print(_row(f"the same, completions over 0.2-{doc['spread_s']:g} s", doc["spread"]))
    for label, secs, size in (("thumbnails cached in S3", doc["s3_cached_s"], doc["page_bytes"]),
                              ("warm (gateway memory)", doc["warm_s"], doc["page_bytes"]),
                              (f"reference: the {n} full images", doc["full_s"], doc["full_bytes"])):
        print(f"  {label:44} {'':17}all images {secs * 1000:6.0f} ms  {size / 1e6:6.2f} MB")
    print(_row(f"never seen (makes {doc['cold_made']} while the browser waits)", doc["cold"]))
    ok = n == doc["jobs"] and doc["s3_cached_s"] < 1.0 and doc["warm_s"] < 1.0
    goals = "a page of thumbnails under 1 s once made"
    if ahead_workers:
        ok = ok and doc["ahead"].total_s < 1.0
        goals += ", and the first view of a finished batch under 1 s"
    print(f"goal: {goals}: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m falq.ops.bench.console``; returns the exit code (1 when a goal is not met)."""
    return run_command(command, argv, prog_name="python -m falq.ops.bench.console")


if __name__ == "__main__":
    sys.exit(main())
