"""docker-compose.yml's contract, run natively (no Docker engine runs here): every falq service's
compose command starts with the compose environment, in the compose start order, and a job
submitted through the gateway ends in the bucket and in the catalogue.

What stands in for the containers: the compose file is interpolated from a test ``.env`` as
compose would (``${VAR:-default}``, ``${VAR:?error}``, ``$$``); the service hostnames are pointed
at local servers (``redis:6379`` at a password-protected redis-server started here,
``postgres:5432`` at 127.0.0.1:5432 with a database made for the test, ``s3:8333`` at the test
stack's moto S3, ``emulator:8790`` at its fal emulator), and each published port at a free one.
Each process gets only the compose environment (plus PATH and the worktree on PYTHONPATH) and an
empty HOME, so nothing falls back to a developer's files. The gateway's own healthcheck command
is run as the ``service_healthy`` gate; the migration must exit 0 before workers start.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import psycopg
import pytest
import redis
import yaml

from falq.shared.fal.endpoints import TEXT_TO_IMAGE
from falq.testing.stack import TEST_FAL_KEY, DevStack, free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
API_KEY = "falq-compose-contract-key-0123456789"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of one value (strings inside lists and mappings too)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name)
        empty = got is None or (op is not None and op.startswith(":") and got == "")
        if op and op.endswith("?") and empty:
            raise AssertionError(f"compose would stop: {name}: {arg}")
        if op and op.endswith("-") and empty:
            return arg
        return got or ""

    return _VAR.sub(sub, value)


def _depends(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()}


def _remap(text: str, hosts: dict[str, str]) -> str:
    for old, new in hosts.items():
        text = text.replace(f"//{old}", f"//{new}").replace(f"@{old}", f"@{new}")
    return text


class Compose:
    """The compose file's falq services, interpolated and remapped, started as local processes."""

    def __init__(self, dotenv: dict[str, str], hosts: dict[str, str], workdir: Path) -> None:
        raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        self.services: dict[str, Any] = interpolate(raw["services"], dotenv)
        self.hosts = hosts
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def falq_services(self) -> list[str]:
        return [n for n, s in self.services.items() if "build" in s and "dev" not in s.get("profiles", [])]

    def env(self, name: str) -> dict[str, str]:
        env = {k: _remap(str(v), self.hosts) for k, v in (self.services[name].get("environment") or {}).items()}
        home = self.workdir / f"home-{name}"
        home.mkdir(exist_ok=True)
        return {**env, "PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1"}

    def command(self, name: str) -> list[str]:
        """The service's command, its listening address and published port made local."""
        cmd = [str(c) for c in self.services[name]["command"]]
        out = []
        for i, arg in enumerate(cmd):
            if arg in ("0.0.0.0",) or arg == "--address=0.0.0.0":
                arg = arg.replace("0.0.0.0", "127.0.0.1")
            if (i and cmd[i - 1] == "--port") or arg.startswith("--port="):
                port = self.ports.setdefault(name, free_port())
                arg = f"--port={port}" if arg.startswith("--port=") else str(port)
            out.append(arg)
        return [sys.executable, "-m", "falq.cli", *out]

    def run_once(self, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(name), cwd=self.workdir, env=self.env(name), capture_output=True,
                              text=True, timeout=180)

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(self.command(name), cwd=self.workdir, env=self.env(name), stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        return proc

    def healthy(self, name: str) -> bool:
        """The service's own healthcheck command (a CMD form), run locally with its port remapped."""
        test = [str(t) for t in self.services[name]["healthcheck"]["test"]]
        assert test[0] == "CMD", test
        args = [sys.executable if a == "python" else a for a in test[1:]]
        if name in self.ports:
            args = [re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{self.ports[name]}", a) for a in args]
        return subprocess.run(args, env=self.env(name), capture_output=True, timeout=30).returncode == 0

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A redis-server with a password, like compose's (AOF and noeviction as its command says)."""
    password = secrets.token_hex(12)
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--requirepass", password, "--appendonly", "yes", "--dir", str(tmp_path),
                             "--maxmemory-policy", "noeviction", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=password)
    wait_for(lambda: _pings(client), timeout=15, what="redis-server")
    yield port, password
    proc.terminate()
    proc.wait(timeout=15)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def pg_db() -> Iterator[str]:
    name = f"falq_compose_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    yield name
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@pytest.mark.timeout(300)
def test_compose_services_run_the_whole_product(clean_stack: DevStack, local_redis: tuple[int, str], pg_db: str,
                                                tmp_path: Path) -> None:
    redis_port, redis_password = local_redis
    bucket = f"falq-compose-{uuid.uuid4().hex[:8]}"
    emu = clean_stack.emu.url.split("://", 1)[1]
    dotenv = {  # what an operator's .env says (.env.example's names), the dev profile's emulator as fal
        "FAL_KEY": TEST_FAL_KEY, "REDIS_PASSWORD": redis_password, "S3_ACCESS_KEY": "falq",
        "S3_SECRET_KEY": secrets.token_hex(16), "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "unused-trust",
        "POSTGRES_DB": pg_db, "FALQ_FLOWER_PASSWORD": secrets.token_hex(8), "FALQ_METRICS_TOKEN": secrets.token_hex(8),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(8), "FALQ_API_KEYS": API_KEY, "FALQ_S3_BUCKET": bucket,
        # An operator's .env says FALQ_MEDIA_HOSTS=emulator; natively, the emulator is this host.
        "FALQ_FAL_QUEUE_URL": "http://emulator:8790", "FALQ_MEDIA_HOSTS": emu.split(":")[0],
        "FALQ_ALLOW_PRIVATE_MEDIA": "true",
    }
    hosts = {"redis:6379": f"127.0.0.1:{redis_port}", "postgres:5432": "127.0.0.1:5432",
             "s3:8333": clean_stack.s3.url.split("://", 1)[1], "emulator:8790": emu}
    compose = Compose(dotenv, hosts, tmp_path)
    env_of = {name: compose.env(name) for name in compose.falq_services()}
    assert set(env_of) >= {"migrate", "worker", "gateway", "flower", "metrics"}
    assert len({e["FALQ_DATABASE_URL"] for e in env_of.values()}) == 1

    # The start order compose enforces: migrate after postgres, then the services that wait for it.
    assert _depends(compose.services["worker"])["migrate"] == "service_completed_successfully"
    migrated = compose.run_once("migrate")
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg_db}", connect_timeout=5) as conn:
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    from falq.shared.catalogue.engine import head

    assert revision == head()

    try:
        for name in compose.falq_services():
            if name != "migrate":
                compose.start(name)
        wait_for(lambda: compose.procs["gateway"].poll() is None and compose.healthy("gateway"), timeout=60,
                 what="the gateway's healthcheck")
        for name, proc in compose.procs.items():
            assert proc.poll() is None, (name, compose.log(name)[-2000:])
        gateway = f"http://127.0.0.1:{compose.ports['gateway']}"
        auth = {"Authorization": f"Key {API_KEY}"}
        made = httpx.post(f"{gateway}/v1/jobs", headers=auth, timeout=30,
                          json={"endpoint": TEXT_TO_IMAGE["standard"], "input": {"prompt": "a compose of foxes",
                                                                                 "seed": 5}})
        assert made.status_code in (200, 201, 202), made.text
        job_id = made.json()["id"]

        def finished() -> dict[str, Any] | None:
            rec = httpx.get(f"{gateway}/v1/jobs/{job_id}", headers=auth, timeout=10).json()
            return rec if rec["state"] in ("completed", "failed", "cancelled") else None

        rec = wait_for(finished, timeout=120, what="the job to end")
        assert rec["state"] == "completed", (rec, compose.log("worker")[-3000:])
        keys = [img["key"] for img in rec["outputs"]]
        assert keys

        s3 = boto3.client("s3", endpoint_url=clean_stack.s3.url, region_name="us-east-1",
                          aws_access_key_id="falq", aws_secret_access_key=dotenv["S3_SECRET_KEY"])
        for key in keys:
            assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0

        def in_catalogue() -> Any:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg_db}", connect_timeout=5) as conn:
                return conn.execute("SELECT state FROM jobs WHERE id = %s", (job_id,)).fetchone()

        assert wait_for(in_catalogue, timeout=60, what="the job in the catalogue") == ("completed",)
        # the catalogue's history through the gateway too, and one shared history registered
        client = redis.Redis(port=redis_port, password=redis_password)
        assert client.get("falq:catalogue:shared") == f"postgresql://postgres@127.0.0.1:5432/{pg_db}".encode()
        metrics = httpx.get(f"http://127.0.0.1:{compose.ports['metrics']}/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {dotenv['FALQ_METRICS_TOKEN']}"})
        assert metrics.status_code == 200 and "falq_redis_up 1.0" in metrics.text
        assert "falq_catalogue_outside_shared_history{" not in metrics.text
    finally:
        compose.stop()
    for name in compose.procs:
        log = compose.log(name)
        for secret in (redis_password, dotenv["S3_SECRET_KEY"], TEST_FAL_KEY, API_KEY):
            assert secret not in log, (name, "a secret in the log")
