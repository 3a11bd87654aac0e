"""Growing past one host: the gateway starts on tenant keys alone, and a second host with its
own embedded SQLite catalogue never consumes the shared history's archive entries (it says why
in its log, in ``falq doctor`` and in a metric). Real Redis, S3, emulator and worker processes,
falq's default settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from falq.ops.exporter import FalqCollector
from falq.producers import Falq
from falq.shared.catalogue.registry import CatalogueRegistry, identity_of
from falq.shared.jobs.store import JobStore
from falq.shared.tenants.store import ApiKeyStore
from falq.testing.stack import DevStack
from falq.workers.maintenance.archive import Archiver
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _env(stack: DevStack, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FALQ_API_KEYS", "FALQ_DATABASE_URL")}
    return {**env, **stack.env(**extra), "PYTHONUNBUFFERED": "1"}


def _gateway(stack: DevStack, tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "falq.cli", "api", "--port", "0"], cwd=tmp_path,
                            env=_env(stack, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_gateway_starts_on_tenant_keys_alone_and_refuses_with_no_way_in(clean_stack: DevStack,
                                                                        tmp_path: Path) -> None:
    refused = _gateway(clean_stack, tmp_path)
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2
    assert "no API keys configured" in err and "falq tenants key create" in err
    made = subprocess.run([sys.executable, "-m", "falq.cli", "tenants", "key", "create", "default", "--scope",
                           "admin", "--json"], cwd=tmp_path, env=_env(clean_stack), capture_output=True, text=True,
                          timeout=60, check=True)
    token = json.loads(made.stdout)["key"]
    gw = _gateway(clean_stack, tmp_path)
    try:
        assert gw.stdout is not None
        line = gw.stdout.readline()
        assert "listening on" in line, line + (gw.stderr.read() if gw.poll() is not None and gw.stderr else "")
        url = line.split("listening on ", 1)[1].split(" ", 1)[0]
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Key {token}"}).status_code == 200
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Key wrong"}).status_code == 401
        assert httpx.get(f"{url}/v1/jobs").status_code == 401
    finally:
        gw.terminate()
        gw.wait(timeout=30)


def test_api_key_store_knows_when_a_key_exists(r: redis.Redis) -> None:
    keys = ApiKeyStore(r, prefix="falq")
    assert not keys.any_key()
    r.sadd("falq:apikeys:shop", "x")  # a tenant's (empty) key set is not a key
    assert not keys.any_key()
    _token, made = keys.create("shop", ("submit",))
    assert keys.any_key()
    keys.revoke("shop", made.id)
    assert not keys.any_key()


def test_second_host_with_its_own_sqlite_file_stands_aside(clean_stack: DevStack, tmp_path: Path) -> None:
    """Host A (the first archiver) owns the shared history; a worker on host B without
    FALQ_DATABASE_URL runs jobs but never archives them: it logs why, `falq doctor` fails on B
    and names it, the exporter shows it. Host A's archiver archives B's jobs."""
    settings_a = clean_stack.settings(FALQ_HOST_NAME="host-a")
    store = JobStore(redis.Redis.from_url(clean_stack.redis.url), prefix=settings_a.key_prefix, archive=True)
    archiver_a = Archiver(store, settings_a, None)
    assert archiver_a.shares_history(force=True)
    shared = CatalogueRegistry(store.r, prefix=settings_a.key_prefix).shared()
    assert shared == archiver_a.identity() and shared.startswith("sqlite://host-a/")

    b_dir = tmp_path / "host-b-data"
    b_env = {"FALQ_HOST_NAME": "host-b", "FALQ_DATA_DIR": str(b_dir)}
    worker = clean_stack.start_worker(env=b_env, loglevel="INFO")
    job = Falq(clean_stack.settings(**b_env)).generate("a lighthouse at dusk", seed=3)
    assert job.wait(timeout=120).state == "completed"
    time.sleep(3)  # B's archiver would have archived it by now (it reads with a 1 s block)
    assert "archiver off" in clean_stack.worker_logs() and "host-b" in clean_stack.worker_logs()
    assert archiver_a.backlog() >= 1, "host B consumed an entry meant for the shared history"
    group = {g["name"].decode(): g for g in store.r.xinfo_groups(store.keys.ended)} \
        if store.r.exists(store.keys.ended) else {}
    consumers = store.r.xinfo_consumers(store.keys.ended, "archivers") if "archivers" in group else []
    assert all(int(c["pending"]) == 0 for c in consumers)

    doctor = subprocess.run([sys.executable, "-m", "falq.cli", "doctor", "--json"], cwd=tmp_path,
                            env=_env(clean_stack, **b_env), capture_output=True, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 1
    assert checks["shared-history"]["status"] == "fail"
    assert "host-b" in checks["shared-history"]["detail"] and "FALQ_DATABASE_URL" in checks["shared-history"]["fix"]

    gw = _gateway(clean_stack, tmp_path, FALQ_API_KEYS="operator-key-0123456789", **b_env)
    try:
        assert gw.stdout is not None and "listening on" in gw.stdout.readline()
    finally:
        gw.terminate()
        _, err = gw.communicate(timeout=30)
    assert "not the deployment's shared history" in err and "shows only part of the history" in err

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FalqCollector(settings_a))
    text = generate_latest(registry).decode()
    assert 'falq_catalogue_outside_shared_history{host="host-b",role="worker"} 1.0' in text
    assert 'falq_catalogue_outside_shared_history{host="host-b",role="gateway"} 1.0' in text
    assert 'host="host-a"' not in text

    wait_for(lambda: archiver_a.tick() and archiver_a.catalogue.get(job.id), timeout=30, what="host A archives")
    clean_stack.kill_worker(worker)


def test_a_database_server_takes_the_shared_history_over_from_a_file(r: redis.Redis) -> None:
    reg = CatalogueRegistry(r, prefix="falq", host="a")
    file_a = identity_of("sqlite:////srv/falq/catalogue.sqlite3", "a")
    file_b = identity_of("sqlite:////srv/falq/catalogue.sqlite3", "b")
    pg = identity_of("postgresql+psycopg://falq:s3cret@db:5432/falq", "a")
    assert pg == "postgresql://falq@db:5432/falq" and "s3cret" not in pg
    assert reg.claim(file_a) == file_a
    assert reg.claim(file_b) == file_a  # a second host's file never takes over
    assert reg.claim(pg) == pg  # a database server does
    assert reg.claim(file_a) == pg
    other_pg = identity_of("postgresql://falq@db2:5432/falq", "b")
    assert reg.claim(other_pg) == pg  # moving between servers is deliberate
    assert reg.reset() == pg and reg.claim(other_pg) == other_pg


@pytest.mark.parametrize("url", ["postgresql://u:pw@h/db", "sqlite:////x/y.sqlite3"])
def test_registration_never_stores_a_password(r: redis.Redis, url: str) -> None:
    reg = CatalogueRegistry(r, prefix="falq", host="h1")
    reg.register("gateway", identity_of(url, "h1"))
    raw = b"".join(r.hgetall("falq:catalogues").values())
    assert b"pw" not in raw
    [g] = reg.registrations()
    assert (g.role, g.host) == ("gateway", "h1")


def test_registrations_of_hosts_long_gone_are_forgotten(r: redis.Redis) -> None:
    old = {"catalogue": "sqlite://gone/x.sqlite3", "kind": "file", "seen": time.time() - 8 * 24 * 3600}
    week = {"catalogue": "sqlite://away/x.sqlite3", "kind": "file", "seen": time.time() - 2 * 24 * 3600}
    r.hset("falq:catalogues", mapping={"worker@gone": json.dumps(old), "worker@away": json.dumps(week),
                                       "worker@garbled": "{not json"})
    reg = CatalogueRegistry(r, prefix="falq", host="here")
    reg.register("worker", "postgresql://falq@db:5432/falq")
    assert reg.claim("postgresql://falq@db:5432/falq") == "postgresql://falq@db:5432/falq"
    hosts = {g.host: g for g in reg.registrations()}
    assert set(hosts) == {"here", "away"}  # the week-old one forgotten, the garbled one never shown
    assert hosts["away"].stale() and not hosts["here"].stale()
    assert reg.outside() == []  # a stale host is not counted as a split


def test_falq_db_shared_shows_and_resets_the_claim(clean_stack: DevStack, tmp_path: Path) -> None:
    settings = clean_stack.settings(FALQ_HOST_NAME="host-a")
    store = JobStore(redis.Redis.from_url(clean_stack.redis.url), prefix=settings.key_prefix, archive=True)
    archiver = Archiver(store, settings, None)
    assert archiver.shares_history(force=True)

    def db_shared(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "falq.cli", "db", "shared", "--json", *args], cwd=tmp_path,
                              env=_env(clean_stack), capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    shown = db_shared()
    assert shown["shared"] == archiver.identity()
    assert [(g["role"], g["host"], g["stale"]) for g in shown["registrations"]] == [("worker", "host-a", False)]
    assert db_shared("--reset")["reset"] == archiver.identity()
    assert db_shared()["shared"] is None
    assert archiver.shares_history(force=True)  # the next archiver claims it again
