"""Tenant isolation on the gateway: the table of every job-id route x {own job, other tenant's
job, no such job} x {submit, read, admin key}.

For each cell it asserts the status code, and that another tenant's job cannot be told from a
job that does not exist: the answers are equal byte for byte (body and every header) once the
ids are replaced by a placeholder, and they cost exactly the same Redis commands (counted by
the server itself, ``INFO commandstats``): a deterministic check instead of wall-clock timing.
Then listings, searches, idempotency keys, bulk and retry-failed never reach another tenant's
jobs, and endpoints a tenant may not use are refused with 422 naming the field.

The gateway is its ASGI app called in process, over a private redis-server (no workers: the
jobs are put in their states directly), so the whole table runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from falq.producers import Falq
from falq.producers.admin import Admin
from falq.producers.client import TENANT_CACHE_S
from falq.shared.errors import PermanentError
from falq.shared.jobs.records import JobRecord, StoredImage
from falq.shared.settings import Settings, get_settings, reset_settings

T2I = "fal-ai/qwen-image-2/text-to-image"
EDIT = "fal-ai/qwen-image-2/edit"
APP = "fal-ai/qwen-image-2"
OPERATOR_KEY = "isolation-operator-key-0123456789"
SECRET_PROMPT = "the other tenant's secret prompt"
PLACEHOLDER = "J" * 32


@dataclass
class Env:
    settings: Settings
    r: redis.Redis
    admin: Admin
    shop: Falq
    other: Falq
    keys: dict[str, str]
    app: Any

    def failed_job(self, falq: Falq, prompt: str = "doomed", **kw: Any) -> JobRecord:
        job_id = falq.generate(prompt, **kw).id

        def fail(rec: JobRecord) -> None:
            rec.attempts = 1
            rec.add_error(PermanentError("fal said no"))
            rec.move("failed")

        return falq.store.update(job_id, fail)

    def call(self, method: str, path: str, key: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gw",
                                         headers={"Authorization": f"Key {key}"}) as c:
                return await c.request(method, path, **kw)

        return asyncio.run(go())

    def commands(self) -> dict[str, int]:
        stats = self.r.info("commandstats")
        return {k: int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",)}


@pytest.fixture
def env(redis_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    from falq.gateway.app import create_app
    from falq.gateway.config import GatewaySettings

    tag = f"t{uuid.uuid4().hex[:10]}"
    # The catalogue is on (its embedded SQLite file here): a job Redis lacks is looked up there too.
    for name, value in {"FALQ_REDIS_URL": redis_server, "FALQ_KEY_PREFIX": tag, "FALQ_DATA_DIR": str(tmp_path),
                        "FALQ_QUEUE_INTERACTIVE": f"{tag}.interactive", "FALQ_QUEUE_BULK": f"{tag}.bulk",
                        "FAL_KEY": "fal-isolation-secret", "AWS_ACCESS_KEY_ID": "test-access",
                        "AWS_SECRET_ACCESS_KEY": "test-secret", "FALQ_S3_ENDPOINT_URL": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    settings = get_settings()
    r = redis.Redis.from_url(redis_server)
    admin = Admin(Falq(settings))
    admin.tenant_add("shop")
    admin.tenant_add("other")
    keys = {scope: admin.key_create("shop", [scope], label=f"{scope} key")[0] for scope in ("submit", "read", "admin")}
    keys["other-admin"] = admin.key_create("other", ["admin"])[0]
    app = create_app(settings, GatewaySettings(api_keys=OPERATOR_KEY), dispatch_hooks=False)
    yield Env(settings, r, admin, Falq(settings, tenant="shop"), Falq(settings, tenant="other"), keys, app)
    r.close()
    from falq.shared.catalogue.store import reset_catalogues

    reset_catalogues()
    reset_settings()


# (name, method, path with {id}, scope it needs, status for the caller's own failed job)
ROUTES = [
    ("rest-get", "GET", "/v1/jobs/{id}", "read", 200),
    ("rest-cancel", "POST", "/v1/jobs/{id}/cancel", "submit", 200),
    ("rest-retry", "POST", "/v1/jobs/{id}/retry", "submit", 200),
    ("fal-status", "GET", f"/{APP}/requests/{{id}}/status", "read", 200),
    ("fal-status-endpoint-path", "GET", f"/{T2I}/requests/{{id}}/status?logs=1", "read", 200),
    ("fal-stream", "GET", f"/{APP}/requests/{{id}}/status/stream", "read", 200),
    ("fal-result", "GET", f"/{APP}/requests/{{id}}", "read", 500),
    ("fal-cancel", "PUT", f"/{APP}/requests/{{id}}/cancel", "submit", 400),
]
KEYS = ("submit", "read", "admin")


def normalised(resp: httpx.Response, job_id: str) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers with the job id (and a fresh correlation id) replaced."""
    body = resp.content.replace(job_id.encode(), PLACEHOLDER.encode())
    headers = []
    for k, v in resp.headers.multi_items():
        v = v.replace(job_id, PLACEHOLDER)
        if k == "x-fal-request-id" and v != PLACEHOLDER:
            v = "<fresh correlation id>"
        headers.append((k, v))
    return resp.status_code, body, headers


def test_isolation_table(env: Env) -> None:
    # Warm up every route once (connections, Lua scripts), so the counted calls below compare like with like.
    for _, method, path, _, _ in ROUTES:
        env.call(method, path.format(id=uuid.uuid4().hex), env.keys["admin"])
    cells = 0
    for name, method, path, scope, own_status in ROUTES:
        for key_scope in KEYS:
            key = env.keys[key_scope]
            allowed = key_scope == "admin" or key_scope == scope
            own = env.failed_job(env.shop, "mine")
            other = env.failed_job(env.other, SECRET_PROMPT, metadata={"owner": "other-tenant"})
            missing = uuid.uuid4().hex
            assert len(missing) == len(other.id) == 32

            answers = {}
            spent = {}
            for case, job_id in (("own", own.id), ("other", other.id), ("missing", missing)):
                before = env.commands()
                resp = env.call(method, path.format(id=job_id), key)
                after = env.commands()
                spent[case] = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
                answers[case] = (resp, job_id)
                where = f"{name} with a {key_scope} key on the {case} job"
                if not allowed:
                    assert resp.status_code == 403, where
                    assert resp.json() == {"detail": f"this API key lacks the '{scope}' scope"}, where
                elif case == "own":
                    assert resp.status_code == own_status, (where, resp.text)
                else:
                    assert resp.status_code == 404, (where, resp.text)
                text = resp.text + repr(resp.headers)
                assert SECRET_PROMPT not in text and "other-tenant" not in text and "'other'" not in text, where
                cells += 1

            other_answer = normalised(*answers["other"])
            assert other_answer == normalised(*answers["missing"]), f"{name}/{key_scope}: other vs missing differ"
            assert spent["other"] == spent["missing"], f"{name}/{key_scope}: Redis work differs: {spent}"
            if not allowed:  # the scope is refused before any job is looked at: no job read at all
                assert normalised(*answers["own"]) == other_answer
                assert spent["own"] == spent["other"]
            # the other tenant's job is untouched whatever was tried on it
            again = env.other.store.get(other.id)
            assert again.state == "failed" and again.version == other.version
    assert cells == len(ROUTES) * len(KEYS) * 3


def test_fal_not_found_body_is_fal_shaped_for_other_tenant(env: Env) -> None:
    other = env.failed_job(env.other, SECRET_PROMPT)
    resp = env.call("GET", f"/{APP}/requests/{other.id}/status", env.keys["admin"])
    assert resp.status_code == 404
    assert resp.json() == {"status": "NOT_FOUND", "detail": f"Request {other.id} not found"}
    rest = env.call("GET", f"/v1/jobs/{other.id}", env.keys["admin"])
    assert rest.status_code == 404 and rest.json()["status"] == "NOT_FOUND"
    # the other tenant itself sees it
    assert env.call("GET", f"/v1/jobs/{other.id}", env.keys["other-admin"]).json()["tenant"] == "other"


def test_listings_and_searches_hold_only_own_jobs(env: Env) -> None:
    mine = [env.failed_job(env.shop, f"mine {i}", metadata={"batch": "b1"}).id for i in range(3)]
    theirs = [env.failed_job(env.other, SECRET_PROMPT, metadata={"batch": "b1"}).id for _ in range(4)]
    default_job = env.failed_job(Falq(env.settings), "the operator's own").id
    for query in ("", "?state=failed", "?metadata.batch=b1", f"?endpoint={T2I}", "?limit=1000"):
        page = env.call("GET", f"/v1/jobs{query}", env.keys["read"]).json()
        ids = {j["id"] for j in page["jobs"]}
        assert ids == set(mine[:page["count"]]) | ids and ids <= set(mine), query
        assert all(j["tenant"] == "shop" for j in page["jobs"])
        assert page["scanned"] == len(mine)  # the others' records are not even counted
        assert SECRET_PROMPT not in str(page)
    assert {j["id"] for j in env.call("GET", "/v1/jobs", env.keys["other-admin"]).json()["jobs"]} == set(theirs)
    # FALQ_API_KEYS keys are the default tenant's: they list the default tenant's jobs only
    assert {j["id"] for j in env.call("GET", "/v1/jobs", OPERATOR_KEY).json()["jobs"]} == {default_job}


def test_idempotency_keys_are_per_tenant(env: Env) -> None:
    theirs = env.other.submit(T2I, {"prompt": SECRET_PROMPT}, idempotency_key="order-1")
    body = {"endpoint": T2I, "input": {"prompt": "mine"}, "idempotency_key": "order-1"}
    first = env.call("POST", "/v1/jobs", env.keys["submit"], json=body)
    assert first.status_code == 201, first.text  # created: the other tenant's key is not ours
    assert first.json()["id"] != theirs.id and first.json()["tenant"] == "shop"
    assert env.call("POST", "/v1/jobs", env.keys["submit"], json=body).json()["id"] == first.json()["id"]
    fal = env.call("POST", f"/{T2I}", env.keys["submit"], json={"prompt": "x"}, headers={"Idempotency-Key": "order-1"})
    assert fal.status_code == 200 and fal.json()["request_id"] == first.json()["id"]
    bulk = env.call("POST", "/v1/bulk", env.keys["submit"],
                    json=[{"endpoint": T2I, "input": {"prompt": "b"}, "id": "order-1"},
                          {"endpoint": T2I, "input": {"prompt": "c"}, "id": "fresh"}]).json()
    assert bulk["jobs"][0]["id"] == first.json()["id"] and theirs.id not in str(bulk)
    assert env.shop.store.get(bulk["jobs"][1]["id"]).tenant == "shop"
    # the default tenant's key layout is unchanged; another tenant's keys have their own namespace
    assert env.r.get(env.shop.store.keys.idem("order-1", "other")) == theirs.id.encode()
    assert env.r.get(f"{env.settings.key_prefix}:idem:order-1") is None


def test_retry_failed_and_cancel_stay_in_the_tenant(env: Env) -> None:
    mine = env.failed_job(env.shop, "mine")
    theirs = env.failed_job(env.other, SECRET_PROMPT)
    resp = env.call("POST", "/v1/retry-failed", env.keys["admin"])
    assert resp.status_code == 200 and resp.json()["retried"] == [mine.id]
    assert env.other.store.get(theirs.id).state == "failed"
    assert env.call("POST", "/v1/retry-failed", env.keys["submit"]).status_code == 403


def test_jobs_get_the_keys_tenant_and_its_endpoints(env: Env) -> None:
    env.admin.tenant_set("shop", endpoints=[EDIT])
    rest = env.call("POST", "/v1/jobs", env.keys["submit"], json={"endpoint": T2I, "input": {"prompt": "x"}})
    assert rest.status_code == 422
    [entry] = rest.json()["detail"]
    assert entry["loc"] == ["body", "endpoint"] and "may not use" in entry["msg"]
    fal = env.call("POST", f"/{T2I}", env.keys["submit"], json={"prompt": "x"})
    assert fal.status_code == 422 and fal.json()["detail"][0]["loc"] == ["path", "endpoint"]
    bulk = env.call("POST", "/v1/bulk", env.keys["submit"], json=[{"endpoint": T2I, "input": {"prompt": "x"}}])
    assert bulk.status_code == 422 and bulk.json()["detail"][0]["loc"] == ["body", 0, "endpoint"]
    env.admin.tenant_set("shop", endpoints=[])
    time.sleep(TENANT_CACHE_S)  # what a running producer (the gateway's) knows of a tenant is at most this old
    made = env.call("POST", f"/{T2I}", env.keys["submit"], json={"prompt": "x"})
    assert made.status_code == 200
    assert env.shop.store.get(made.json()["request_id"]).tenant == "shop"
    # each record carries its own tenant's S3 folder, as the producer saw the tenant
    assert env.shop.store.get(made.json()["request_id"]).folder == "shop"
    assert env.other.generate("mine").record().folder == "other"
    assert Falq(env.settings).generate("the default's").record().folder == ""
    # a read-only key cannot create jobs, a submit-only key cannot read them
    assert env.call("POST", f"/{T2I}", env.keys["read"], json={"prompt": "x"}).status_code == 403
    assert env.call("GET", "/v1/jobs", env.keys["submit"]).status_code == 403


def test_presigned_urls_only_for_own_images(env: Env) -> None:
    def completed(falq: Falq) -> JobRecord:
        job_id = falq.generate("img").id

        def done(rec: JobRecord) -> None:
            rec.outputs = [StoredImage(index=0, bucket="falq", key=f"falq/{falq.tenant}/x/{rec.id}/0.png", size=1,
                                       sha256="0" * 64, content_type="image/png", width=1, height=1)]
            rec.walk_to("completed")

        return falq.store.update(job_id, done)

    mine, theirs = completed(env.shop), completed(env.other)
    doc = env.call("GET", f"/v1/jobs/{mine.id}", env.keys["read"]).json()
    assert "X-Amz-Signature" in doc["result"]["images"][0]["url"] and doc["tenant"] == "shop"
    for path in (f"/v1/jobs/{theirs.id}", f"/{APP}/requests/{theirs.id}"):
        resp = env.call("GET", path, env.keys["admin"])
        assert resp.status_code == 404 and "X-Amz" not in resp.text and theirs.outputs[0].key not in resp.text


def test_archived_jobs_of_another_tenant_are_not_found_either(env: Env) -> None:
    """A finished job Redis no longer holds comes from the catalogue, still only for its tenant."""
    from falq.shared.catalogue.rows import row_from_record

    cat = env.shop.catalogue
    assert cat is not None
    mine, theirs = env.failed_job(env.shop, "mine"), env.failed_job(env.other, SECRET_PROMPT)
    cat.upsert([row_from_record(rec, archived_at=time.time()) for rec in (mine, theirs)])
    env.r.delete(env.shop.store.job_key(mine.id), env.shop.store.job_key(theirs.id))  # expired from Redis
    assert env.call("GET", f"/v1/jobs/{mine.id}", env.keys["read"]).json()["id"] == mine.id
    missing = uuid.uuid4().hex
    for path in ("/v1/jobs/{id}", f"/{APP}/requests/{{id}}/status", f"/{APP}/requests/{{id}}"):
        answers = [(env.call("GET", path.format(id=i), env.keys["read"]), i) for i in (theirs.id, missing)]
        assert answers[0][0].status_code == 404, path
        assert normalised(*answers[0]) == normalised(*answers[1]), path


def test_queue_position_counts_only_the_tenants_own_jobs(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fair dispatch a job waits in its tenant's ready set: its position says how many of
    its own tenant's jobs are ahead, and nothing about how busy the other tenants are."""
    for i in range(30):  # the other tenant's backlog: more than fair dispatch has room for
        env.other.generate(f"backlog {i}", lane="bulk")
    mine = [env.shop.generate(f"mine {i}", lane="bulk").id for i in range(3)]
    positions = [env.call("GET", f"/{APP}/requests/{job_id}/status", env.keys["read"]).json()["queue_position"]
                 for job_id in mine]
    waiting = env.r.zcard(env.shop.store.keys.fair_ready("bulk", "shop"))
    assert waiting == 3, waiting  # the check is about jobs that really wait in falq
    assert positions == [0] * (3 - waiting) + list(range(waiting))


BATCH_ROUTES = [
    ("batch-get", "GET", "/v1/batches/{id}", "read", 200),
    ("batch-results", "GET", "/v1/batches/{id}/results", "read", 200),
    ("batch-errors", "GET", "/v1/batches/{id}/errors", "read", 200),
    ("batch-cancel", "POST", "/v1/batches/{id}/cancel", "submit", 200),
    ("batch-retry", "POST", "/v1/batches/{id}/retry", "submit", 200),
]


def test_batch_isolation_table(env: Env) -> None:
    """The same table for the routes that take a batch id (``/v1/batches/{id}...``)."""

    def batch(key: str, prompt: str) -> str:
        body = "".join(json.dumps({"input": {"prompt": f"{prompt} {i}"}}) + "\n" for i in range(2))
        resp = env.call("POST", "/v1/batches?name=iso", key, content=body.encode())
        assert resp.status_code in (200, 201), resp.text
        return str(resp.json()["id"])

    for _, method, path, _, _ in BATCH_ROUTES:  # warm up
        env.call(method, path.format(id="b" + uuid.uuid4().hex[:24]), env.keys["admin"])
    for name, method, path, scope, own_status in BATCH_ROUTES:
        for key_scope in KEYS:
            key = env.keys[key_scope]
            allowed = key_scope == "admin" or key_scope == scope
            own = batch(env.keys["admin"], f"mine {uuid.uuid4().hex}")
            other = batch(env.keys["other-admin"], SECRET_PROMPT + uuid.uuid4().hex)
            missing = "b" + uuid.uuid4().hex[:24]
            assert len(missing) == len(other)
            answers, spent = {}, {}
            for case, bid in (("own", own), ("other", other), ("missing", missing)):
                before = env.commands()
                resp = env.call(method, path.format(id=bid), key)
                after = env.commands()
                spent[case] = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
                answers[case] = (resp, bid)
                where = f"{name} with a {key_scope} key on the {case} batch"
                expected = 403 if not allowed else own_status if case == "own" else 404
                assert resp.status_code == expected, (where, resp.text)
                assert SECRET_PROMPT not in resp.text, where
            assert normalised(*answers["other"]) == normalised(*answers["missing"]), f"{name}/{key_scope}"
            assert spent["other"] == spent["missing"], f"{name}/{key_scope}: Redis work differs: {spent}"
