"""The fal emulator speaks fal's queue protocol: codes, bodies, scheduling, images, faults."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as plain `pytest` without installing the project
    sys.path.insert(0, str(ROOT))

from falq.emulator import EmulatorConfig, EmulatorServer  # noqa: E402
from falq.emulator.config import parse_latency  # noqa: E402
from falq.emulator.webhooks import WebhookSigner, verify  # noqa: E402

T2I = "fal-ai/qwen-image-2/text-to-image"
EDIT = "fal-ai/qwen-image-2/edit"
AUTH = {"Authorization": "Key test-key-1234"}

MakeServer = Callable[..., EmulatorServer]


@pytest.fixture
def make_server() -> Iterator[MakeServer]:
    servers: list[EmulatorServer] = []

    def make(**cfg: Any) -> EmulatorServer:
        server = EmulatorServer(**{"latency": "fixed:0.2", "log_steps": 3, **cfg}).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: MakeServer) -> EmulatorServer:
    return make_server()


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        yield c


def submit(c: httpx.Client, body: Any = None, endpoint: str = T2I, **kw: Any) -> dict[str, Any]:
    r = c.post(f"/{endpoint}", json={"prompt": "a red fox"} if body is None else body, **kw)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def wait_done(c: httpx.Client, sub: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(sub["status_url"], params={"logs": "1"})
        if r.status_code == 200:
            data: dict[str, Any] = r.json()
            return data
        assert r.status_code == 202
        time.sleep(0.02)
    raise AssertionError("request did not complete")


def png_of(width: int, height: int, color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


# --- protocol shapes -----------------------------------------------------------------------


def test_submit_status_result_roundtrip(server: EmulatorServer, client: httpx.Client) -> None:
    r = client.post(f"/{T2I}", json={"prompt": "a red fox", "seed": 3})
    sub = r.json()
    rid = sub["request_id"]
    assert r.headers["x-fal-request-id"] == rid
    assert sub["status"] == "IN_QUEUE" and sub["queue_position"] == 0 and sub["gateway_request_id"] == rid
    base = f"{server.url}/fal-ai/qwen-image-2/requests/{rid}"
    assert (sub["response_url"], sub["status_url"], sub["cancel_url"]) == (base, f"{base}/status", f"{base}/cancel")

    early = client.get(sub["response_url"])
    assert early.status_code == 400 and early.json() == {"detail": "Request is still in progress"}
    running = client.get(sub["status_url"])
    assert running.status_code == 202 and running.headers["content-type"].startswith("application/json")
    assert running.json()["status"] in ("IN_QUEUE", "IN_PROGRESS") and "logs" in running.json()

    done = wait_done(client, sub)
    assert done["status"] == "COMPLETED" and done["metrics"]["inference_time"] >= 0.15
    assert [log["message"] for log in done["logs"]][-3:] == ["step 1/3", "step 2/3", "step 3/3"]
    assert {"level", "source", "timestamp"} <= set(done["logs"][0])
    res = client.get(sub["response_url"])
    assert res.status_code == 200 and res.headers["x-fal-request-id"] == rid
    out = res.json()
    assert out["seed"] == 3
    (img,) = out["images"]
    assert img["url"].startswith(f"{server.url}/files/") and img["content_type"] == "image/png"
    assert (img["width"], img["height"]) == (1024, 1024)
    f = httpx.get(img["url"])
    assert f.status_code == 200 and f.headers["content-type"] == "image/png"
    assert int(f.headers["content-length"]) == len(f.content) == img["file_size"]
    assert Image.open(io.BytesIO(f.content)).size == (1024, 1024)


@pytest.mark.parametrize(("value", "has_logs"), [("1", True), ("true", True), ("0", False), ("false", False)])
def test_logs_param(client: httpx.Client, value: str, has_logs: bool) -> None:
    sub = submit(client)
    wait_done(client, sub)
    body = client.get(sub["status_url"], params={"logs": value}).json()
    assert (body["logs"] is not None) == has_logs
    assert client.get(sub["status_url"]).json()["logs"] is None


def test_full_path_and_trailing_slash_forms(client: httpx.Client) -> None:
    sub = submit(client, endpoint="fal-ai/qwen-image-2/pro/text-to-image")
    rid = sub["request_id"]
    wait_done(client, sub)
    for path in (
        f"/fal-ai/qwen-image-2/pro/text-to-image/requests/{rid}/status",
        f"/fal-ai/qwen-image-2/requests/{rid}/status/",
    ):
        assert client.get(path).status_code == 200
    assert client.get(f"/fal-ai/qwen-image-2/requests/{rid}/").status_code == 200
    assert client.get(f"/fal-ai/qwen-image-2/pro/text-to-image/requests/{rid}").status_code == 200


def test_not_found_unauthorized_locked(make_server: MakeServer) -> None:
    server = make_server(accepted_keys=["good-key-1", "locked-key-1"], locked_keys=["locked-key-1"])
    with httpx.Client(base_url=server.url, timeout=10) as c:
        good = {"Authorization": "Key good-key-1"}
        r = c.get("/fal-ai/qwen-image-2/requests/bogus/status", headers=good)
        assert r.status_code == 404 and r.json()["status"] == "NOT_FOUND"
        assert c.get("/fal-ai/qwen-image-2/requests/bogus", headers=good).status_code == 404
        assert c.put("/fal-ai/qwen-image-2/requests/bogus/cancel", headers=good).status_code == 404
        assert c.post("/fal-ai/flux/dev", json={"prompt": "x"}, headers=good).status_code == 404
        assert c.post("/fal-ai/qwen-image-2", json={"prompt": "x"}, headers=good).status_code == 404
        assert c.get("/fal-ai/other-app/requests/x/status", headers=good).status_code == 404
        no_auth = c.post(f"/{T2I}", json={"prompt": "x"})
        assert no_auth.status_code == 401 and "detail" in no_auth.json()
        assert c.post(f"/{T2I}", json={"prompt": "x"}, headers={"Authorization": "Key wrong"}).status_code == 401
        assert c.get("/fal-ai/qwen-image-2/requests/bogus/status").status_code == 401
        locked = c.post(f"/{T2I}", json={"prompt": "x"}, headers={"Authorization": "Key locked-key-1"})
        assert locked.status_code == 403 and locked.json()["detail"].startswith("User is locked. Reason: Exhausted")
        assert "x-fal-request-id" not in locked.headers
        server.configure(locked_status=402)  # the legacy answer stays available
        legacy = c.post(f"/{T2I}", json={"prompt": "x"}, headers={"Authorization": "Key locked-key-1"})
        assert legacy.status_code == 402 and legacy.json() == locked.json()
    assert server.requests()["total_requests"] == 0


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"prompt": ""}, ["body", "prompt"]),
        ({"negative_prompt": "x"}, ["body", "prompt"]),
        ({"prompt": "x", "num_images": 0}, ["body", "num_images"]),
    ],
)
def test_validation_error_path(client: httpx.Client, body: dict[str, Any], loc: list[str]) -> None:
    sub = submit(client, body)
    done = wait_done(client, sub)
    assert done["error"] == "Invalid status code: 422" and done["error_type"] == "validation_error"
    res = client.get(sub["response_url"])
    assert res.status_code == 422 and res.headers["x-fal-error-type"] == "validation_error"
    detail = res.json()["detail"]
    assert detail[0]["loc"] == loc and detail[0]["msg"] and detail[0]["type"]


def test_non_json_body_is_422(client: httpx.Client) -> None:
    r = client.post(f"/{T2I}", content=b"not json{", headers={"content-type": "application/json"})
    sub = r.json()
    wait_done(client, sub)
    res = client.get(sub["response_url"])
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body"]


def test_sse_stream(client: httpx.Client) -> None:
    sub = submit(client)
    frames = []
    with client.stream("GET", sub["status_url"] + "/stream", params={"logs": "1"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-fal-request-id"] == sub["request_id"]
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
    assert frames[-1]["status"] == "COMPLETED" and frames[-1]["metrics"]["inference_time"] > 0
    assert any(f["status"] == "IN_PROGRESS" for f in frames)
    # live mode: each event carries only the log entries not sent before on this connection
    logs = [log["message"] for f in frames for log in f["logs"] or []]
    assert logs[-3:] == ["step 1/3", "step 2/3", "step 3/3"] and len(logs) == len(set(logs)) and len(frames) >= 3


def test_sse_legacy_mode_repeats_frames(make_server: MakeServer) -> None:
    """``stream_mode="legacy"``: a full frame at least every stream_interval_s, all logs in each."""
    server = make_server(concurrency=1, latency="fixed:0.6", stream_interval_s=0.2, stream_mode="legacy")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        subs = [submit(c) for _ in range(3)]
        positions = []
        with c.stream("GET", subs[2]["status_url"] + "/stream") as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    frame = json.loads(line[6:])
                    positions.append(frame.get("queue_position", "-") if frame["status"] == "IN_QUEUE" else "-")
    assert positions[0] == 1 and 0 in positions and positions[-1] == "-"
    assert positions.count(1) >= 2  # heartbeats repeat the unchanged status while waiting
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        sub = submit(c)
        with c.stream("GET", sub["status_url"] + "/stream", params={"logs": "1"}) as r:
            frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [log["message"] for log in frames[-1]["logs"]][-3:] == ["step 1/3", "step 2/3", "step 3/3"]


def test_cancel_outcomes(make_server: MakeServer) -> None:
    server = make_server(concurrency=1, latency="fixed:2")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        running, queued = submit(c), submit(c)
        time.sleep(0.1)
        for sub in (queued, running):
            r = c.put(sub["cancel_url"])
            assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
            assert r.headers["x-fal-request-id"] == sub["request_id"]
            done = wait_done(c, sub, timeout=3)
            assert done["error"] == "Request was cancelled" and done["error_type"] == "client_cancelled"
            res = c.get(sub["response_url"])
            assert res.status_code == 499 and res.json()["error_type"] == "client_cancelled"
        again = c.put(running["cancel_url"])
        assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}
    states = {r["request_id"]: r for r in server.requests()["requests"]}
    assert all(states[s["request_id"]]["cancelled"] for s in (running, queued))


# --- scheduling ----------------------------------------------------------------------------


def test_concurrency_cap_and_queue_positions(make_server: MakeServer) -> None:
    server = make_server(concurrency=2, latency="fixed:0.3")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        subs = [submit(c) for _ in range(8)]
        assert [s["queue_position"] for s in subs] == [0, 0, 0, 1, 2, 3, 4, 5]
        statuses = [c.get(s["status_url"]).json() for s in subs]
        assert [s["status"] for s in statuses[:2]] == ["IN_PROGRESS"] * 2
        assert [s["queue_position"] for s in statuses[2:]] == [0, 1, 2, 3, 4, 5]
        other = {"Authorization": "Key another-key-99"}
        other_subs = [submit(c, headers=other) for _ in range(2)]
        assert c.get(other_subs[1]["status_url"], headers=other).json()["status"] == "IN_PROGRESS"
        for s in subs + other_subs:
            wait_done(c, s)
    info = server.requests()
    assert info["peak_in_flight"]["overall"] == 4
    assert sorted(info["peak_in_flight"]["per_key"].values()) == [2, 2]
    started = sorted(r["started_at"] for r in info["requests"])
    assert started[-1] - started[0] >= 0.8  # 8 requests through 2 slots of 0.3 s


def test_low_priority_waits_behind_normal(make_server: MakeServer) -> None:
    server = make_server(concurrency=1, latency="fixed:0.3")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        submit(c)
        low = submit(c, headers={"X-Fal-Queue-Priority": "low"})
        normal = submit(c)
        assert c.get(low["status_url"]).json()["queue_position"] == 1
        assert c.get(normal["status_url"]).json()["queue_position"] == 0
    recs = {r["request_id"]: r for r in server.requests()["requests"]}
    assert recs[low["request_id"]]["priority"] == "low"
    assert recs[low["request_id"]]["headers"]["x-fal-queue-priority"] == "low"


def test_start_timeout_while_queued(make_server: MakeServer) -> None:
    # COMPLETED with request_timeout on status, the 504 on the result only (the default answers
    # the 504 on status too: tests/integration/test_emulator_follows_live_fal.py)
    server = make_server(concurrency=1, latency="fixed:1.5", start_timeout_status="completed")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        first = submit(c)
        late = submit(c, headers={"X-Fal-Request-Timeout": "0.3"})
        done = wait_done(c, late, timeout=3)
        assert done["error_type"] == "request_timeout"
        res = c.get(late["response_url"])
        assert res.status_code == 504 and res.headers["x-fal-request-timeout-type"] == "user"
        assert wait_done(c, first)["status"] == "COMPLETED"


def test_latency_parsing() -> None:
    assert parse_latency("0").kind == "fixed" and parse_latency("uniform:5,15").b == 15
    assert parse_latency("lognormal:0.5,0.2").kind == "lognormal"
    for bad in ("uniform:5", "gamma:1,2", "fixed:-1", "uniform:3,1", "x"):
        with pytest.raises(ValueError):
            parse_latency(bad)


# --- images ------------------------------------------------------------------------------


def _image_bytes(c: httpx.Client, body: dict[str, Any], endpoint: str = T2I) -> tuple[dict[str, Any], bytes]:
    sub = submit(c, body, endpoint=endpoint)
    wait_done(c, sub)
    out: dict[str, Any] = c.get(sub["response_url"]).json()
    return out, httpx.get(out["images"][0]["url"]).content


def test_determinism_formats_and_sizes(make_server: MakeServer) -> None:
    server = make_server(latency="0")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        base = {"prompt": "a lighthouse at dusk", "seed": 11, "image_size": "landscape_4_3"}
        _, a = _image_bytes(c, base)
        _, b = _image_bytes(c, base)
        _, other = _image_bytes(c, {**base, "prompt": "a lighthouse at dawn"})
        assert a == b and a != other
        assert Image.open(io.BytesIO(a)).size == (1024, 768)
        out, jpg = _image_bytes(c, {**base, "output_format": "jpeg", "image_size": {"width": 640, "height": 480}})
        assert out["images"][0]["content_type"] == "image/jpeg" and jpg[:3] == b"\xff\xd8\xff"
        assert Image.open(io.BytesIO(jpg)).size == (640, 480)
        out, webp = _image_bytes(c, {"prompt": "x", "output_format": "webp", "num_images": 2})
        assert len(out["images"]) == 2 and webp[8:12] == b"WEBP" and isinstance(out["seed"], int)
        assert out["images"][0]["url"] != out["images"][1]["url"]


def test_sync_mode_returns_data_uri(client: httpx.Client) -> None:
    sub = submit(client, {"prompt": "x", "sync_mode": True, "output_format": "jpeg", "image_size": "square"})
    wait_done(client, sub)
    img = client.get(sub["response_url"]).json()["images"][0]
    assert img["url"].startswith("data:image/jpeg;base64,")
    data = base64.b64decode(img["url"].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (512, 512) and len(data) == img["file_size"]


def test_tiny_images(make_server: MakeServer) -> None:
    server = make_server(latency="0", tiny_images=True)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        out, data = _image_bytes(c, {"prompt": "x", "image_size": "landscape_16_9"})
    assert max(Image.open(io.BytesIO(data)).size) <= 64 and len(data) < 2000
    assert (out["images"][0]["width"], out["images"][0]["height"]) == (64, 36)


def test_edit_output_size_follows_last_input(server: EmulatorServer, client: httpx.Client) -> None:
    uri = "data:image/png;base64," + base64.b64encode(png_of(600, 400)).decode()
    out, _ = _image_bytes(client, {"prompt": "make it blue", "image_urls": [uri]}, EDIT)
    assert (out["images"][0]["width"], out["images"][0]["height"]) == (600, 400)
    init = client.post("/storage/upload/initiate?storage_type=fal-cdn-v3",
                       json={"content_type": "image/png", "file_name": "in.png"}).json()  # fmt: skip
    assert httpx.put(init["upload_url"], content=png_of(512, 900), headers={"content-type": "image/png"}).is_success
    out, _ = _image_bytes(client, {"prompt": "edit", "image_urls": [uri, init["file_url"]]}, EDIT)
    assert (out["images"][0]["width"], out["images"][0]["height"]) == (512, 900)
    sub = submit(client, {"prompt": "edit", "image_urls": ["https://example.invalid/a.png"]}, EDIT)
    done = wait_done(client, sub)
    assert any("1024x1024" in log["message"] for log in done["logs"])
    assert client.get(sub["response_url"]).json()["images"][0]["width"] == 1024


def test_storage_uploads(server: EmulatorServer, client: httpx.Client) -> None:
    init = client.post("/storage/upload/initiate?storage_type=fal-cdn-v3",
                       json={"content_type": "text/plain", "file_name": "hello.txt"}).json()  # fmt: skip
    assert httpx.put(init["upload_url"], content=b"Hello", headers={"content-type": "text/plain"}).is_success
    got = httpx.get(init["file_url"])
    assert got.content == b"Hello" and got.headers["content-type"].startswith("text/plain")
    token = client.post("/storage/auth/token?storage_type=fal-cdn-v3", json={}).json()
    assert token["base_url"] == server.url and token["token_type"] and token["expires_at"]
    up = httpx.post(f"{server.url}/files/upload", content=b"\x00\x01", headers={"X-Fal-File-Name": "a.bin"})
    assert httpx.get(up.json()["access_url"]).content == b"\x00\x01"
    assert httpx.get(f"{server.url}/files/nope.png").status_code == 404


# --- webhooks ------------------------------------------------------------------------------


class _Receiver:
    """A tiny webhook receiver on localhost that fails the first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.fail_left = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.calls.append((dict(self.headers.items()), body))
                code = 500 if outer.fail_left > 0 else 200
                outer.fail_left -= 1
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.calls) >= n, self.calls

    def close(self) -> None:
        self.httpd.shutdown()


def test_webhook_signed_and_retried(make_server: MakeServer) -> None:
    server = make_server(latency="0", webhook_retry_delay_s=0.05)
    receiver = _Receiver(fail_first=1)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
            sub = submit(c, {"prompt": "hook me", "seed": 5}, params={"fal_webhook": receiver.url})
            receiver.wait(2)
            jwks = httpx.get(f"{server.url}/.well-known/jwks.json").json()
            assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
            headers, body = receiver.calls[-1]
            assert verify(headers, body, jwks)
            payload = json.loads(body)
            assert payload["request_id"] == sub["request_id"] == payload["gateway_request_id"]
            assert payload["status"] == "OK" and payload["error"] is None and payload["payload"]["seed"] == 5
            tampered = body.replace(b'"seed":5', b'"seed":6')
            assert tampered != body and not verify(headers, tampered, jwks)
            assert not verify({**headers, "X-Fal-Webhook-Request-Id": "other"}, body, jwks)
            assert not verify(headers, body, WebhookSigner().jwks())
            assert not verify(headers, body, jwks, now=time.time() + 3600)
            bad = submit(c, {"prompt": ""}, params={"fal_webhook": receiver.url})
            receiver.wait(3)
            err = json.loads(receiver.calls[-1][1])
            assert err["request_id"] == bad["request_id"] and err["status"] == "ERROR"
            assert err["error"] == "Invalid status code: 422" and err["payload"]["detail"][0]["loc"][0] == "body"
        rec = next(r for r in server.requests()["requests"] if r["request_id"] == sub["request_id"])
        assert [d.get("status_code") for d in rec["webhook_deliveries"]] == [500, 200]
        assert rec["webhook_url"] == receiver.url
    finally:
        receiver.close()


# --- faults ----------------------------------------------------------------------------------


def test_fault_5xx_and_429_reject_submit(make_server: MakeServer) -> None:
    server = make_server(fail_5xx=1.0, fault_seed=1)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        r = c.post(f"/{T2I}", json={"prompt": "x"})
        assert r.status_code in (502, 503, 504) and "nginx" in r.text and "x-fal-request-id" not in r.headers
        server.configure(fail_5xx=0.0, fail_429=1.0, retry_after_rate=1.0)
        r = c.post(f"/{T2I}", json={"prompt": "x"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
    info = server.requests()
    assert info["total_requests"] == 0
    assert info["rejected_submits"] == {"5xx": 1, "429": 1} and info["counts"]["submit"] == 2


def test_fault_drop_is_a_transport_error(make_server: MakeServer) -> None:
    # A dropped connection reads as "disconnected without a response" or, when the close races
    # the client's read, "connection reset": either way a transport error after the request went out.
    dropped = (httpx.RemoteProtocolError, httpx.ReadError)
    server = make_server(drop=1.0, fault_calls=["submit", "status"])
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        with pytest.raises(dropped):
            c.post(f"/{T2I}", json={"prompt": "x"})
        assert server.requests()["total_requests"] == 0
        server.configure(fault_calls=["status"])
        sub = submit(c)
        with pytest.raises(dropped):
            c.get(sub["status_url"])
        server.configure(drop=0.0)
        assert wait_done(c, sub)["status"] == "COMPLETED"
    assert server.requests()["rejected"]["drop"] == 2


def test_fault_slow_and_file_faults(make_server: MakeServer) -> None:
    server = make_server(latency="0", slow=1.0, slow_s=0.4, fault_calls=["result"])
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        sub = submit(c)
        wait_done(c, sub)
        t0 = time.monotonic()
        url = c.get(sub["response_url"]).json()["images"][0]["url"]
        assert time.monotonic() - t0 >= 0.35
        server.configure(slow=0.0, fail_5xx=1.0, fault_calls=["file"])
        assert httpx.get(url).status_code >= 500
        assert c.get(sub["status_url"]).status_code == 200  # status calls are not in fault_calls
    assert server.requests()["faults"]["slow"] == 1


def test_fault_completed_error(make_server: MakeServer) -> None:
    server = make_server(completed_error=1.0)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        sub = submit(c)
        done = wait_done(c, sub)
        assert done["error"] == "Runner disconnected" and done["error_type"] == "runner_disconnected"
        res = c.get(sub["response_url"])
        assert res.status_code == 503 and res.headers["x-fal-error-type"] == "runner_disconnected"
        assert res.json() == {"detail": "Runner disconnected", "error_type": "runner_disconnected"}


def test_fault_draws_are_seeded(make_server: MakeServer) -> None:
    def codes(server: EmulatorServer) -> list[int]:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
            return [c.get("/fal-ai/qwen-image-2/requests/x/status").status_code for _ in range(30)]

    a = codes(make_server(fail_429=0.5, fault_seed=42))
    b = codes(make_server(fail_429=0.5, fault_seed=42))
    assert a == b and set(a) == {404, 429}


# --- admin -----------------------------------------------------------------------------------


def test_introspection(make_server: MakeServer) -> None:
    server = make_server(latency="0")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        first = submit(c, headers={"X-Falq-Job-Id": "job-1", "X-Falq-Attempt": "2", "X-Other": "no"})
        wait_done(c, first)
        c.get(first["response_url"])
        mark = time.time()
        second = submit(c, {"prompt": "second"})
        wait_done(c, second)
    info = server.requests()
    rec = info["requests"][0]
    assert rec["headers"] == {"x-falq-job-id": "job-1", "x-falq-attempt": "2"}
    assert rec["submitted_at"] <= rec["started_at"] <= rec["completed_at"]
    assert rec["endpoint"] == T2I and rec["input"] == {"prompt": "a red fox"} and rec["state"] == "COMPLETED"
    assert "test-key-1234" not in json.dumps(info) and rec["key"] and rec["cancelled"] is False
    assert info["counts"]["submit"] == 2 and info["counts"]["result"] == 1 and info["counts"]["status"] >= 2
    assert info["peak_in_flight"]["overall"] >= 1 and info["rejected"] == {}
    later = server.requests(since=mark)["requests"]
    assert [r["request_id"] for r in later] == [second["request_id"]]


def test_config_endpoints_and_reset(server: EmulatorServer, client: httpx.Client) -> None:
    cfg = client.get("/_emulator/config").json()
    assert cfg["concurrency"] == 40 and cfg["latency"] == "fixed:0.2"
    new = client.post("/_emulator/config", json={"concurrency": 3, "latency": "uniform:0.1,0.2"}).json()
    assert new["concurrency"] == 3 and new["log_steps"] == 3
    assert client.post("/_emulator/config", json={"latency": "gamma:1"}).status_code == 422
    assert client.post("/_emulator/config", json={"fail_5xx": 2}).status_code == 422
    assert client.post("/_emulator/config", json={"nope": 1}).status_code == 422
    submit(client)
    assert server.requests()["total_requests"] == 1
    server.reset()
    assert server.requests()["total_requests"] == 0


def test_config_model_update() -> None:
    cfg = EmulatorConfig(latency="0")
    assert cfg.updated({"concurrency": 0}).concurrency == 0 and cfg.concurrency == 40


def test_many_requests_stay_fast(make_server: MakeServer) -> None:
    server = make_server(latency="fixed:30", concurrency=10, log_steps=0)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        subs = [submit(c, {"prompt": f"p{i}"}) for i in range(600)]
        assert subs[-1]["queue_position"] == 589
        t0 = time.monotonic()
        for s in subs[::10]:
            assert c.get(s["status_url"]).status_code == 202
        t1 = time.monotonic()
        info = server.requests()
        t2 = time.monotonic()
    assert info["total_requests"] == 600 and info["peak_in_flight"]["overall"] == 10
    assert t1 - t0 < 2 and t2 - t1 < 2


def test_cli_main(tmp_path: Path) -> None:
    from falq.emulator.server import main

    assert main(["--latency", "gamma:1"]) == 2
    assert main(["--fail-5xx", "1.5"]) == 2
    proc = subprocess.Popen(
        [sys.executable, "-m", "falq.emulator", "--port", "0", "--latency", "0", "--concurrency", "3", "--tiny-images",
         "--small-images"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        cfg = httpx.get(f"{url}/_emulator/config", timeout=10).json()
        assert cfg["concurrency"] == 3 and cfg["tiny_images"] is True and cfg["latency"] == "0"
        assert cfg["small_images"] is True and cfg["locked_status"] == 403 and cfg["stream_mode"] == "live"
    finally:
        proc.terminate()
        proc.wait(10)
