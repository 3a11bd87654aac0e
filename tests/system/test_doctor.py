"""`falq doctor` against real servers: passes on the test stack, and fails (exit 1, the check
named, a fix given) for a stopped Redis, a missing bucket, an old catalogue revision and a fal
key the emulator refuses. Run as the `falq` command, with the stack's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from falq.testing.stack import TEST_FAL_KEY, DevStack, RedisServer

PG = "postgresql://postgres@127.0.0.1:5432"


def _doctor(stack: DevStack, cwd: Path, *, json_out: bool = True, **extra: str) -> tuple[int, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALQ_") and k != "FAL_KEY"}
    env.update(stack.env(**extra))
    args = [sys.executable, "-m", "falq.cli", "doctor"] + (["--json"] if json_out else [])
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if not json_out:
        return done.returncode, done.stdout
    doc = json.loads(done.stdout)
    assert doc["ok"] is (done.returncode == 0)
    return done.returncode, {c["name"]: c for c in doc["checks"]}


def _falq(stack: DevStack, cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env(**extra)}
    return subprocess.run([sys.executable, "-m", "falq.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=True)


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"falq_doctor_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    yield f"{PG}/{name}"
    from falq.shared.catalogue.store import reset_catalogues

    reset_catalogues()
    with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def test_doctor_passes_on_the_test_stack(clean_stack: DevStack, tmp_path: Path) -> None:
    from falq.shared.storage.s3 import Storage

    Storage(clean_stack.settings()).ensure_bucket()  # what the first worker does
    _falq(clean_stack, tmp_path, "db", "upgrade")
    _falq(clean_stack, tmp_path, "tenants", "key", "create", "default", "--scope", "admin")
    code, checks = _doctor(clean_stack, tmp_path)
    assert code == 0, [c for c in checks.values() if c["status"] not in ("pass", "skip")]
    for name in ("redis", "broker", "clock", "s3", "catalogue", "shared-history", "fal", "gateway-keys"):
        assert checks[name]["status"] == "pass", checks[name]
    assert checks["sentinel"]["status"] == "skip"
    assert "at revision" in checks["catalogue"]["detail"]
    assert "key accepted" in checks["fal"]["detail"]
    # the probes clean up after themselves: nothing left in the bucket nor in Redis
    import boto3
    import redis

    s3 = boto3.client("s3", endpoint_url=clean_stack.s3.url, region_name="us-east-1",
                      aws_access_key_id="falq-test-access", aws_secret_access_key="falq-test-secret-0123456789")
    listed = s3.list_objects_v2(Bucket=clean_stack.bucket, Prefix="falq/_doctor/")
    assert listed.get("KeyCount", 0) == 0
    assert not list(redis.Redis.from_url(clean_stack.redis.url).scan_iter(match="falq:doctor:*"))
    code, text = _doctor(clean_stack, tmp_path, json_out=False)
    assert code == 0 and "PASS  redis" in text and TEST_FAL_KEY not in text


def test_doctor_fails_on_a_stopped_redis(clean_stack: DevStack, tmp_path: Path) -> None:
    from falq.shared.storage.s3 import Storage

    Storage(clean_stack.settings()).ensure_bucket()
    stopped = RedisServer(tmp_path / "redis").start()
    url = stopped.url
    stopped.stop()
    code, checks = _doctor(clean_stack, tmp_path, FALQ_REDIS_URL=url)
    assert code == 1
    assert checks["redis"]["status"] == "fail" and "unreachable" in checks["redis"]["detail"]
    assert "FALQ_REDIS_URL" in checks["redis"]["fix"]
    assert checks["s3"]["status"] == "pass"  # the other checks still ran


def test_doctor_fails_on_a_missing_bucket(clean_stack: DevStack, tmp_path: Path) -> None:
    code, checks = _doctor(clean_stack, tmp_path, FALQ_S3_BUCKET=f"missing-{uuid.uuid4().hex[:8]}")
    assert code == 1
    assert checks["s3"]["status"] == "fail" and "does not exist" in checks["s3"]["detail"]
    assert "aws s3 mb" in checks["s3"]["fix"]


def test_doctor_fails_on_an_old_catalogue_revision(clean_stack: DevStack, tmp_path: Path, pg_url: str) -> None:
    from falq.shared.catalogue.engine import head

    _falq(clean_stack, tmp_path, "db", "upgrade", "--revision", "0001", FALQ_DATABASE_URL=pg_url)
    code, checks = _doctor(clean_stack, tmp_path, FALQ_DATABASE_URL=pg_url)
    assert code == 1
    cat = checks["catalogue"]
    assert cat["status"] == "fail" and "revision 0001" in cat["detail"] and head() in cat["detail"]
    assert "falq db upgrade" in cat["fix"]
    _falq(clean_stack, tmp_path, "db", "upgrade", FALQ_DATABASE_URL=pg_url)
    assert _doctor(clean_stack, tmp_path, FALQ_DATABASE_URL=pg_url)[1]["catalogue"]["status"] == "pass"


def test_doctor_fails_on_a_refused_fal_key(clean_stack: DevStack, tmp_path: Path) -> None:
    clean_stack.emu.configure(accepted_keys=[TEST_FAL_KEY])
    code, checks = _doctor(clean_stack, tmp_path, FAL_KEY="not-the-key")
    assert code == 1
    assert checks["fal"]["status"] == "fail" and "refused the key (401)" in checks["fal"]["detail"]
    assert "FAL_KEY" in checks["fal"]["fix"]
    assert "not-the-key" not in json.dumps(checks)
    assert _doctor(clean_stack, tmp_path)[1]["fal"]["status"] == "pass"
    assert clean_stack.emu.requests()["requests"] == []  # the probe started no generation


def test_doctor_follows_sentinel(clean_stack: DevStack, tmp_path: Path) -> None:
    """With a redis+sentinel:// URL: the sentinels agree on the master (pass); one sentinel down
    is a warning, not a failure; the Redis probe goes through Sentinel to the primary."""
    from tests.system.test_redis_failover import SentinelSet

    sentinels = SentinelSet(tmp_path / "redis").start()
    try:
        _, checks = _doctor(clean_stack, tmp_path, FALQ_REDIS_URL=sentinels.url)
        assert checks["sentinel"]["status"] == "pass" and "3 sentinel(s) agree" in checks["sentinel"]["detail"]
        assert checks["redis"]["status"] == "pass" and checks["clock"]["status"] == "pass"
        sentinels.kill("sentinel-2")
        _, checks = _doctor(clean_stack, tmp_path, FALQ_REDIS_URL=sentinels.url)
        assert checks["sentinel"]["status"] == "warn" and "1 of 3 sentinels" in checks["sentinel"]["detail"]
    finally:
        sentinels.stop()


def test_callback_settings_are_judged_against_where_fal_is() -> None:
    from falq.ops.doctor import check_callbacks
    from falq.shared.settings import Settings

    def judge(**fields: Any) -> Any:
        return check_callbacks(Settings(_env_file=None, **fields))  # type: ignore[call-arg]

    signed = {"callback_secret": "s" * 32}
    assert judge(**signed).status == "pass"
    assert judge().status == "warn" and "unsigned" in judge().detail
    local_hook = judge(fal_webhook_url="http://127.0.0.1:8080/_falq/fal-webhook", **signed)
    assert local_hook.status == "fail" and "fal cannot reach" in local_hook.detail
    # against a local emulator a local webhook is right
    assert judge(fal_webhook_url="http://127.0.0.1:8080/_falq/fal-webhook", fal_queue_url="http://127.0.0.1:8790",
                 **signed).status == "pass"
    assert judge(fal_webhook_url="https://falq.example.com/hooks", **signed).status == "warn"
    assert judge(fal_webhook_url="https://falq.example.com/_falq/fal-webhook", **signed).status == "pass"
    assert judge(callback_allow_private=True, **signed).status == "warn"
