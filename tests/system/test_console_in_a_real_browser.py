"""The web console (``/ui``) in a real browser: Playwright driving Debian's Chromium.

One real stack (Redis, moto S3, the fal emulator, a worker process) runs a small batch: plain
prompts, two prompts that try to inject markup, one that fal's content checker refuses
(``[[moderate]]``: it fails), one job on a lane no worker serves (it stays queued, to be
cancelled) and one job of another tenant. The browser then does what a person does: signs in,
watches the gallery fill in, filters it, opens a job, cancels the queued job, retries the
failed one and signs out; every page's HTML is searched for secrets, every injected prompt
must show as text with no script run, and the other tenant's key must see none of it.
Screenshots go to ``tmp_path`` (``make screenshots`` writes the README's).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from falq.gateway.console import console_of
from falq.gateway.console.thumbs import Thumbnails
from falq.gateway.server import GatewayServer
from falq.ops.screenshots import capture, launch, sign_in, wait_full_images, wait_thumbnails
from falq.producers import Falq
from falq.producers.client import JobRequest
from falq.shared.batches.store import BatchStore, batch_id_for
from falq.shared.fal.endpoints import TEXT_TO_IMAGE
from falq.shared.tenants.store import ApiKeyStore, Tenant, TenantStore
from falq.testing.stack import TEST_FAL_KEY, DevStack
from tests.conftest import wait_for

KEY = "falq-console-key-0123456789abcdef"
XSS_SCRIPT = "<script>window.__xss = 1</script> a fox in a hat"
XSS_IMG = '"><img src=x onerror="window.__xss = 2"> an owl at night'
T2I = TEXT_TO_IMAGE["standard"]
PLAIN = ["a lighthouse on a cliff at dusk", "a ceramic bowl of lemons", "a koi pond from above"]


@pytest.fixture
def gateway(clean_stack: DevStack) -> Iterator[GatewayServer]:
    with GatewayServer(clean_stack.settings(), api_keys=[KEY]) as gw:
        yield gw


@pytest.fixture
def console(clean_stack: DevStack, gateway: GatewayServer) -> tuple[DevStack, str]:
    return clean_stack, gateway.url


def _secrets(stack: DevStack, *extra: str) -> list[str]:
    return [TEST_FAL_KEY, stack.env()["AWS_SECRET_ACCESS_KEY"], stack.env()["AWS_ACCESS_KEY_ID"], KEY, *extra]


@pytest.mark.timeout(180)
def test_console_user_flows_in_a_real_browser(console: tuple[DevStack, str], gateway: GatewayServer,
                                               tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    stack, base = console
    settings = stack.settings()
    stack.start_worker(concurrency=10, lanes="interactive")  # nobody serves "bulk": that job stays queued
    falq = Falq(settings)
    # The plain prompts form a batch (as `falq bulk` makes one); the injected ones are single jobs.
    batch, _ = BatchStore(falq.redis, prefix=settings.key_prefix).open(
        batch_id_for("default", "console-test"), name="console test batch", tenant="default",
        source_name="prompts.jsonl", source_sha256="0" * 64, run_key="console-test")
    ids = [i for i, _ in falq.submit_many([JobRequest(T2I, {"prompt": p, "seed": n + 1}, batch_id=batch.id)
                                          for n, p in enumerate(PLAIN)])]
    jobs = [*(falq.job(i) for i in ids), *(falq.generate(p, seed=4 + n) for n, p in enumerate([XSS_SCRIPT, XSS_IMG]))]
    moderated = falq.generate("a beach at noon [[moderate]]", seed=9)
    queued = falq.generate("a job nobody will run", lane="bulk", seed=10)
    r = redis.Redis.from_url(settings.redis_url)
    TenantStore(r, prefix=settings.key_prefix).put(Tenant(name="other"))
    theirs = Falq(settings, tenant="other").generate("the other tenant's secret garden", seed=11)
    other_key, _ = ApiKeyStore(r, prefix=settings.key_prefix).create("other", ("read",), label="console test")
    secrets = _secrets(stack, other_key)

    with sync_playwright() as p:
        browser = launch(p)
        ctx = browser.new_context(viewport={"width": 1440, "height": 900})
        page = ctx.new_page()
        csp_errors: list[str] = []
        page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
        pages_html: dict[str, str] = {}

        def keep(name: str) -> str:
            html = page.content()
            pages_html[name] = html
            return html

        # Not signed in: every page leads to the sign-in form; a wrong key is refused.
        page.goto(f"{base}/ui/gallery")
        assert page.url.startswith(f"{base}/ui/login")
        page.fill("#key", "not-a-key")
        page.click("#sign-in")
        assert "That key is not accepted." in page.inner_text(".error")
        keep("login")

        # Sign in: the session cookie is HttpOnly, SameSite=Strict, expires, and holds no key.
        sign_in(page, base, KEY)
        assert page.url == f"{base}/ui/overview"
        [cookie] = [c for c in ctx.cookies() if c["name"] == "falq_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain http here
        assert time.time() + 3600 < cookie["expires"] < time.time() + settings.console_session_ttl_s + 60
        assert KEY not in cookie["value"] and len(cookie["value"]) >= 40
        assert page.evaluate("typeof htmx") == "object"  # the vendored htmx loaded under the CSP

        # The gallery fills in live (its grid is polled; no reload) as the jobs complete.
        page.goto(f"{base}/ui/gallery")
        wait_thumbnails(page, len(jobs), timeout_ms=60_000)
        cards = page.locator("#grid a.card")
        wait_for(lambda: cards.count() == len(jobs) + 2, timeout=30, what="every job's card (not the other tenant's)")
        recs = [j.wait(30) for j in jobs]
        assert all(rec.state == "completed" for rec in recs), [rec.errors for rec in recs]
        grid = page.inner_text("#grid")
        for prompt in PLAIN:
            assert prompt in grid
        assert "the other tenant's secret garden" not in grid  # another tenant's job: invisible
        assert XSS_SCRIPT in grid and XSS_IMG in grid  # shown as text ...
        assert page.evaluate("window.__xss") is None  # ... and never run
        assert page.locator("img[onerror]").count() == 0
        keep("gallery")
        # A job enqueued now appears on the open page by itself: no reload (the marker survives).
        page.evaluate("window.__same_page = true")
        late = falq.generate("a late arrival, a hot air balloon", seed=12)
        page.wait_for_function("""id => { const i = document.querySelector(`#grid a[data-job="${id}"] img.thumb`);
                                          return i && i.complete && i.naturalWidth > 0; }""", arg=late.id,
                               timeout=30_000)
        assert page.evaluate("window.__same_page") is True

        # The batch: its progress on the batches page, and its own gallery.
        page.goto(f"{base}/ui/batches")
        row = page.locator(f"#batches tr[data-batch='{batch.id}']")
        assert row.locator(".done").inner_text() == f"{len(PLAIN)}/{len(PLAIN)}"
        assert row.locator(".eta").inner_text() == "done" and "completed 3" in row.inner_text()
        keep("batches")
        row.locator("a.batch-link").click()
        wait_thumbnails(page, len(PLAIN))
        assert page.locator("#grid a.card").count() == len(PLAIN)
        assert sorted(page.locator("#grid a.card").evaluate_all("els => els.map(e => e.dataset.job)")) == sorted(ids)

        # Filters: prompt text, and state (the moderated job is the one failure).
        page.fill("#f-q", "lemons")
        page.click("#f-apply")
        assert page.locator("#grid a.card").count() == 1
        assert "a ceramic bowl of lemons" in page.inner_text("#grid")
        page.goto(f"{base}/ui/gallery")
        page.select_option("#f-state", "failed")
        page.click("#f-apply")
        wait_for(lambda: moderated.record().state == "failed", timeout=30, what="the moderated job to fail")
        page.reload()
        failed = page.locator("#grid a.card")
        assert failed.count() == 1 and failed.first.get_attribute("data-job") == moderated.id
        keep("gallery-failed")

        # A job: its image at full size, prompt, seed, timeline, logs, cost, commands.
        page.goto(f"{base}/ui/gallery?q=lighthouse")
        page.locator("#grid a.card").first.click()
        wait_full_images(page)
        lighthouse = recs[0]
        assert page.url == f"{base}/ui/jobs/{lighthouse.id}"
        assert page.inner_text("#prompt") == PLAIN[0]
        assert page.inner_text("#seed") == "1"
        assert batch.id in page.inner_text("#facts")
        natural = page.evaluate("document.querySelector('img.full').naturalWidth")
        assert natural == lighthouse.outputs[0].width
        timeline = page.inner_text("#timeline")
        for label in ("queued in falq", "at fal, in progress", "mirroring to S3", "completed"):
            assert label in timeline
        assert page.locator("#logs").count() == 1 and page.inner_text("#logs").strip()
        assert page.inner_text("#cost").startswith("$")
        assert page.inner_text("#cmd-falq").startswith("falq generate 'a lighthouse on a cliff at dusk'")
        assert "$FALQ_API_KEY" in page.inner_text("#cmd-curl")
        download = page.request.get(f"{base}/ui/jobs/{lighthouse.id}/image/0?download=1")
        assert download.status == 200 and "attachment" in download.headers["content-disposition"]
        assert download.body()[:8] == b"\x89PNG\r\n\x1a\n"
        keep("job")

        # The injected prompts on their job pages: text in the DOM, no script ran, no onerror element.
        for rec, text in ((recs[3], XSS_SCRIPT), (recs[4], XSS_IMG)):
            page.goto(f"{base}/ui/jobs/{rec.id}")
            assert page.inner_text("#prompt") == text
            assert page.evaluate("window.__xss") is None
            assert page.locator("img[onerror]").count() == 0 and page.locator("#prompt script").count() == 0
            keep(f"xss-{rec.id}")

        # Cancel the queued job from its page.
        page.goto(f"{base}/ui/jobs/{queued.id}")
        assert page.inner_text("#state") == "queued"
        page.click("#cancel")
        assert page.inner_text("#notice") == "Cancelled."
        assert page.inner_text("#state") == "cancelled" and queued.record().state == "cancelled"
        assert page.locator("#cancel").count() == 0

        # Retry the failed job: the admin service queues it again (it is moderated again, so fails again).
        page.goto(f"{base}/ui/jobs/{moderated.id}")
        assert page.inner_text("#state") == "failed" and "content_policy" in page.inner_text("#errors")
        before = moderated.record()
        page.click("#retry")
        assert page.inner_text("#notice").startswith("Queued again")
        after = moderated.record()
        assert after.retry_from == before.attempts and after.retry_from > 0
        keep("retried")

        # The overview shows the run's real figures.
        page.goto(f"{base}/ui/overview")
        assert int(page.inner_text("#completed-hour")) >= len(jobs)
        assert int(page.locator("#states td[data-state=completed]").inner_text()) >= len(jobs)
        assert int(page.inner_text("#moderated")) >= 1
        assert page.locator("#throughput rect.bar-done").count() >= 1
        mine = page.locator("#tenants tr[data-tenant=default] td")
        other = page.locator("#tenants tr[data-tenant=other] td")
        assert int(mine.nth(4).inner_text()) >= len(jobs) and other.count() == 7  # per tenant: completed ...
        assert int(mine.nth(2).inner_text()) == 0  # ... and waiting in the bulk lane (the cancelled job left)
        stamp = page.inner_text("#stamp")  # the figures refresh in place every 5 s
        page.evaluate("window.__same_page = true")
        page.wait_for_function("s => document.querySelector('#stamp').textContent !== s", arg=stamp, timeout=15_000)
        assert page.evaluate("window.__same_page") is True
        keep("overview")
        shots = capture(page, base, tmp_path / "shots", lighthouse.id, thumbnails=len(jobs))
        assert all(s.stat().st_size > 20_000 for s in shots.values())

        # Every thumbnail was made once, however often the (polled) gallery showed it; a fresh
        # process (a restart, another replica) finds them in S3 and makes none.
        thumbs = console_of(gateway.app).thumbs
        # The other tenant's job too: made ahead (nobody of that tenant has looked yet), in its own folder.
        their_rec = theirs.wait(30)
        their_key = thumbs.key(their_rec.outputs[0], thumbs.folder_of(their_rec.endpoint, their_rec.outputs[0]))
        assert their_key.startswith(f"{thumbs.storage.prefix}/other/_thumbs/")
        wait_for(lambda: thumbs.storage.head(their_key) is not None, timeout=30, what="their thumbnail made ahead")
        assert thumbs.made == len(jobs) + 2  # and the late arrival's, and theirs
        stored = thumbs.storage.get_bytes_if_exists(thumbs.key(lighthouse.outputs[0]))
        assert stored is not None and stored[:2] == b"\xff\xd8"  # a JPEG
        fresh = Thumbnails(thumbs.storage, thumbs.px)
        assert fresh.get(lighthouse.outputs[0])[:2] == b"\xff\xd8" and fresh.made == 0

        # An action without the session's CSRF token is refused, and changes nothing.
        sid = next(c["value"] for c in ctx.cookies() if c["name"] == "falq_session")
        forged = httpx.post(f"{base}/ui/jobs/{recs[1].id}/cancel", cookies={"falq_session": sid},
                            data={"csrf": "forged"}, timeout=10)
        assert forged.status_code == 403
        assert httpx.post(f"{base}/ui/logout", cookies={"falq_session": sid}, timeout=10).status_code == 403

        # Sign out: back at the sign-in form, and the old session id no longer opens anything.
        page.click("#sign-out")
        assert page.url == f"{base}/ui/login"
        stale = httpx.get(f"{base}/ui/gallery", cookies={"falq_session": sid}, timeout=10)
        assert stale.status_code == 303 and "/ui/login" in stale.headers["location"]

        # Another tenant's key (scope read): its own job only; ours answer 404 like unknown ids.
        page.goto(f"{base}/ui/login")
        sign_in(page, base, other_key)
        assert page.url == f"{base}/ui/gallery"  # not the operator: no overview
        wait_for(lambda: theirs.record().state in ("completed", "queued", "failed"), timeout=10)
        grid = page.inner_text("#grid")
        assert "the other tenant's secret garden" in grid
        assert all(prompt not in grid for prompt in PLAIN)
        assert page.locator("#grid a.card").count() == 1
        keep("other-gallery")
        for path in (f"/ui/jobs/{lighthouse.id}", f"/ui/jobs/{lighthouse.id}/thumb/0",
                     f"/ui/jobs/{lighthouse.id}/image/0"):
            assert page.request.get(f"{base}{path}").status == 404, path
        assert page.request.get(f"{base}/ui/overview", max_redirects=0).status == 403
        page.goto(f"{base}/ui/jobs/{lighthouse.id}")
        assert "No such job" in page.inner_text("main")
        assert page.locator("#retry").count() == 0

        # No secret anywhere in any page, and no page broke the Content-Security-Policy.
        for name, html in pages_html.items():
            for secret in secrets:
                assert secret not in html, f"a secret is in the HTML of {name}"
        assert not csp_errors, csp_errors
        browser.close()


def test_console_headers_and_refusals(console: tuple[DevStack, str]) -> None:
    """The CSP and protective headers on every answer; sign-in needs its form token; the REST
    API still wants its key while /ui does its own sign-in."""
    _stack, base = console
    c = httpx.Client(base_url=base, timeout=10)
    form = c.get("/ui/login")
    assert form.status_code == 200
    csp = form.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp and form.headers["x-content-type-options"] == "nosniff"
    assert "no-store" in form.headers["cache-control"]
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    # A sign-in without the form's double-submit token is refused even with the right key.
    bare = httpx.post(f"{base}/ui/login", data={"key": KEY, "csrf": "x"}, timeout=10)
    assert bare.status_code == 403 and "falq_session" not in bare.headers.get("set-cookie", "")
    # ... and one from a foreign origin too.
    foreign = c.post("/ui/login", data={"key": KEY, "csrf": token.group(1)}, headers={"origin": "https://evil.test"})
    assert foreign.status_code == 403
    ok = c.post("/ui/login", data={"key": KEY, "csrf": token.group(1)}, headers={"x-forwarded-proto": "https"})
    assert ok.status_code == 303
    set_cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "secure" in set_cookie
    assert "max-age=" in set_cookie and "expires=" in set_cookie
    assert httpx.get(f"{base}/v1/jobs", timeout=10).status_code == 401  # the API still needs its key
    assert httpx.get(f"{base}/ui/static/htmx.min.js", timeout=10).text.startswith("/*! htmx 2.0.11")
    assert httpx.get(f"{base}/ui", timeout=10, follow_redirects=True).url.path == "/ui/login"
