"""``make screenshots``: the web console's pictures in the docs (docs/console-*.png), taken from a real run.

Starts a :class:`~falq.testing.stack.DevStack` (Redis, moto S3, the fal emulator, two workers),
runs a small batch spread over a few minutes (so the throughput chart has minutes to show;
one moderated prompt fails on purpose, and the emulator injects a few 5xx and 429 answers that
workers retry), serves the gateway with a fresh API key, and drives
Debian's Chromium through Playwright (``executable_path``: Playwright cannot download its own
browser here) to photograph the overview, the gallery and one job page into ``docs/``.

The browser tests use the same helpers (:func:`launch`, :func:`sign_in`, :func:`capture`)
and write their pictures under ``tmp_path`` instead, so a test run never touches the tracked ones.

Example::

    python -m falq.ops.screenshots                 # docs/console-{overview,gallery,job}.png
    python -m falq.ops.screenshots --minutes 1 --out /tmp/shots
"""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command

ROOT = Path(__file__).resolve().parent.parent
#: Debian's chromium (``apt-get install chromium``; ``.ci/run`` installs it).
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1440, "height": 900}
PROMPTS: list[tuple[str, dict[str, Any]]] = [
    ("a lighthouse on a cliff at dusk, oil painting", {"image_size": "landscape_4_3"}),
    ("a red fox in fresh snow, golden hour", {"image_size": "square_hd"}),
    ("isometric city block made of paper, soft shadows", {"image_size": "square"}),
    ("a ceramic bowl of lemons, studio photo", {"image_size": "portrait_4_3"}),
    ("a koi pond seen from above, watercolor", {"image_size": "square"}),
    ("a vintage tram in Lisbon at noon", {"image_size": "landscape_16_9"}),
    ("a glass terrarium with moss and a tiny house", {"image_size": "square"}),
    ("northern lights over a frozen lake", {"image_size": "landscape_4_3"}),
]


def chromium() -> str:
    """The browser Playwright drives: Debian's chromium."""
    exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not exe:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    return exe


def launch(playwright: Any) -> Any:
    """A headless Chromium browser (Playwright's ``Browser``) on Debian's binary."""
    return playwright.chromium.launch(executable_path=chromium(), headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


def sign_in(page: Any, base: str, key: str) -> None:
    """Open the console's sign-in form and sign in with ``key`` (lands on the console's home)."""
    page.goto(f"{base}/ui/login")
    page.fill("#key", key)
    page.click("#sign-in")
    page.wait_for_load_state("load")


def wait_thumbnails(page: Any, n: int, timeout_ms: float = 30_000) -> None:
    """Until the gallery shows at least ``n`` thumbnails, every one of them decoded."""
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('#grid img.thumb')];
                  return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=n, timeout=timeout_ms)


def wait_full_images(page: Any) -> None:
    """Until every full-size image of a job page is decoded."""
    page.wait_for_function("() => [...document.querySelectorAll('img.full')].every(i => i.complete && i.naturalWidth)")


def capture(page: Any, base: str, out: Path, job_id: str, *, thumbnails: int = 1) -> dict[str, Path]:
    """Photograph the overview, the gallery and ``job_id``'s page into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    shots = {name: out / f"console-{name}.png" for name in ("overview", "gallery", "job")}
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{base}/ui/overview")
    page.wait_for_selector("#throughput")
    page.screenshot(path=str(shots["overview"]), full_page=True)
    page.goto(f"{base}/ui/gallery")
    wait_thumbnails(page, thumbnails)
    page.screenshot(path=str(shots["gallery"]))
    page.goto(f"{base}/ui/jobs/{job_id}")
    wait_full_images(page)
    page.screenshot(path=str(shots["job"]), full_page=True)
    return shots


def _run(out: Path, minutes: float) -> int:
    from playwright.sync_api import sync_playwright

    from falq.gateway.server import GatewayServer
    from falq.producers import Falq
    from falq.producers.admin import Admin
    from falq.testing.stack import DevStack

    key = "falq-screens-" + secrets.token_urlsafe(12)
    print("screenshots: starting Redis, S3 (moto), the fal emulator and 2 workers ...", flush=True)
    # A few injected 5xx and 429 answers, so "retries by reason" has something real to show.
    with DevStack(emulator={"latency": "uniform:1,4", "concurrency": 8, "small_images": False, "fail_5xx": 0.04,
                            "fail_429": 0.03},
                  env={"FALQ_MAX_OUTSTANDING": "12"}) as stack:
        for _ in range(2):
            stack.start_worker(concurrency=20)
        settings = stack.settings()
        falq = Falq(settings)
        Admin(falq).budget_set(5)  # a budget, so the overview shows spend against it
        rounds = max(1, int(minutes * 2))
        handles = []
        for r in range(rounds):  # spread over the minutes: the chart shows several of them
            for i, (prompt, opts) in enumerate(PROMPTS):
                if (i + r) % 3 == 0:
                    handles.append(falq.generate(f"{prompt} #{r}", seed=100 * r + i, pro=i % 4 == 1, **opts))
            if r == rounds // 2:
                handles.append(falq.generate("a beach at noon [[moderate]]", seed=7))
            if r + 1 < rounds:
                time.sleep(30)
        records = [h.wait(300) for h in handles]
        done = [r for r in records if r.state == "completed"]
        print(f"screenshots: {len(done)}/{len(records)} jobs completed", flush=True)
        if not done:
            return 1
        job = max(done, key=lambda r: (r.outputs[0].width if r.outputs else 0, r.created_at))
        with GatewayServer(settings, api_keys=[key]) as gw, sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport=VIEWPORT)
            sign_in(page, gw.url, key)
            shots = capture(page, gw.url, out, job.id, thumbnails=min(len(done), 12))
            browser.close()
        for path in shots.values():
            print(f"  wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


@click.command(name="screenshots", help=__doc__, context_settings=HELP_OPTIONS)
@click.option("--out", type=click.Path(file_okay=False), default=str(ROOT / "docs"), show_default=True,
              help="where to write console-{overview,gallery,job}.png")
@click.option("--minutes", type=float, default=6.0, show_default=True,
              help="spread the batch over this many minutes (the chart's bars)")
def command(out: str, minutes: float) -> int:
    return _run(Path(out), minutes)


def main(argv: list[str] | None = None) -> int:
    """``python -m falq.ops.screenshots``: run :data:`command` on ``argv``; returns the exit code."""
    return run_command(command, argv, prog_name="python -m falq.ops.screenshots")


if __name__ == "__main__":
    sys.exit(main())
