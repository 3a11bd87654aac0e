"""The gateway answers the way fal's live service does (README: "fal, as the live service behaves"), through the
real stack (Redis, S3, the fal emulator, a worker, the gateway):

* ``sync_mode`` results carry the images as data URIs of falq's S3 copies;
* a moderated prompt finishes COMPLETED with ``content_policy_violation`` and its result is
  fal's 422 content-checker answer;
* the SSE status stream sends each log line once, in order (new entries only per event).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import fal_client
import fal_client.client as fal_client_module
import httpx
import pytest

from falq.gateway import GatewayServer
from falq.shared.storage.s3 import Storage
from falq.testing.stack import DevStack
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(90)

KEY = "falq-gw-semantics-key-77"
AUTH = {"Authorization": f"Key {KEY}"}
T2I = "fal-ai/qwen-image-2/text-to-image"
MODERATE = "[[moderate]]"


@pytest.fixture
def gw(clean_stack: DevStack) -> Iterator[GatewayServer]:
    clean_stack.emu.configure(small_images=True)
    clean_stack.start_worker(concurrency=10)
    with GatewayServer(clean_stack.settings(), api_keys=[KEY]) as server:
        yield server


@pytest.fixture
def fal(gw: GatewayServer, monkeypatch: pytest.MonkeyPatch) -> fal_client.SyncClient:
    """A stock fal_client whose queue host is the gateway and whose FAL_KEY is a falq API key."""
    monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", f"{gw.url}/")
    monkeypatch.setenv("FAL_KEY", KEY)
    return fal_client.SyncClient()


def submit(gw: GatewayServer, data: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(f"{gw.url}/{T2I}", json=data, headers=AUTH, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def wait_completed(status_url: str, timeout: float = 45) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        resp = httpx.get(status_url, params={"logs": "1"}, headers=AUTH, timeout=30)
        return resp.json() if resp.status_code == 200 else None  # type: ignore[no-any-return]

    return wait_for(done, timeout=timeout, interval=0.1, what="COMPLETED")  # type: ignore[no-any-return]


def s3_bytes(stack: DevStack, image: dict[str, Any]) -> bytes:
    data = Storage(stack.settings()).get_bytes(image["s3"]["key"])
    assert hashlib.sha256(data).hexdigest() == image["s3"]["sha256"]
    return data


@pytest.mark.timeout(60)
def test_sync_mode_answers_data_uris_of_the_s3_copies(fal: fal_client.SyncClient, clean_stack: DevStack) -> None:
    out = fal.subscribe(T2I, arguments={"prompt": "a paper boat", "seed": 3, "image_size": "square",
                                        "num_images": 2, "sync_mode": True})
    assert out["seed"] == 3 and len(out["images"]) == 2
    for image in out["images"]:
        match = re.fullmatch(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)", image["url"])
        assert match, image["url"][:80]
        assert match.group(1) == image["content_type"]
        data = base64.b64decode(match.group(2), validate=True)
        assert hashlib.sha256(data).hexdigest() == image["s3"]["sha256"]
        assert data == s3_bytes(clean_stack, image) and len(data) == image["file_size"]
        assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff" or data[:4] == b"RIFF"
    assert out["images"][0]["s3"]["key"] != out["images"][1]["s3"]["key"]

    plain = fal.subscribe(T2I, arguments={"prompt": "a paper boat", "seed": 3, "image_size": "square"})
    url = plain["images"][0]["url"]
    assert re.match(r"https?://", url) and not url.startswith("data:")
    assert url.startswith(f"{clean_stack.s3.url}/{clean_stack.bucket}/") and "X-Amz-Signature=" in url
    assert httpx.get(url, timeout=30).content == s3_bytes(clean_stack, plain["images"][0])


@pytest.mark.timeout(60)
def test_moderated_prompt_is_fals_422_content_policy_violation(gw: GatewayServer, fal: fal_client.SyncClient,
                                                              clean_stack: DevStack) -> None:
    sub = submit(gw, {"prompt": f"a cat {MODERATE}", "seed": 1})
    status = wait_completed(sub["status_url"])
    assert status["status"] == "COMPLETED", status
    assert status["error_type"] == "content_policy_violation", status
    assert status["error"]

    resp = httpx.get(sub["response_url"], headers=AUTH, timeout=30)
    assert resp.status_code == 422, resp.text
    assert resp.headers["x-fal-error-type"] == "content_policy_violation"
    assert resp.headers["x-fal-request-id"] == sub["request_id"]
    detail = resp.json()["detail"]
    assert isinstance(detail, list) and detail[0]["type"] == "content_policy_violation"
    assert detail[0]["loc"] == ["body", "prompt"] and detail[0]["msg"]
    assert detail[0]["categories"] == ["sexual"]  # the emulator's checker category, carried through falq

    rec = httpx.get(f"{gw.url}/v1/jobs/{sub['request_id']}", headers=AUTH, timeout=30).json()
    assert rec["state"] == "failed" and rec["error_type"] == "content_policy_violation", rec

    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        fal.result(T2I, sub["request_id"])
    assert exc.value.status_code == 422
    handle = fal.submit(T2I, {"prompt": f"a dog {MODERATE}"})
    with pytest.raises(fal_client.FalClientHTTPError) as via_get:
        handle.get()
    assert via_get.value.status_code == 422

    # An unmoderated prompt of the same shape is fine: the refusal is the marker's doing.
    ok = submit(gw, {"prompt": "a cat", "seed": 1})
    assert wait_completed(ok["status_url"]).get("error_type") is None
    assert httpx.get(ok["response_url"], headers=AUTH, timeout=30).status_code == 200


def read_sse(url: str, timeout: float = 45) -> tuple[list[dict[str, Any]], int]:
    """Every ``data:`` event of one SSE connection (parsed as the spec says) and the count of comments."""
    events: list[dict[str, Any]] = []
    comments = 0
    data: list[str] = []
    with httpx.stream("GET", url, params={"logs": "1"}, headers=AUTH, timeout=timeout) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith(":"):
                comments += 1
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line == "" and data:
                events.append(json.loads("\n".join(data)))
                data = []
    if data:
        events.append(json.loads("\n".join(data)))
    return events, comments


@pytest.mark.timeout(60)
def test_sse_stream_sends_each_log_line_once_in_order(gw: GatewayServer, clean_stack: DevStack) -> None:
    clean_stack.emu.configure(latency="fixed:3")
    sub = submit(gw, {"prompt": "streamed logs", "image_size": "square"})
    events, _ = read_sse(sub["status_url"] + "/stream")
    statuses = [e["status"] for e in events]
    assert statuses[-1] == "COMPLETED" and statuses.count("COMPLETED") == 1, statuses
    streamed = [entry["message"] for e in events for entry in (e.get("logs") or [])]

    final = wait_completed(sub["status_url"])
    expected = [entry["message"] for entry in final["logs"]]
    steps = [m for m in expected if re.fullmatch(r"step \d+/\d+", m)]
    assert len(steps) >= 5, expected  # the emulator logged a step line per step
    assert [int(m.split()[1].split("/")[0]) for m in steps] == list(range(1, len(steps) + 1))
    assert streamed == expected, f"stream sent {streamed}\nrecord has {expected}"
    assert len(streamed) == len(set(streamed))  # every line exactly once

    # A second connection after the end repeats the record's tail once (its first event), nothing more.
    again, _ = read_sse(sub["status_url"] + "/stream")
    assert len(again) == 1 and [x["message"] for x in again[0]["logs"]] == expected


@pytest.mark.timeout(60)
def test_polled_logs_keep_their_timestamps_across_record_updates(gw: GatewayServer, clean_stack: DevStack) -> None:
    from falq.shared.fal.client import parse_status
    from falq.workers.steps.follow import fresh_log_lines

    clean_stack.emu.configure(latency="fixed:3")
    sub = submit(gw, {"prompt": "polled logs", "image_size": "square"})

    def early() -> dict[str, Any] | None:
        body = httpx.get(sub["status_url"], params={"logs": "1"}, headers=AUTH, timeout=30).json()
        return body if body.get("logs") and body["status"] != "COMPLETED" else None

    first = wait_for(early, timeout=30, interval=0.05, what="IN_PROGRESS with logs")
    final = wait_completed(sub["status_url"])
    cursor: list[str] = []
    lines: list[str] = []
    for body in (first, final):
        fresh, cursor = fresh_log_lines(parse_status(body).logs, cursor, list(lines))
        lines += fresh
    assert lines == [entry["message"] for entry in final["logs"]]
