"""Flower behind its auth, seen in a real browser (headless Chromium) after a batch has run.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it). It is driven with
plain command-line flags: ``--dump-dom`` runs the page's JavaScript (Flower's task list is
filled by an XHR to its API) for ``--virtual-time-budget`` ms and prints the final DOM;
``--screenshot`` keeps docs/flower-tasks.png for the README. Basic-auth credentials in the
URL are still honoured by Chromium for top-level navigation, and the XHRs reuse them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from falq.testing.stack import ROOT, TEST_FAL_KEY, DevStack, free_port
from tests.conftest import wait_for

USER, PASSWORD = "ops", "flower-pass-0123456789"
#: The README's screenshot; a test run writes its own under tmp_path and leaves this one alone
#: (``FALQ_UPDATE_SCREENSHOTS=1`` replaces it on purpose).
SCREENSHOT = ROOT / "docs" / "flower-tasks.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=10000"]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    pytest.fail("chromium is not installed (apt-get install chromium; .ci/run installs it)")


def browse(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once on ``url`` with a fresh profile."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def flower(clean_stack: DevStack) -> Iterator[str]:
    """`falq flower` as a real process with basic auth; yields its base URL."""
    port = free_port()
    env = {**os.environ, **clean_stack.env(), "FALQ_FLOWER_USER": USER, "FALQ_FLOWER_PASSWORD": PASSWORD}
    log = open(clean_stack.workdir / "flower.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from falq.cli.main import main; sys.exit(main())", "flower",
         f"--port={port}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # ends the wait; asserted below

    try:
        wait_for(up, timeout=60, what="Flower to listen")
        assert proc.poll() is None, (clean_stack.workdir / "flower.log").read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.timeout(240)
def test_flower_shows_the_finished_batch_behind_auth(clean_stack: DevStack, falq: Any, flower: str,
                                                    tmp_path: Path) -> None:
    # Flower builds its task list from live events, so it runs before the batch does.
    clean_stack.start_worker(concurrency=10)
    jobs = [falq.generate(f"flower fox {i}", seed=i, lane="bulk" if i % 2 else "interactive", pro=i == 4)
            for i in range(5)]
    recs = [j.wait(90) for j in jobs]
    assert all(r.state == "completed" for r in recs), [r.errors for r in recs]
    auth = (USER, PASSWORD)
    wait_for(lambda: sum(t["state"] == "SUCCESS" for t in
                         httpx.get(f"{flower}/api/tasks", auth=auth, timeout=10).json().values()) == 5,
             timeout=30, what="Flower to see 5 succeeded tasks")

    # Without credentials, or with wrong ones, Flower refuses.
    assert httpx.get(f"{flower}/tasks", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/tasks", auth=(USER, "wrong"), timeout=10).status_code == 401
    # ... except /metrics, which Flower always leaves open (hence the README's advice).
    metrics = httpx.get(f"{flower}/metrics", timeout=10).text
    assert 'flower_events_total{task="falq.job",type="task-succeeded"' in metrics
    assert "flower_task_runtime_seconds_bucket" in metrics and 'le="0.25"' in metrics  # falq's buckets

    # The browser: the task page with its JavaScript-filled table.
    target = f"http://{USER}:{PASSWORD}@{flower.removeprefix('http://')}/tasks"
    page = browse(target, tmp_path, "--dump-dom")
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    for rec in recs:
        assert rec.id in dom, f"job {rec.id} not on Flower's task page"
    assert dom.count("SUCCESS") >= 5
    # The kwargs column says what each job is; nothing secret is on the page.
    assert "lane=bulk · qwen-image-2/text-to-image" in dom
    assert "lane=interactive · qwen-image-2/pro/text-to-image" in dom
    for secret in (TEST_FAL_KEY, clean_stack.env()["AWS_SECRET_ACCESS_KEY"], PASSWORD):
        assert secret not in dom
    assert "a red fox" not in dom and "flower fox" not in dom  # the input stays in the job record

    # Without credentials the browser gets no task list either.
    refused = browse(f"{flower}/tasks", tmp_path, "--dump-dom")
    assert recs[0].id not in refused.stdout

    out = SCREENSHOT if os.environ.get("FALQ_UPDATE_SCREENSHOTS") == "1" else tmp_path / "flower-tasks.png"
    shot = browse(target, tmp_path, "--window-size=1600,760", f"--screenshot={out}")
    assert shot.returncode == 0 and out.stat().st_size > 10_000, shot.stderr[-2000:]
