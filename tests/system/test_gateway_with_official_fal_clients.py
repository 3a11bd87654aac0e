"""fal's official clients, unchanged apart from where they point, run against falq's gateway and
get images that are falq's S3 copies (presigned URLs, bytes identical to the objects)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import fal_client
import fal_client.client as fal_client_module
import httpx
import pytest

from falq.gateway import GatewayServer
from falq.shared.storage.s3 import Storage
from falq.testing.stack import DevStack
from tests.system.test_emulator_with_official_fal_clients import JS_DIR, _npm_install

KEY = "falq-gw-client-key-42"
T2I = "fal-ai/qwen-image-2/text-to-image"
PRO_T2I = "fal-ai/qwen-image-2/pro/text-to-image"


@pytest.fixture
def gw(clean_stack: DevStack) -> Iterator[GatewayServer]:
    clean_stack.start_worker(concurrency=20)
    with GatewayServer(clean_stack.settings(), api_keys=[KEY]) as server:
        yield server


@pytest.fixture
def fal(gw: GatewayServer, monkeypatch: pytest.MonkeyPatch) -> fal_client.SyncClient:
    """A stock fal_client whose queue host is the gateway and whose FAL_KEY is a falq API key."""
    monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", f"{gw.url}/")
    monkeypatch.setenv("FAL_KEY", KEY)
    return fal_client.SyncClient()


def assert_falq_copy(stack: DevStack, image: dict[str, Any]) -> None:
    """The image URL is a presigned URL of falq's bucket and serves the S3 object's bytes."""
    assert image["url"].startswith(f"{stack.s3.url}/{stack.bucket}/") and "X-Amz-Signature=" in image["url"]
    data = httpx.get(image["url"]).content
    assert data == Storage(stack.settings()).get_bytes(image["s3"]["key"])
    assert hashlib.sha256(data).hexdigest() == image["s3"]["sha256"] and image["s3"]["bucket"] == stack.bucket


def test_python_subscribe_with_logs(fal: fal_client.SyncClient, clean_stack: DevStack) -> None:
    updates: list[Any] = []
    out = fal.subscribe(T2I, {"prompt": "a paper crane", "seed": 4, "image_size": "square"}, with_logs=True,
                        on_queue_update=updates.append)
    assert out["seed"] == 4 and (out["images"][0]["width"], out["images"][0]["height"]) == (512, 512)
    assert_falq_copy(clean_stack, out["images"][0])
    assert isinstance(updates[-1], fal_client.Completed) and updates[-1].error is None
    assert any(isinstance(u, fal_client.Queued | fal_client.InProgress) for u in updates)
    assert any(log["message"].startswith("step") for log in updates[-1].logs or [])


def test_python_submit_status_result_cancel(fal: fal_client.SyncClient, gw: GatewayServer,
                                            clean_stack: DevStack) -> None:
    handle = fal.submit(PRO_T2I, {"prompt": "queued", "seed": 2}, priority="low")
    assert handle.status_url.startswith(f"{gw.url}/fal-ai/qwen-image-2/requests/")
    out = handle.get()
    assert out["seed"] == 2
    assert_falq_copy(clean_stack, out["images"][0])
    status = fal.status(PRO_T2I, handle.request_id, with_logs=True)
    assert isinstance(status, fal_client.Completed) and status.metrics["inference_time"] > 0
    assert fal.result(PRO_T2I, handle.request_id)["images"][0]["s3"] == out["images"][0]["s3"]

    clean_stack.stop_workers()  # nothing runs: the next job waits in falq's queue
    queued = fal.submit(T2I, {"prompt": "cancel me"})
    assert fal.status(T2I, queued.request_id) == fal_client.Queued(position=0)
    fal.cancel(T2I, queued.request_id)
    done = fal.status(T2I, queued.request_id)
    assert isinstance(done, fal_client.Completed) and done.error_type == "client_cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        fal.result(T2I, queued.request_id)
    assert exc.value.status_code == 499 and exc.value.error_type == "client_cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as invalid:
        fal.submit(T2I, {"prompt": ""})
    assert invalid.value.status_code == 422


def test_python_client_with_a_wrong_key_is_refused(fal: fal_client.SyncClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "not-a-falq-key")
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        fal_client.SyncClient().submit(T2I, {"prompt": "x"})
    assert exc.value.status_code == 401


def test_js_client(gw: GatewayServer, clean_stack: DevStack) -> None:
    _npm_install()
    proc = subprocess.run(["node", str(JS_DIR / "gateway_js_client.mjs"), gw.url, KEY], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("subscribe", "proxied"):
        sub = report[mode]
        assert sub["statuses"][-1] == "COMPLETED" and sub["data"]["seed"] == 9, mode
        assert_falq_copy(clean_stack, sub["data"]["images"][0])
    assert any(m.startswith("step") for m in report["subscribe"]["logs"])
    streamed = report["streaming"]
    assert streamed["statuses"][-1] == "COMPLETED" and streamed["seed"] == 1
    assert_falq_copy(clean_stack, streamed["image"])
    q = report["queue"]
    assert q["status"]["status"] == "COMPLETED" and q["resultRequestId"] == q["requestId"] and q["seed"] == 2
    assert report["cancel"]["ok"] is True
    assert report["invalid"]["thrown"] and report["invalid"]["name"] == "ValidationError"
    assert report["invalid"]["status"] == 422
    assert report["invalid"]["body"]["detail"][0]["loc"] == ["body", "prompt"]
