"""Tenants and their API keys: the admin service's rules, the CLI (``falq tenants``) and the
gateway's ``/v1/tenants`` routes, key create/list/revoke, scopes, producers with ``tenant=``,
and the tenant in S3 keys, Flower's summary, metrics labels and the bulk results.

Over a private redis-server; the gateway is its ASGI app in process (fast, no workers).
"""

from __future__ import annotations

import asyncio
import json
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
from falq.producers.admin.tenants import DEFAULT_RULE, MAX_TENANTS_RULE, TENANT_EXISTS_RULE
from falq.shared.errors import InvalidInput, PermanentError, TenantNotFound
from falq.shared.jobs.records import JobRecord
from falq.shared.settings import Settings, get_settings, reset_settings
from falq.shared.tenants.fields import (
    ENDPOINTS_RULE,
    S3_PREFIX_RULE,
    SCOPES_RULE,
    TENANT_CAP_RULE,
    TENANT_PRIORITY_RULE,
    WEIGHT_RULE,
)
from falq.shared.tenants.store import NAME_RULE, ApiKeyStore, TenantStore, hash_key, s3_prefix_of

T2I = "fal-ai/qwen-image-2/text-to-image"
EDIT = "fal-ai/qwen-image-2/edit"
OPERATOR_KEY = "tenants-operator-key-0123456789"


@dataclass
class Env:
    settings: Settings
    r: redis.Redis
    admin: Admin
    _app: Any = None

    @property
    def app(self) -> Any:
        """The gateway's ASGI app, built on first use (building one costs a boto3 client)."""
        if self._app is None:
            from falq.gateway.app import create_app
            from falq.gateway.config import GatewaySettings

            self._app = create_app(self.settings, GatewaySettings(api_keys=OPERATOR_KEY), dispatch_hooks=False)
        return self._app

    def call(self, method: str, path: str, key: str = OPERATOR_KEY, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gw",
                                         headers={"Authorization": f"Key {key}"}) as c:
                return await c.request(method, path, **kw)

        return asyncio.run(go())

    def snapshot(self) -> dict[bytes, Any]:
        return {k: self.r.dump(k) for k in self.r.keys(f"{self.settings.key_prefix}:*")}


@pytest.fixture
def env(redis_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    tag = f"n{uuid.uuid4().hex[:10]}"
    for name, value in {"FALQ_REDIS_URL": redis_server, "FALQ_KEY_PREFIX": tag, "FALQ_DATA_DIR": str(tmp_path),
                        "FALQ_QUEUE_INTERACTIVE": f"{tag}.interactive", "FALQ_QUEUE_BULK": f"{tag}.bulk",
                        "FAL_KEY": "fal-tenants-secret"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FALQ_TENANT", raising=False)
    reset_settings()
    settings = get_settings()
    r = redis.Redis.from_url(redis_server)
    yield Env(settings, r, Admin(Falq(settings)))
    r.close()
    from falq.shared.catalogue.store import reset_catalogues

    reset_catalogues()
    reset_settings()


def cli(*argv: str, as_json: bool = True) -> tuple[int, Any]:
    """Run ``falq ARGV [--json]``; (exit code, parsed stdout or its text)."""
    import contextlib
    import io

    from falq.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*argv, "--json"] if as_json else list(argv))
    text = out.getvalue().strip()
    return code, json.loads(text) if text.startswith(("{", "[")) else text


# --- the rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fields", "expected"), [
    ("Shop", {}, [("name", NAME_RULE)]),
    ("-x", {}, [("name", NAME_RULE)]),
    ("a" * 41, {}, [("name", NAME_RULE)]),
    ("shop", {"weight": 0}, [("weight", WEIGHT_RULE)]),
    ("shop", {"weight": "1001"}, [("weight", WEIGHT_RULE)]),
    ("shop", {"weight": True}, [("weight", WEIGHT_RULE)]),
    ("shop", {"max_outstanding": -1, "weight": "nan"}, [("max_outstanding", TENANT_CAP_RULE), ("weight", WEIGHT_RULE)]),
    ("shop", {"endpoints": ["fal-ai/nope"]}, [("endpoints", f"'fal-ai/nope': {ENDPOINTS_RULE}")]),
    ("shop", {"s3_prefix": "../up"}, [("s3_prefix", S3_PREFIX_RULE)]),
    ("shop", {"s3_prefix": "a//b"}, [("s3_prefix", S3_PREFIX_RULE)]),
    ("shop", {"bogus": 1}, [("bogus", "unknown field; known: weight, max_outstanding, rate, budget_usd, endpoints, "
                                      "s3_prefix, priority")]),
    ("shop", {"priority": "urgent"}, [("priority", TENANT_PRIORITY_RULE)]),
    ("default", {}, [("name", TENANT_EXISTS_RULE)]),
])
def test_add_rules(env: Env, name: str, fields: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    before = env.snapshot()
    with pytest.raises(InvalidInput) as exc:
        env.admin.tenant_add(name, **fields)
    assert [(e.field, e.message) for e in exc.value.errors] == expected
    assert env.snapshot() == before


def test_add_set_list_remove_and_limits(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    made = env.admin.tenant_add("shop", weight="2", max_outstanding="8", rate="none", budget_usd=40,
                                endpoints=[EDIT], s3_prefix="shops/main")
    assert (made.weight, made.max_outstanding, made.rate, made.budget_usd, made.endpoints, made.prefix) == \
        (2.0, 8, None, 40.0, [EDIT], "shops/main")
    with pytest.raises(InvalidInput) as exc:
        env.admin.tenant_add("shop")
    assert exc.value.errors[0].message == TENANT_EXISTS_RULE
    changed = env.admin.tenant_set("shop", max_outstanding="none", endpoints=[])
    assert changed.max_outstanding is None and changed.endpoints == [] and changed.weight == 2.0
    assert TenantStore(env.r, prefix=env.settings.key_prefix).get("shop") == changed  # what workers read
    assert [t.name for t in env.admin.tenants_list()] == ["default", "shop"]
    with pytest.raises(TenantNotFound):
        env.admin.tenant_set("nope", weight=1)
    with pytest.raises(InvalidInput) as exc:
        env.admin.tenant_remove("default")
    assert exc.value.errors[0].message == DEFAULT_RULE
    env.admin.tenant_set("default", weight=3)  # default can be tuned, never removed
    monkeypatch.setattr("falq.producers.admin.tenants.MAX_TENANTS", 2)
    with pytest.raises(InvalidInput) as exc:
        env.admin.tenant_add("third")
    assert exc.value.errors[0].message == MAX_TENANTS_RULE
    env.admin.tenant_remove("shop")
    assert [t.name for t in env.admin.tenants_list()] == ["default"]


def test_remove_is_refused_while_jobs_are_unfinished(env: Env) -> None:
    env.admin.tenant_add("shop")
    token, _ = env.admin.key_create("shop", ["read"])
    job = Falq(env.settings, tenant="shop").generate("busy")
    with pytest.raises(InvalidInput) as exc:
        env.admin.tenant_remove("shop")
    assert exc.value.errors[0].field == "name" and job.id in exc.value.errors[0].message

    def fail(rec: JobRecord) -> None:
        rec.add_error(PermanentError("no"))
        rec.move("failed")

    env.admin.falq.store.update(job.id, fail)
    env.admin.tenant_remove("shop")
    assert env.call("GET", "/v1/jobs", token).status_code == 401  # its keys went with it
    assert env.admin.falq.store.get(job.id).tenant == "shop"  # the finished record stays


# --- keys ------------------------------------------------------------------------------------------


def test_keys_create_list_revoke_and_scopes(env: Env) -> None:
    env.admin.tenant_add("shop")
    with pytest.raises(InvalidInput) as exc:
        env.admin.key_create("shop", [])
    assert exc.value.errors[0].message == SCOPES_RULE
    with pytest.raises(InvalidInput):
        env.admin.key_create("shop", ["root"])
    with pytest.raises(TenantNotFound):
        env.admin.key_create("nope", ["read"])
    token, made = env.admin.key_create("shop", ["submit", "read"], label="checkout")
    assert token.startswith("falq_") and len(token) > 40
    # stored only as its sha256: the key itself is nowhere in Redis
    dump = b"".join(k + (env.r.dump(k) or b"") for k in env.r.keys("*"))
    assert token.encode() not in dump and env.r.exists(f"{env.settings.key_prefix}:apikey:{hash_key(token)}")
    [listed] = env.admin.key_list("shop")
    assert (listed.id, listed.label, listed.scopes, listed.last4) == (made.id, "checkout", ("submit", "read"),
                                                                       token[-4:])
    assert ApiKeyStore(env.r, prefix=env.settings.key_prefix).lookup(token) == listed

    assert env.call("GET", "/v1/jobs", token).status_code == 200
    assert env.call("PUT", "/v1/limits", token, json={"rate": 5}).status_code == 403
    env.admin.key_revoke("shop", made.id)
    assert env.call("GET", "/v1/jobs", token).status_code == 401  # at once: no cache
    with pytest.raises(InvalidInput) as exc:
        env.admin.key_revoke("shop", made.id)
    assert exc.value.errors[0].field == "key_id"


def test_configured_keys_are_the_default_tenants_admin(env: Env) -> None:
    assert env.call("PUT", "/v1/budget", json={"budget_usd": 12}).status_code == 200
    assert env.call("GET", "/v1/limits").status_code == 200
    job = env.call("POST", f"/{T2I}", json={"prompt": "x"}).json()
    assert env.admin.falq.store.get(job["request_id"]).tenant == "default"
    env.admin.tenant_add("shop")
    shop_admin, _ = env.admin.key_create("shop", ["admin"])
    for method, path, body in (("PUT", "/v1/limits", {"rate": 1}), ("PUT", "/v1/budget", {"budget_usd": 1}),
                               ("GET", "/v1/limits", None), ("POST", "/v1/tenants", {"name": "x"}),
                               ("PATCH", "/v1/tenants/shop", {"weight": 9}), ("DELETE", "/v1/tenants/shop", None),
                               ("POST", "/v1/tenants/shop/keys", {"scopes": ["admin"]})):
        resp = env.call(method, path, shop_admin, json=body)
        assert resp.status_code == 403, (method, path)
        assert "operator" in resp.json()["detail"]
    assert env.admin.tenant_get("shop").weight == 1.0


# --- the CLI and the gateway -----------------------------------------------------------------------


def test_cli_tenants_and_keys(env: Env) -> None:
    code, doc = cli("tenants", "add", "shop", "--weight", "2", "--endpoint", EDIT, "--budget", "40")
    assert code == 0 and doc["weight"] == 2.0 and doc["endpoints"] == [EDIT] and doc["budget_usd"] == 40.0
    code, doc = cli("tenants", "set", "shop", "--max-outstanding", "3", "--all-endpoints")
    assert code == 0 and doc["max_outstanding"] == 3 and doc["endpoints"] == []
    code, doc = cli("tenants", "set", "shop", "--weight", "0")
    assert code == 2 and doc["error"]["errors"] == [{"field": "weight", "message": WEIGHT_RULE}]
    code, doc = cli("tenants", "list")
    assert code == 0 and [t["name"] for t in doc] == ["default", "shop"]
    code, doc = cli("tenants", "key", "create", "shop", "--scope", "read", "--label", "dash")
    assert code == 0 and doc["key"].startswith("falq_") and doc["scopes"] == ["read"]
    token, key_id = doc["key"], doc["id"]
    code, listed = cli("tenants", "key", "list", "shop")
    assert code == 0 and listed == [{k: v for k, v in doc.items() if k != "key"}] and token not in str(listed)
    assert env.call("GET", "/v1/tenants/shop", token).json()["name"] == "shop"
    code, _ = cli("tenants", "key", "revoke", "shop", key_id, as_json=False)
    assert code == 0 and env.call("GET", "/v1/tenants/shop", token).status_code == 401
    code, _ = cli("tenants", "remove", "shop", as_json=False)
    assert code == 0 and [t.name for t in env.admin.tenants_list()] == ["default"]
    code, doc = cli("tenants", "remove", "default", as_json=False)
    assert code == 2


def test_gateway_tenant_routes(env: Env) -> None:
    created = env.call("POST", "/v1/tenants", json={"name": "shop", "weight": 2, "endpoints": [EDIT]})
    assert created.status_code == 201 and created.json()["weight"] == 2.0
    bad = env.call("POST", "/v1/tenants", json={"name": "Bad Name", "weight": 0})
    assert bad.status_code == 422
    assert {(tuple(d["loc"]), d["msg"]) for d in bad.json()["detail"]} == {
        (("body", "name"), NAME_RULE), (("body", "weight"), WEIGHT_RULE)}
    assert env.call("PATCH", "/v1/tenants/shop", json={"rate": 4}).json()["rate"] == 4.0
    assert env.call("PATCH", "/v1/tenants/nope", json={"rate": 4}).status_code == 404
    assert [t["name"] for t in env.call("GET", "/v1/tenants").json()["tenants"]] == ["default", "shop"]
    made = env.call("POST", "/v1/tenants/shop/keys", json={"scopes": ["read"], "label": "x"})
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    token = made.json()["key"]
    # a tenant's key sees its own tenant only; another name is 404, as an unknown one
    assert [t["name"] for t in env.call("GET", "/v1/tenants", token).json()["tenants"]] == ["shop"]
    assert env.call("GET", "/v1/tenants/default", token).json() == env.call("GET", "/v1/tenants/zzz", token).json() \
        | {"detail": "no tenant named 'default'"}
    assert env.call("GET", "/v1/tenants/default", token).status_code == 404
    assert [k["id"] for k in env.call("GET", "/v1/tenants/shop/keys").json()["keys"]] == [made.json()["id"]]
    assert env.call("DELETE", f"/v1/tenants/shop/keys/{made.json()['id']}").status_code == 200
    assert env.call("GET", "/v1/tenants/shop", token).status_code == 401
    assert env.call("DELETE", "/v1/tenants/default").status_code == 422
    assert env.call("DELETE", "/v1/tenants/shop").json() == {"removed": "shop"}


# --- producers -------------------------------------------------------------------------------------


def test_producers_with_tenant(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput) as exc:
        Falq(env.settings, tenant="nope").generate("x")
    assert [e.field for e in exc.value.errors] == ["tenant"]
    with pytest.raises(InvalidInput) as exc:
        Falq(env.settings, tenant="Bad!").generate("x")
    assert exc.value.errors[0].message == NAME_RULE
    env.admin.tenant_add("shop", endpoints=[EDIT])
    shop = Falq(env.settings, tenant="shop")
    with pytest.raises(InvalidInput) as exc:
        shop.generate("x")
    assert [e.field for e in exc.value.errors] == ["endpoint"]
    env.admin.tenant_add("wide")
    rec = Falq(env.settings, tenant="wide").generate("x").record()
    assert rec.tenant == "wide"
    assert Falq(env.settings).submit(T2I, {"prompt": "y"}, tenant="wide").record().tenant == "wide"
    assert Falq(env.settings).generate("z").record().tenant == "default"
    monkeypatch.setenv("FALQ_TENANT", "wide")
    reset_settings()
    assert Falq(get_settings()).generate("env").record().tenant == "wide"
    code, doc = cli("generate", "from the cli", "--tenant", "wide")
    assert code == 0 and doc["tenant"] == "wide"
    code, doc = cli("generate", "from the cli", "--tenant", "nope")
    assert code == 2 and doc["error"]["errors"][0]["field"] == "tenant"

    from falq.shared.engine.publish import summary

    assert summary(rec) == {"endpoint": T2I, "lane": "interactive", "tenant": "wide"}


def test_tenant_in_s3_keys_metrics_and_bulk_results(env: Env) -> None:
    from falq.producers.bulk.wait import result_row
    from falq.shared.metrics import Snapshot
    from falq.shared.storage.s3 import Storage

    store = TenantStore(env.r, prefix=env.settings.key_prefix)
    env.admin.tenant_add("shop")
    env.admin.tenant_add("studio", s3_prefix="teams/studio")
    assert (s3_prefix_of(store, "default"), s3_prefix_of(store, "shop"), s3_prefix_of(store, "studio"),
            s3_prefix_of(store, "gone")) == ("", "shop", "teams/studio", "gone")
    storage = Storage(Settings(s3_prefix="falq"), client=object())  # type: ignore[arg-type]
    assert storage.key_base(T2I, "ab12", 0.0, 1) == f"falq/{T2I}/1970/01/01/ab12/1"  # default: unchanged
    assert storage.key_base(T2I, "ab12", 0.0, 1, "teams/studio") == f"falq/teams/studio/{T2I}/1970/01/01/ab12/1"
    with pytest.raises(ValueError):
        storage.key_base(T2I, "ab12", 0.0, 1, "../up")

    snap = Snapshot(taken_at=0.0, states={}, counters={
        "tenant_finished|completed|shop": 3, "tenant_finished|completed|gone-1": 1,
        "tenant_finished|completed|gone-2": 2, "tenant_spend|shop": 0.5}, histograms={}, minutes={}, queue_depth={},
        unacked=None, limiter_slots={}, outstanding_cap=None, spend_today=0.0, spend_source="estimate",
        tenants=["default", "shop"])
    assert snap.labelled("tenant_finished") == {("completed", "shop"): 3, ("completed", "other"): 3}
    from falq.ops.exporter import counters

    samples = {(m.name, tuple(sorted(x.labels.items())), x.value) for m in counters(snap) for x in m.samples
               if m.name.startswith("falq_tenant")}
    assert ("falq_tenant_jobs_finished", (("state", "completed"), ("tenant", "other")), 3) in samples
    assert ("falq_tenant_spend_dollars", (("tenant", "shop"),), 0.5) in samples
    assert not any("gone" in str(x) for x in samples)

    rec = Falq(env.settings, tenant="shop").generate("x").record()
    assert result_row(1, None, rec.id, rec, None, lambda k: k)["tenant"] == "shop"  # type: ignore[arg-type]


def test_flower_shows_the_tenant() -> None:
    from types import SimpleNamespace

    from falq.ops.flowerconfig import format_task

    def shown(kwargs: str) -> str:
        return str(format_task(SimpleNamespace(name="falq.job", kwargs=kwargs)).kwargs)

    assert shown("{'endpoint': 'fal-ai/qwen-image-2/edit', 'lane': 'bulk', 'tenant': 'shop'}") == \
        "lane=bulk · qwen-image-2/edit · tenant=shop"
    assert shown("{'endpoint': 'fal-ai/qwen-image-2/edit', 'lane': 'bulk', 'tenant': 'default'}") == \
        "lane=bulk · qwen-image-2/edit"
    assert shown("{'endpoint': 'fal-ai/qwen-image-2/edit', 'lane': 'bulk', 'tenant': '<script>'}") == \
        "lane=bulk · qwen-image-2/edit"
