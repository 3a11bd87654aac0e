"""The HTTP gateway against a real stack: fal's queue protocol, falq's REST routes, auth, webhooks."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis

from falq.gateway import GatewayServer
from falq.shared.egress import verify
from falq.shared.storage.s3 import Storage
from falq.testing.stack import DevStack
from tests.conftest import wait_for

KEY = "falq-gw-key-0123456789"
AUTH = {"Authorization": f"Key {KEY}"}
SECRET = "gw-callback-secret"
T2I = "fal-ai/qwen-image-2/text-to-image"
APP = "fal-ai/qwen-image-2"


@pytest.fixture
def gw(clean_stack: DevStack) -> Iterator[GatewayServer]:
    settings = clean_stack.settings(FALQ_CALLBACK_SECRET=SECRET)
    with GatewayServer(settings, api_keys=[KEY, "second-key"], gateway_webhook_allow_private=True,
                       gateway_hook_poll_s=0.1, fal_jwks_url=f"{clean_stack.emu.url}/.well-known/jwks.json") as server:
        yield server


@pytest.fixture
def r(clean_stack: DevStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(clean_stack.redis.url)
    yield client
    client.close()


def snapshot(r: redis.Redis) -> dict[bytes, Any]:
    """Every key and its type: enough to see that nothing was enqueued or recorded."""
    return {k: r.type(k) for k in r.keys("*")}


def submit(gw: GatewayServer, data: dict[str, Any], endpoint: str = T2I, **kw: Any) -> httpx.Response:
    return httpx.post(f"{gw.url}/{endpoint}", json=data, headers={**AUTH, **kw.pop("headers", {})}, timeout=30, **kw)


def wait_done(gw: GatewayServer, status_url: str, timeout: float = 60) -> httpx.Response:
    return wait_for(lambda: (s := httpx.get(status_url, headers=AUTH)).status_code == 200 and s, timeout=timeout,
                    interval=0.1, what="COMPLETED")  # type: ignore[no-any-return]


def test_auth_refusals_and_public_probes(gw: GatewayServer) -> None:
    for headers in ({}, {"Authorization": "Key wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        resp = httpx.get(f"{gw.url}/v1/jobs", headers=headers)
        assert resp.status_code == 401 and "detail" in resp.json() and resp.headers["x-fal-request-id"]
        assert KEY not in resp.text
    assert httpx.post(f"{gw.url}/{T2I}", json={"prompt": "x"}).status_code == 401
    assert httpx.get(f"{gw.url}/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{gw.url}/v1/jobs", headers={"Authorization": "Key second-key"}).status_code == 200
    assert httpx.get(f"{gw.url}/healthz").json() == {"ok": True}
    assert httpx.get(f"{gw.url}/openapi.json").json()["openapi"] == "3.1.0"


def test_refuses_to_start_without_keys(clean_stack: DevStack, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Any) -> None:
    from falq.gateway.config import GatewayConfigError
    from falq.gateway.server import main

    with pytest.raises(GatewayConfigError):
        GatewayServer(clean_stack.settings(), api_keys=[])
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("FALQ_API_KEYS", " , ")
    monkeypatch.setenv("FALQ_REDIS_URL", clean_stack.redis.url)  # flushed: no tenant key either
    assert main(["--port", "0"]) == 2


def test_invalid_submit_is_422_and_changes_nothing(gw: GatewayServer, r: redis.Redis) -> None:
    before = snapshot(r)
    resp = submit(gw, {"prompt": "", "seed": -1, "bogus": 1})
    assert resp.status_code == 422
    locs = {tuple(d["loc"]) for d in resp.json()["detail"]}
    assert {("body", "prompt"), ("body", "seed"), ("body", "bogus")} <= locs
    assert submit(gw, {"prompt": "ok"}, headers={"X-Fal-Queue-Priority": "urgent"}).status_code == 422
    assert submit(gw, {"prompt": "ok"}, headers={"Idempotency-Key": "has space"}).status_code == 422
    assert submit(gw, {"prompt": "ok"}, params={"fal_webhook": "ftp://x"}).status_code == 422
    bad_json = httpx.post(f"{gw.url}/{T2I}", content=b"{nope", headers=AUTH)
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["type"] == "json_invalid"
    # Nested past Python's recursion limit, or an integer past its 4300 digits: still a 422, not a 500.
    for hostile in (b"[" * 100_000, b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}"):
        for url in (f"{gw.url}/{T2I}", f"{gw.url}/v1/jobs", f"{gw.url}/v1/bulk"):
            answer = httpx.post(url, content=hostile, headers=AUTH)
            assert answer.status_code == 422, (url, answer.status_code, answer.text[:200])
    assert submit(gw, {"prompt": "ok"}, headers={"X-Falq-Metadata": "[" * 100_000}).status_code == 422
    assert submit(gw, {"prompt": "x"}, endpoint="fal-ai/other-model").status_code == 404
    assert httpx.post(f"{gw.url}/v1/jobs", json={"endpoint": T2I, "input": {"prompt": ""}}, headers=AUTH
                      ).json()["detail"][0]["loc"] == ["body", "input", "prompt"]
    assert snapshot(r) == before


def test_fal_protocol_end_to_end_with_presigned_result(gw: GatewayServer, clean_stack: DevStack,
                                                       r: redis.Redis) -> None:
    clean_stack.start_worker(concurrency=10)
    resp = submit(gw, {"prompt": "a fox", "seed": 5, "image_size": "square"},
                  headers={"X-Fal-Queue-Priority": "low", "Idempotency-Key": "fox-5", "X-Falq-Metadata": '{"t":"1"}'})
    assert resp.status_code == 200
    sub = resp.json()
    rid = sub["request_id"]
    assert resp.headers["x-fal-request-id"] == rid == sub["gateway_request_id"]
    assert sub["status"] == "IN_QUEUE" and sub["queue_position"] >= 0
    assert sub["status_url"] == f"{gw.url}/{APP}/requests/{rid}/status"
    assert sub["cancel_url"] == f"{gw.url}/{APP}/requests/{rid}/cancel"
    again = submit(gw, {"prompt": "a fox", "seed": 5, "image_size": "square"}, headers={"Idempotency-Key": "fox-5"})
    assert again.json()["request_id"] == rid

    first = httpx.get(sub["status_url"], params={"logs": "0"}, headers=AUTH)
    assert first.status_code in (200, 202) and first.headers["x-fal-request-id"] == rid
    if first.status_code == 202:
        assert first.json()["status"] in ("IN_QUEUE", "IN_PROGRESS") and first.json()["logs"] is None
    done = wait_done(gw, sub["status_url"])
    body = done.json()
    assert body["status"] == "COMPLETED" and "error" not in body and body["metrics"]["inference_time"] > 0
    for form in (f"{gw.url}/{T2I}/requests/{rid}/status/", f"{gw.url}/{APP}/requests/{rid}/status"):
        for logs in ("1", "true"):
            st = httpx.get(form, params={"logs": logs}, headers=AUTH)
            assert st.status_code == 200 and st.json()["logs"], form
            assert set(st.json()["logs"][0]) == {"message", "level", "source", "timestamp"}

    result = httpx.get(sub["response_url"] + "/", headers=AUTH)
    assert result.status_code == 200 and result.headers["x-fal-request-id"] == rid
    out = result.json()
    assert out["seed"] == 5 and len(out["images"]) == 1
    img = out["images"][0]
    storage = Storage(clean_stack.settings())
    assert img["s3"]["bucket"] == clean_stack.bucket and img["url"].startswith(clean_stack.s3.url)
    data = httpx.get(img["url"]).content
    assert data == storage.get_bytes(img["s3"]["key"]) and hashlib.sha256(data).hexdigest() == img["s3"]["sha256"]
    assert (img["width"], img["height"], img["file_size"], img["content_type"]) == (512, 512, len(data), "image/png")

    rec = httpx.get(f"{gw.url}/v1/jobs/{rid}", headers=AUTH).json()
    assert rec["lane"] == "bulk" and rec["metadata"] == {"t": "1"} and rec["idempotency_key"] == "fox-5"
    assert rec["result"]["images"][0]["s3"] == img["s3"] and rec["fal_status"] == "COMPLETED"
    cancel = httpx.put(sub["cancel_url"], headers=AUTH)
    assert (cancel.status_code, cancel.json()) == (400, {"status": "ALREADY_COMPLETED"})

    missing = httpx.get(f"{gw.url}/{APP}/requests/nope/status", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["status"] == "NOT_FOUND"
    assert httpx.get(f"{gw.url}/fal-ai/other/requests/{rid}", headers=AUTH).status_code == 404
    assert httpx.get(f"{gw.url}/v1/jobs/nope", headers=AUTH).status_code == 404
    assert httpx.post(sub["status_url"], headers=AUTH).status_code == 405


def test_sse_status_stream(gw: GatewayServer, clean_stack: DevStack) -> None:
    clean_stack.start_worker(concurrency=10)
    sub = submit(gw, {"prompt": "streamed", "image_size": "square"}).json()
    frames: list[dict[str, Any]] = []
    with httpx.stream("GET", sub["status_url"] + "/stream", params={"logs": "1"}, headers=AUTH, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-fal-request-id"] == sub["request_id"]
        for line in resp.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
    statuses = [f["status"] for f in frames]
    assert statuses[-1] == "COMPLETED" and statuses.count("COMPLETED") == 1
    assert "IN_PROGRESS" in statuses or "IN_QUEUE" in statuses
    assert all(f["request_id"] == sub["request_id"] for f in frames)


def test_cancel_before_a_worker_picks_it_up(gw: GatewayServer, clean_stack: DevStack) -> None:
    from falq.producers import Falq
    from falq.producers.admin import Admin

    # One request outstanding at a time: fair dispatch hands the first job on, the others wait
    # in the tenant's ready set, and queue_position counts the jobs ahead of one there.
    Admin(Falq(clean_stack.settings())).limits_set(max_outstanding=1)
    sub = submit(gw, {"prompt": "cancel me"}).json()
    status = httpx.get(sub["status_url"], headers=AUTH)
    assert status.status_code == 202 and status.json()["queue_position"] == 0
    behind = [submit(gw, {"prompt": f"behind {i}"}).json() for i in range(3)]
    second = behind[0]
    # The dispatch room (the cap, plus what may wait for admission) takes one or two; the jobs
    # after them wait in the ready set, one behind the other.
    positions = [httpx.get(b["status_url"], headers=AUTH).json()["queue_position"] for b in behind]
    assert positions[0] == 0 and positions[2] == positions[1] + 1, positions
    resp = httpx.put(sub["cancel_url"], headers=AUTH)
    assert (resp.status_code, resp.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    done = httpx.get(sub["status_url"], headers=AUTH)
    assert done.status_code == 200
    assert done.json()["status"] == "COMPLETED" and done.json()["error_type"] == "client_cancelled"
    result = httpx.get(sub["response_url"], headers=AUTH)
    assert result.status_code == 499 and result.headers["x-fal-error-type"] == "client_cancelled"
    assert httpx.put(sub["cancel_url"], headers=AUTH).status_code == 400
    pending = httpx.get(second["response_url"], headers=AUTH)
    assert (pending.status_code, pending.json()) == (400, {"detail": "Request is still in progress"})


def test_rest_listing_and_metadata_search(gw: GatewayServer) -> None:
    ids = {}
    for i in range(5):
        body = {"endpoint": T2I, "input": {"prompt": f"p{i}"}, "metadata": {"batch": "b1" if i % 2 else "b2", "n": i}}
        resp = httpx.post(f"{gw.url}/v1/jobs", json=body, headers=AUTH)
        assert resp.status_code == 201 and resp.json()["state"] == "queued"
        ids[i] = resp.json()["id"]
        time.sleep(0.01)
    page = httpx.get(f"{gw.url}/v1/jobs", params={"metadata.batch": "b1"}, headers=AUTH).json()
    assert [j["id"] for j in page["jobs"]] == [ids[3], ids[1]] and page["next_until"] is None
    assert httpx.get(f"{gw.url}/v1/jobs", params={"metadata.n": "4", "state": "queued"},
                     headers=AUTH).json()["jobs"][0]["id"] == ids[4]
    assert httpx.get(f"{gw.url}/v1/jobs", params={"state": "failed"}, headers=AUTH).json()["count"] == 0
    first = httpx.get(f"{gw.url}/v1/jobs", params={"limit": "2"}, headers=AUTH).json()
    assert [j["id"] for j in first["jobs"]] == [ids[4], ids[3]] and first["next_until"] is not None
    rest = httpx.get(f"{gw.url}/v1/jobs", params={"until": str(first["next_until"])}, headers=AUTH).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[2], ids[1], ids[0]]
    assert httpx.get(f"{gw.url}/v1/jobs", params={"since": "1h"}, headers=AUTH).json()["count"] == 5
    for bad in ({"state": "nope"}, {"limit": "0"}, {"since": "yesterday-ish"}, {"until": "nan"}):
        assert httpx.get(f"{gw.url}/v1/jobs", params=bad, headers=AUTH).status_code == 422, bad
    again = httpx.post(f"{gw.url}/v1/jobs", json={"endpoint": T2I, "input": {"prompt": "k"}, "idempotency_key": "k1"},
                       headers=AUTH)
    same = httpx.post(f"{gw.url}/v1/jobs", json={"endpoint": T2I, "input": {"prompt": "k"}, "idempotency_key": "k1"},
                      headers=AUTH)
    assert (again.status_code, same.status_code) == (201, 200) and again.json()["id"] == same.json()["id"]
    cancelled = httpx.post(f"{gw.url}/v1/jobs/{ids[0]}/cancel", headers=AUTH).json()
    assert cancelled["state"] == "cancelled" and cancelled["error_type"] == "client_cancelled"


def test_bulk_validates_everything_first(gw: GatewayServer, r: redis.Redis) -> None:
    items: list[Any] = [
        {"endpoint": T2I, "input": {"prompt": "one"}, "id": "line-1", "metadata": {"src": "bulk"}},
        {"endpoint": T2I, "input": {"prompt": "", "num_images": 99}, "id": "line-2"},
        {"endpoint": "fal-ai/qwen-image-2/edit", "input": {"prompt": "two", "image_urls": ["https://x.test/a.png"]}},
        "not an object",
    ]
    before = snapshot(r)
    resp = httpx.post(f"{gw.url}/v1/bulk", json=items, headers=AUTH)
    assert resp.status_code == 422
    assert [i["index"] for i in resp.json()["invalid"]] == [1, 3]
    assert {tuple(d["loc"][:3]) for d in resp.json()["detail"]} >= {("body", 1, "input")}
    assert snapshot(r) == before
    good = [items[0], {"endpoint": T2I, "input": {"prompt": "fixed"}, "id": "line-2"}, items[2]]
    first = httpx.post(f"{gw.url}/v1/bulk", json=good, headers=AUTH).json()
    assert (first["created"], first["existing"]) == (3, 0)
    resend = httpx.post(f"{gw.url}/v1/bulk", json=good, headers=AUTH).json()
    assert (resend["created"], resend["existing"]) == (1, 2)  # the item without an id is a new job
    assert [j["id"] for j in resend["jobs"][:2]] == [j["id"] for j in first["jobs"][:2]]
    rec = httpx.get(f"{gw.url}/v1/jobs/{first['jobs'][0]['id']}", headers=AUTH).json()
    assert rec["lane"] == "bulk" and rec["metadata"] == {"src": "bulk"}
    assert httpx.post(f"{gw.url}/v1/bulk", json=[], headers=AUTH).status_code == 422


def test_failed_job_answers_fal_errors_and_retries(gw: GatewayServer, clean_stack: DevStack) -> None:
    clean_stack.emu.configure(completed_error=1.0)
    clean_stack.start_worker(concurrency=10, env={"FALQ_MAX_ATTEMPTS": "1"})
    sub = submit(gw, {"prompt": "doomed"}).json()
    body = wait_done(gw, sub["status_url"]).json()
    assert body["status"] == "COMPLETED" and body["error"] and body["error_type"]
    result = httpx.get(sub["response_url"], headers=AUTH)
    assert result.status_code >= 422 and result.headers["x-fal-error-type"] == body["error_type"]
    assert "detail" in result.json()
    listed = httpx.get(f"{gw.url}/v1/jobs", params={"state": "failed"}, headers=AUTH).json()
    assert [j["id"] for j in listed["jobs"]] == [sub["request_id"]]

    clean_stack.emu.configure(completed_error=0.0)
    retried = httpx.post(f"{gw.url}/v1/jobs/{sub['request_id']}/retry", headers=AUTH)
    assert retried.status_code == 200 and retried.json()["retried"] is True and retried.json()["state"] == "queued"
    assert httpx.post(f"{gw.url}/v1/jobs/{sub['request_id']}/retry", headers=AUTH).status_code in (200, 409)
    assert wait_done(gw, sub["status_url"]).json().get("error") is None
    assert httpx.get(sub["response_url"], headers=AUTH).status_code == 200
    assert httpx.post(f"{gw.url}/v1/retry-failed", params={"since": "1h"}, headers=AUTH).json() == \
        {"retried": [], "count": 0}
    assert httpx.post(f"{gw.url}/v1/retry-failed", params={"since": "whenever"}, headers=AUTH).status_code == 422


def test_limits_and_budget_round_trip(gw: GatewayServer) -> None:
    url = f"{gw.url}/v1/limits"
    put = httpx.put(url, json={"rate": 7.5, "burst": 2, "max_outstanding": 9,
                               "max_outstanding_per_endpoint": {"fal-ai/qwen-image-2/pro/edit": 4}}, headers=AUTH)
    assert put.status_code == 200
    cfg = httpx.get(url, headers=AUTH).json()["config"]
    assert cfg == {"rate": 7.5, "burst": 2, "max_outstanding": 9, "budget_daily": None,
                   "max_outstanding_per_endpoint": {"fal-ai/qwen-image-2/pro/edit": 4}}
    httpx.put(url, json={"max_outstanding_per_endpoint": {"fal-ai/qwen-image-2/pro/edit": None}}, headers=AUTH)
    assert httpx.get(url, headers=AUTH).json()["config"]["max_outstanding_per_endpoint"] == {}
    for bad in ({"rate": -1}, {"burst": 0}, {"max_outstanding_per_endpoint": {"nope": 1}}, {"colour": "red"}, [1]):
        resp = httpx.put(url, json=bad, headers=AUTH)
        assert resp.status_code == 422 and resp.json()["detail"], bad
    assert httpx.put(url, json={"resume": True}, headers=AUTH).json()["resumed"] == []

    budget = f"{gw.url}/v1/budget"
    assert httpx.put(budget, json={"budget_usd": 12.5}, headers=AUTH).json()["budget_usd"] == 12.5
    doc = httpx.get(budget, headers=AUTH).json()
    assert doc["budget_usd"] == 12.5 and doc["remaining_usd"] == 12.5 and doc["spent_usd"] == 0
    assert httpx.get(url, headers=AUTH).json()["config"]["budget_daily"] == 12.5
    assert httpx.put(budget, json={"budget_usd": None}, headers=AUTH).json()["budget_usd"] is None
    assert httpx.put(budget, json={"budget_usd": -3}, headers=AUTH).status_code == 422
    assert httpx.put(budget, content=b"nope", headers=AUTH).status_code == 422


def test_healthz_and_readyz(gw: GatewayServer, clean_stack: DevStack) -> None:
    Storage(clean_stack.settings()).ensure_bucket()
    assert httpx.get(f"{gw.url}/readyz").json() == {"ok": True, "checks": {"redis": "ok", "s3": "ok"}}
    dead = clean_stack.settings(FALQ_REDIS_URL="redis://127.0.0.1:1/0", FALQ_S3_BUCKET="no-such-bucket-here")
    with GatewayServer(dead) as down:
        resp = httpx.get(f"{down.url}/readyz", timeout=60)
        assert resp.status_code == 503 and resp.json()["ok"] is False
        assert all(v.startswith("unavailable") for v in resp.json()["checks"].values())
        assert httpx.get(f"{down.url}/healthz").status_code == 200
        assert httpx.get(f"{down.url}/v1/jobs", timeout=60).status_code == 503


class _Receiver(BaseHTTPRequestHandler):
    hits: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook?x=1"
    server.shutdown()


def test_fal_webhook_on_submit_is_called_back_signed(gw: GatewayServer, clean_stack: DevStack, receiver: str) -> None:
    clean_stack.start_worker(concurrency=10, env={"FALQ_CALLBACK_SECRET": SECRET})  # workers deliver (outbox)
    ok = submit(gw, {"prompt": "call me", "seed": 11}, params={"fal_webhook": receiver}).json()
    cancelled = submit(gw, {"prompt": "never"}, params={"fal_webhook": receiver}).json()
    httpx.put(cancelled["cancel_url"], headers=AUTH)
    wait_for(lambda: len(_Receiver.hits) >= 2, timeout=60, what="two webhook deliveries")
    bodies = {}
    for headers, body in _Receiver.hits:
        assert verify(SECRET, body, headers["x-falq-signature"])
        doc = json.loads(body)
        bodies[doc["request_id"]] = doc
    good = bodies[ok["request_id"]]
    assert good["status"] == "OK" and good["error"] is None and good["gateway_request_id"] == ok["request_id"]
    assert good["payload"]["seed"] == 11 and httpx.get(good["payload"]["images"][0]["url"]).status_code == 200
    bad = bodies[cancelled["request_id"]]
    assert bad["status"] == "ERROR" and bad["payload"]["error_type"] == "client_cancelled"
    rec = wait_for(lambda: (d := httpx.get(f"{gw.url}/v1/jobs/{ok['request_id']}", headers=AUTH).json())
                   ["metadata"].get("fal_webhook") and d, what="outcome recorded")
    assert rec["metadata"]["fal_webhook"]["delivered"] is True and rec["callback_url"] is None
    time.sleep(0.5)
    assert len(_Receiver.hits) == 2  # delivered once each


def test_fal_webhook_receiver_verifies_and_stores(gw: GatewayServer, clean_stack: DevStack, r: redis.Redis) -> None:
    hook = f"{gw.url}/_falq/fal-webhook"
    resp = httpx.post(f"{clean_stack.emu.url}/{T2I}", params={"fal_webhook": hook}, json={"prompt": "pushed"},
                      headers={"Authorization": "Key emulator-user"})
    rid = resp.json()["request_id"]
    raw = wait_for(lambda: r.get(f"falq:falhook:{rid}"), timeout=30, what="the emulator's webhook")
    stored = json.loads(raw)
    assert stored["status"] == "OK" and stored["payload"]["images"][0]["url"].startswith(clean_stack.emu.url)

    signer = clean_stack.emu.emulator.signer  # the emulator's Ed25519 key, as fal's
    body = json.dumps({"request_id": "r-2", "status": "ERROR", "error": "Invalid status code: 422",
                       "payload": {"detail": []}}).encode()
    headers = {"Content-Type": "application/json", **signer.headers("r-2", "user-1", body)}
    assert httpx.post(hook, content=body, headers=headers).status_code == 200
    assert json.loads(r.get("falq:falhook:r-2") or b"{}")["status"] == "ERROR"
    replay = httpx.post(hook, content=body, headers=headers)
    assert (replay.status_code, replay.json()["detail"]) == (401, "replay")
    tampered = httpx.post(hook, content=body + b" ", headers=signer.headers("r-3", "user-1", body))
    assert (tampered.status_code, tampered.json()["detail"]) == (401, "bad_signature")
    stale = signer.headers("r-4", "user-1", body, timestamp=int(time.time()) - 3600)
    assert httpx.post(hook, content=body, headers=stale).json()["detail"] == "stale"
    assert httpx.post(hook, content=body).json()["detail"] == "missing_header"
    assert r.get("falq:falhook:r-3") is None and r.get("falq:falhook:r-4") is None
