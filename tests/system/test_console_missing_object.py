"""A job whose image is no longer in the bucket (deleted, or expired by a lifecycle rule) shows
"no longer in the bucket" in the console, in a real browser, instead of a broken image: in the
gallery and on the job's page. Its routes answer 410; the other job's image still shows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from falq.gateway.console.thumbs import Thumbnails
from falq.gateway.server import GatewayServer
from falq.ops.screenshots import launch, sign_in
from falq.producers import Falq
from falq.shared.storage.s3 import Storage
from falq.testing.stack import DevStack

KEY = "falq-console-key-missing-0123456789"


@pytest.fixture
def finished(clean_stack: DevStack) -> Iterator[tuple[str, str]]:
    """Two completed jobs; every object of the first (its image, its stored thumbnail) deleted."""
    settings = clean_stack.settings()
    clean_stack.start_worker(concurrency=4, lanes="interactive")
    falq = Falq(settings)
    gone, kept = falq.generate("a paper boat on a pond", seed=1), falq.generate("a red kite in the wind", seed=2)
    rec_gone, rec_kept = gone.wait(90), kept.wait(90)
    assert rec_gone.state == rec_kept.state == "completed"
    storage = Storage(settings)
    thumbs = Thumbnails(storage, settings.console_thumb_px)
    for img in rec_gone.outputs:
        storage.client.delete_object(Bucket=storage.bucket, Key=img.key)
        storage.client.delete_object(Bucket=storage.bucket, Key=thumbs.key(img, thumbs.folder_of(rec_gone.endpoint,
                                                                                                  img)))
    yield rec_gone.id, rec_kept.id


@pytest.mark.timeout(180)
def test_missing_object_shows_no_longer_in_the_bucket(clean_stack: DevStack, finished: tuple[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    gone, kept = finished
    with GatewayServer(clean_stack.settings(), api_keys=[KEY]) as gw, sync_playwright() as p:
        base = gw.url
        browser = launch(p)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        csp: list[str] = []
        page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
        sign_in(page, base, KEY)

        assert page.request.get(f"{base}/ui/jobs/{gone}/image/0").status == 410
        assert page.request.get(f"{base}/ui/jobs/{gone}/thumb/0").status == 410
        assert page.request.get(f"{base}/ui/jobs/{kept}/thumb/0").status == 200

        page.goto(f"{base}/ui/gallery")
        missing = page.locator(f'#grid a.card[data-job="{gone}"] .noimg.missing')
        missing.wait_for(timeout=30_000)
        assert missing.inner_text().strip() == "no longer in the bucket"
        page.wait_for_function(
            """id => { const i = document.querySelector(`#grid a.card[data-job="${id}"] img.thumb`);
                       return i && i.complete && i.naturalWidth > 0; }""", arg=kept, timeout=30_000)
        broken = page.evaluate("[...document.querySelectorAll('img')].filter(i => i.complete && !i.naturalWidth)"
                               ".length")
        assert broken == 0

        page.goto(f"{base}/ui/jobs/{gone}")
        box = page.locator(".noimg.missing")
        box.wait_for(timeout=30_000)
        assert box.inner_text().strip() == "no longer in the bucket"
        assert "no longer in the bucket" in (box.get_attribute("aria-label") or "")
        page.goto(f"{base}/ui/jobs/{kept}")
        page.wait_for_function("() => [...document.querySelectorAll('img.full')].every(i => i.naturalWidth > 0)",
                               timeout=30_000)
        assert page.locator(".noimg.missing").count() == 0
        assert csp == []
        browser.close()
