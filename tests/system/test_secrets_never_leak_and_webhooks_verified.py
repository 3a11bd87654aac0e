"""Security: secrets never leak, fal webhooks are verified, S3 objects stay private.

The secrets test runs a small real batch with distinctive secret values and then greps
every place falq writes to or shows: worker logs, every Redis key and value (job records,
Celery messages decoded from base64, events on pub/sub), ``falq status/jobs --json``,
Flower's API and log, the metrics exporter, callback deliveries, S3 object metadata, the
workers' answers to Celery's remote-control ``inspect`` and their command lines.

SSRF checks of media URLs are in ``tests/unit/test_ssrf.py``; Flower refusing to start without
a password is in ``tests/integration/test_cli_options_and_errors.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from falq.emulator.webhooks import WebhookSigner
from falq.shared.egress import verify as verify_callback
from falq.shared.fal.webhook_verify import JwksUnavailable, WebhookRejected, WebhookVerifier
from falq.shared.storage.s3 import Storage
from falq.testing.stack import ROOT, TEST_FAL_KEY, DevStack, free_port
from tests.conftest import wait_for
from tests.support.hostile_fal import HostileFal

FALQ = [sys.executable, "-c", "import sys; from falq.cli.main import main; sys.exit(main())"]


class Receiver:
    """A local HTTP server that records every POST (callbacks, webhooks)."""

    def __init__(self) -> None:
        self.hits: list[tuple[dict[str, str], bytes]] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def service(args: list[str], env: dict[str, str], health: str, log: Any) -> subprocess.Popen[bytes]:
    """Start a falq HTTP service (Flower, the exporter) and wait until ``health`` answers."""
    proc = subprocess.Popen([*FALQ, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            return httpx.get(health, timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    wait_for(up, 60, what=f"{args[0]} to listen")
    assert proc.poll() is None, f"{args[0]} exited"
    return proc


def redis_text(url: str) -> str:
    """Every key and value in Redis as text, kombu envelopes' base64 bodies decoded."""
    r = redis.Redis.from_url(url)
    out = []
    readers: dict[str, Callable[[bytes], Any]] = {
        "string": lambda k: [r.get(k)], "hash": lambda k: [*r.hgetall(k).items()],
        "list": lambda k: r.lrange(k, 0, -1), "set": lambda k: list(r.smembers(k)),
        "zset": lambda k: r.zrange(k, 0, -1, withscores=True), "stream": lambda k: r.xrange(k),
    }
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        values = readers.get(kind, lambda k: [r.dump(k)])(key)
        out.append(f"{key!r} {kind} {values!r}")
        for value in values:
            out.extend(_decoded(value))
    r.close()
    return "\n".join(out)


def _decoded(value: Any) -> list[str]:
    """Base64 bodies inside JSON values (Celery messages on queues and in ``unacked``)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("body"), str):
                with contextlib.suppress(ValueError):
                    found.append(base64.b64decode(node["body"]).decode("utf-8", "replace"))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for item in value if isinstance(value, tuple) else (value,):
        with contextlib.suppress(TypeError, ValueError):
            walk(json.loads(item))
    return found


class PubSubTap:
    """Records every pub/sub message (Celery events, remote control) while running."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe("*")
        self.messages: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.pubsub.get_message(timeout=0.2)
            if msg and msg.get("type") == "pmessage":
                self.messages.append(repr(msg["data"]))
                self.messages.extend(_decoded(msg["data"]))

    def stop(self) -> str:
        self._stop.set()
        self.thread.join(5)
        self.pubsub.close()
        self.client.close()
        return "\n".join(self.messages)


@pytest.mark.timeout(240)
def test_secrets_never_appear_anywhere(clean_stack: DevStack, receiver: Receiver) -> None:
    from falq.producers import Falq
    from falq.shared.engine.celery_app import make_app

    tag = uuid.uuid4().hex
    secrets = {
        "FAL_KEY": f"falq-sekret-KEY-{tag}",
        "AWS_SECRET_ACCESS_KEY": f"s3-sekret-{tag}",
        "FALQ_FLOWER_PASSWORD": f"flower-sekret-{tag}",
        "FALQ_CALLBACK_SECRET": f"cb-sekret-{tag}",
        "FALQ_METRICS_TOKEN": f"metrics-sekret-{tag}",
    }
    clean_stack.extra_env.update(secrets)  # every falq process of this test gets them
    env = {**os.environ, **clean_stack.env(), "PYTHONUNBUFFERED": "1"}
    sources: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    with HostileFal() as fal, open(clean_stack.workdir / "services.log", "wb") as services_log:
        # A deployment of its own (its key prefix and queues) on the same Redis: with one prefix,
        # either side's dispatch tick could publish the other's jobs to its own queues and fal.
        echo = {"FALQ_FAL_QUEUE_URL": fal.url, "FALQ_MEDIA_HOSTS": fal.netloc, "FALQ_KEY_PREFIX": "falq-echo",
                "FALQ_QUEUE_INTERACTIVE": "falq-echo.interactive", "FALQ_QUEUE_BULK": "falq-echo.bulk"}
        try:
            flower_port, metrics_port = free_port(), free_port()
            flower = f"http://127.0.0.1:{flower_port}"
            procs.append(service(["flower", f"--port={flower_port}"], env, f"{flower}/healthcheck", services_log))
            exporter = f"http://127.0.0.1:{metrics_port}"
            procs.append(service(["metrics", "--port", str(metrics_port)], env, f"{exporter}/healthz", services_log))
            tap = PubSubTap(clean_stack.redis.url)

            falq = Falq(clean_stack.settings())
            jobs = [falq.generate(f"secret test {i}", seed=i) for i in range(3)]
            jobs.append(falq.generate("secret test callback", callback_url=receiver.url))
            echo_falq = Falq(clean_stack.settings(**echo))
            echoed = echo_falq.generate("case:echo-key quote my key back")
            sources["redis, messages queued"] = redis_text(clean_stack.redis.url)

            workers = [clean_stack.start_worker(concurrency=10, loglevel="INFO"),
                       clean_stack.start_worker(concurrency=5, env=echo, loglevel="INFO")]
            recs = [j.wait(60) for j in jobs]
            assert all(r.state == "completed" for r in recs), [r.errors for r in recs]
            echo_rec = echoed.wait(60)
            clean_stack.emu.configure(accepted_keys=["a-key-that-is-not-ours"])
            refused = falq.generate("secret test refused").wait(60)
            clean_stack.emu.configure(accepted_keys=None)
            wait_for(lambda: falq.job(jobs[3].id).record().metadata.get("callback"), 30, what="callback")

            # what the errors say: only the key's suffix, even when fal quotes the key back
            for rec in (refused, echo_rec):
                assert rec.state == "failed" and rec.error and rec.error.type == "fal_auth", rec.errors
                assert secrets["FAL_KEY"][-4:] in rec.error.message
            assert "[REDACTED]" in echo_rec.error.message  # type: ignore[union-attr]
            headers, body = receiver.hits[-1]
            assert verify_callback(secrets["FALQ_CALLBACK_SECRET"], body, headers["x-falq-signature"])

            ids = [r.id for r in [*recs, echo_rec, refused]]
            sources["worker logs"] = clean_stack.worker_logs()
            sources["redis, after the batch"] = redis_text(clean_stack.redis.url)
            sources["falq jobs --json"] = _cli(["jobs", "--json", "--limit", "100"], env)
            sources["falq jobs --state failed --errors"] = _cli(["jobs", "--state", "failed", "--errors"], env)
            for job_id, job_env in ((refused.id, env), (echo_rec.id, {**env, **echo})):
                sources[f"falq status {job_id} --json"] = _cli(["status", job_id, "--json"], job_env)
            sources["records"] = json.dumps([(echo_falq if i == echo_rec.id else falq).job(i).record().public()
                                             for i in ids])
            sources["callback deliveries"] = repr(receiver.hits)
            inspect = make_app(clean_stack.settings()).control.inspect(timeout=3)
            sources["celery inspect"] = repr([inspect.conf(), inspect.stats(), inspect.registered()])
            auth = ("falq", secrets["FALQ_FLOWER_PASSWORD"])
            wait_for(lambda: all(i in httpx.get(f"{flower}/api/tasks", auth=auth, timeout=10).text
                                 for i in ids), 30, what="Flower to see every job")
            sources["flower api"] = "\n".join(httpx.get(f"{flower}{path}", auth=auth, timeout=10).text
                                              for path in ("/api/tasks", "/api/workers", "/metrics", "/tasks"))
            bearer = {"Authorization": f"Bearer {secrets['FALQ_METRICS_TOKEN']}"}
            sources["falq metrics"] = httpx.get(f"{exporter}/metrics", headers=bearer, timeout=10).text
            storage = Storage(clean_stack.settings())
            sources["s3 metadata"] = repr([storage.head(o.key) for r in recs for o in r.outputs])
            sources["command lines"] = repr([Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in [*workers, *procs]])
            sources["pub/sub"] = tap.stop()
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(15)
    sources["flower and exporter logs"] = (clean_stack.workdir / "services.log").read_text(errors="replace")

    # the sources are real: each says something about this batch
    for name in ("worker logs", "redis, after the batch", "falq jobs --json", "flower api", "pub/sub"):
        assert recs[0].id in sources[name], f"{name} does not mention the batch; the grep would prove nothing"
    assert "falq_jobs_finished_total" in sources["falq metrics"]
    assert "falq.job" in sources["redis, messages queued"]  # decoded Celery messages
    leaks = [(name, var) for name, text in sources.items() for var, value in secrets.items() if value in text]
    assert not leaks, f"secrets found: {leaks}"


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([*FALQ, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.timeout(120)
def test_objects_are_private_and_shared_only_by_expiring_urls(clean_stack: DevStack) -> None:
    from falq.producers import Falq

    clean_stack.start_worker(concurrency=5)
    falq = Falq(clean_stack.settings(FALQ_PRESIGN_EXPIRY_S="777"))
    job = falq.generate("a private fox")
    rec = job.wait(60)
    assert rec.state == "completed", rec.errors
    s3 = Storage(falq.settings).client
    for obj in rec.outputs:
        acl = s3.get_object_acl(Bucket=obj.bucket, Key=obj.key)
        grants = [(g["Grantee"].get("ID"), g["Grantee"].get("URI"), g["Permission"]) for g in acl["Grants"]]
        assert grants == [(acl["Owner"]["ID"], None, "FULL_CONTROL")], grants  # no AllUsers, no public-read
    bucket_acl = s3.get_bucket_acl(Bucket=falq.settings.s3_bucket)
    assert all(g["Grantee"].get("ID") == bucket_acl["Owner"]["ID"] for g in bucket_acl["Grants"])
    for expires, url in ((777, job.result()[0]["presigned_url"]), (60, job.result(expires_s=60)[0]["presigned_url"])):
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Expires"] == [str(expires)] and "X-Amz-Signature" in query
        assert httpx.get(url, timeout=30).status_code == 200


# --- fal webhooks ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_fal_webhooks_are_verified(clean_stack: DevStack, receiver: Receiver) -> None:
    emu = clean_stack.emu.url
    fetches: list[str] = []
    http = httpx.Client(timeout=10, event_hooks={"request": [lambda req: fetches.append(str(req.url))]})
    r = redis.Redis.from_url(clean_stack.redis.url)
    verifier = WebhookVerifier(r, jwks_url=f"{emu}/.well-known/jwks.json", http=http)

    sub = httpx.post(f"{emu}/fal-ai/qwen-image-2/text-to-image", params={"fal_webhook": receiver.url},
                     json={"prompt": "a webhook fox"}, headers={"Authorization": f"Key {TEST_FAL_KEY}"}, timeout=10)
    request_id = sub.json()["request_id"]
    wait_for(lambda: receiver.hits, 30, what="the emulator's webhook delivery")
    headers, body = receiver.hits[0]
    assert json.loads(body)["request_id"] == request_id

    info = verifier.verify(headers, body)
    assert info.request_id == request_id and abs(info.timestamp - time.time()) < 60

    def refused(reason: str, hdrs: dict[str, str], data: bytes, **kw: Any) -> None:
        with pytest.raises(WebhookRejected) as exc:
            verifier.verify(hdrs, data, **kw)
        assert exc.value.reason == reason, exc.value

    refused("replay", headers, body)  # the very same delivery again
    refused("bad_signature", headers, body.replace(b'"OK"', b'"ERROR"'))  # tampered body
    refused("bad_signature", {**headers, "x-fal-webhook-timestamp": str(info.timestamp + 1)}, body)  # new timestamp
    refused("bad_signature", {**headers, "x-fal-webhook-request-id": "someone-else"}, body)
    forged = WebhookSigner().headers(request_id, headers["x-fal-webhook-user-id"], body)  # a key not in the JWKS
    refused("bad_signature", forged, body)
    refused("stale", headers, body, now=info.timestamp + 301)
    refused("stale", headers, body, now=info.timestamp - 301)
    refused("missing_header", {k: v for k, v in headers.items() if k != "x-fal-webhook-signature"}, body)
    refused("malformed", {**headers, "x-fal-webhook-signature": "zz"}, body)
    assert fetches == [f"{emu}/.well-known/jwks.json"]  # cached; forged signatures do not refetch

    # Replays are refused across verifiers (processes) sharing Redis.
    other = WebhookVerifier(r, jwks_url=f"{emu}/.well-known/jwks.json")
    with pytest.raises(WebhookRejected, match="already received"):
        other.verify(headers, body)
    r.close()


def test_webhook_key_rotation_and_jwks_outage() -> None:
    old, new = WebhookSigner(), WebhookSigner()
    served = [old.jwks()]
    http = httpx.Client(transport=httpx.MockTransport(lambda req: httpx.Response(200, json=served[-1])))
    seen: set[str] = set()

    class FakeRedis:
        def set(self, key: str, value: bytes, *, nx: bool, ex: int) -> bool:
            assert nx and ex >= 600
            if key in seen:
                return False
            seen.add(key)
            return True

    verifier = WebhookVerifier(FakeRedis(), jwks_url="https://jwks.test/jwks.json", http=http,  # type: ignore[arg-type]
                               min_refresh_s=0)
    body = b'{"status":"OK"}'
    verifier.verify(old.headers("r1", "u", body), body)
    served.append(new.jwks())  # fal rotates its key
    assert verifier.verify(new.headers("r2", "u", body), body).request_id == "r2"
    down = WebhookVerifier(FakeRedis(), jwks_url="http://127.0.0.1:9/jwks.json")  # type: ignore[arg-type]
    with pytest.raises(JwksUnavailable):
        down.verify(old.headers("r3", "u", body), body)
