"""Official fal clients (Python fal-client, JS @fal-ai/client) work against the emulator
unchanged apart from the base URL, and the seed pages' own example requests are served."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as plain `pytest` without installing the project
    sys.path.insert(0, str(ROOT))

import fal_client  # noqa: E402
import fal_client.client as fal_client_module  # noqa: E402

from falq.emulator import EmulatorServer  # noqa: E402

T2I = "fal-ai/qwen-image-2/text-to-image"
PRO_T2I = "fal-ai/qwen-image-2/pro/text-to-image"
EDIT = "fal-ai/qwen-image-2/edit"
JS_DIR = ROOT / "tests" / "support" / "js"
SEED_EXAMPLES = json.loads((ROOT / "tests" / "support" / "fixtures" / "seed_examples.json").read_text(encoding="utf-8"))


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(latency="fixed:0.5", log_steps=3) as emu:
        yield emu


@pytest.fixture
def fal(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> fal_client.SyncClient:
    """A stock fal_client pointed at the emulator through its module globals and FAL_KEY."""
    monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", f"{server.url}/")
    monkeypatch.setattr(fal_client_module, "REST_URL", server.url)
    monkeypatch.setattr(fal_client_module, "CDN_URL", server.url)
    monkeypatch.setenv("FAL_KEY", "py-client-key-0001")
    return fal_client.SyncClient()


def test_python_submit_status_result_cancel(server: EmulatorServer, fal: fal_client.SyncClient) -> None:
    handle = fal.submit(T2I, {"prompt": "a paper crane", "seed": 4}, headers={"X-Falq-Job-Id": "j1"})
    assert handle.response_url.startswith(f"{server.url}/fal-ai/qwen-image-2/requests/")
    assert isinstance(handle.status(with_logs=True), fal_client.Queued | fal_client.InProgress)
    out = handle.get()
    assert out["seed"] == 4 and out["images"][0]["url"].startswith(server.url)
    status = fal.status(T2I, handle.request_id, with_logs=True)
    assert isinstance(status, fal_client.Completed) and status.error is None
    assert status.metrics["inference_time"] > 0 and any(log["message"] == "step 3/3" for log in status.logs or [])
    assert fal.result(T2I, handle.request_id) == out

    server.configure(concurrency=1, latency="fixed:5")
    first = fal.submit(T2I, {"prompt": "long"})
    queued = fal.submit(PRO_T2I, {"prompt": "waiting"})
    assert fal.status(PRO_T2I, queued.request_id) == fal_client.Queued(position=0)
    fal.cancel(PRO_T2I, queued.request_id)
    first.cancel()
    for rid in (first.request_id, queued.request_id):
        done = fal.status(T2I, rid)
        assert isinstance(done, fal_client.Completed) and done.error_type == "client_cancelled"
        with pytest.raises(fal_client.FalClientHTTPError) as exc:
            fal.result(T2I, rid)
        assert exc.value.status_code == 499 and exc.value.error_type == "client_cancelled"
    recs = server.requests()["requests"]
    assert recs[0]["headers"]["x-falq-job-id"] == "j1"


def test_python_subscribe_with_logs(fal: fal_client.SyncClient) -> None:
    updates: list[Any] = []
    out = fal.subscribe(T2I, {"prompt": "logs please", "image_size": "square"}, with_logs=True,
                        on_queue_update=updates.append)  # fmt: skip
    messages = [log["message"] for u in updates if isinstance(u, fal_client.InProgress) for log in u.logs or []]
    assert "step 1/3" in messages and "step 3/3" in messages
    assert isinstance(updates[-1], fal_client.Completed)
    assert (out["images"][0]["width"], out["images"][0]["height"]) == (512, 512)


def test_python_validation_error_and_upload(server: EmulatorServer, fal: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        fal.subscribe(EDIT, {"prompt": "no images"})
    assert exc.value.status_code == 422 and exc.value.error_type == "validation_error"
    url = fal.upload(b"hello bytes", "text/plain", file_name="hello.txt")
    assert url.startswith(f"{server.url}/files/") and httpx.get(url).content == b"hello bytes"


def test_python_client_rides_out_injected_faults(server: EmulatorServer, fal: fal_client.SyncClient) -> None:
    server.configure(fail_429=0.2, fail_5xx=0.2, fault_seed=7, latency="fixed:0.2")
    for i in range(3):
        assert fal.subscribe(T2I, {"prompt": f"retry {i}", "seed": i})["seed"] == i
    info = server.requests()
    assert info["rejected"].get("429", 0) + info["rejected"].get("5xx", 0) > 0
    assert info["total_requests"] == 3  # rejected submits created nothing


def test_python_async_client(server: EmulatorServer, fal: fal_client.SyncClient) -> None:
    async def go() -> list[Any]:
        client = fal_client.AsyncClient()
        return list(await asyncio.gather(*(client.subscribe(T2I, {"prompt": f"a{i}"}) for i in range(4))))

    outs = asyncio.run(go())
    assert len({o["images"][0]["url"] for o in outs}) == 4


def test_seed_page_examples(server: EmulatorServer, fal: fal_client.SyncClient) -> None:
    server.configure(latency="0")
    pro = SEED_EXAMPLES[PRO_T2I]
    assert len(pro["prompt"]) > 4000 and pro["image_size"] == {"height": 2048, "width": 2048}
    out = fal.subscribe(PRO_T2I, pro)
    img = out["images"][0]
    data = httpx.get(img["url"]).content
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and img["content_type"] == "image/png"
    assert Image.open(io.BytesIO(data)).size == (2048, 2048) == (img["width"], img["height"])

    updates: list[Any] = []
    edit = fal.subscribe(EDIT, SEED_EXAMPLES[EDIT], with_logs=True, on_queue_update=updates.append)
    assert (edit["images"][0]["width"], edit["images"][0]["height"]) == (1024, 1024)
    final = updates[-1]
    assert isinstance(final, fal_client.Completed)
    assert any("1024x1024" in log["message"] for log in final.logs or [])


def _npm_install() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required for the JS client test (.ci/run installs them)")
    if (JS_DIR / "node_modules" / "@fal-ai" / "client" / "package.json").exists():
        return
    proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"npm install failed: {proc.stderr[-500:]}")


def test_js_client() -> None:
    _npm_install()
    with EmulatorServer(latency="fixed:1.2", log_steps=3) as server:
        proc = subprocess.run(["node", str(JS_DIR / "fal_js_client.mjs"), server.url], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        info = server.requests()
    sub = report["subscribe"]
    assert sub["data"]["seed"] == 9 and sub["data"]["images"][0]["width"] == 512
    assert any(m.startswith("step ") for m in sub["logs"]) and sub["statuses"][-1] == "COMPLETED"
    assert report["streaming"]["statuses"][-1] == "COMPLETED" and report["streaming"]["seed"] == 1
    q = report["queue"]
    assert q["status"]["status"] == "COMPLETED" and q["resultRequestId"] == q["requestId"] and q["seed"] == 2
    assert report["upload"]["body"] == "hello emulator"
    assert report["invalid"] == {
        "thrown": True,
        "name": "ValidationError",
        "status": 422,
        "body": {"detail": [{"loc": ["body", "prompt"], "msg": "must not be empty", "type": "value_error"}]},
    }
    recs = {r["request_id"]: r for r in info["requests"]}
    assert recs[report["cancel"]["requestId"]]["cancelled"] is True
    assert info["counts"]["stream"] >= 1
    assert recs[q["requestId"]]["headers"].get("x-fal-queue-priority") == "normal"
