"""The catalogue through the real parts: workers archive what they finish (rows and job.json),
and the CLI, ``Falq`` and the gateway find jobs there once Redis forgot them. PostgreSQL and
SQLite alike (each test its own database, see tests/system/test_catalogue.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from falq.shared.catalogue.engine import head, make_engine, upgrade
from falq.shared.catalogue.store import get_catalogue
from falq.shared.settings import reset_settings
from falq.testing.stack import DevStack
from tests.conftest import wait_for
from tests.system.test_catalogue import EP, Db, db  # noqa: F401 - the fixture, per dialect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(clean_stack: DevStack, db: Db, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:  # noqa: F811
    """The stack's environment with this test's database, also set for in-process CLIs."""
    extra = {"FALQ_DATABASE_URL": db.url, "FALQ_DATABASE_AUTO_UPGRADE": "always", "FALQ_ARCHIVED_TTL_S": "2",
             "FALQ_ARCHIVE_CLAIM_IDLE_S": "2"}
    clean_stack.extra_env.update(extra)
    full = clean_stack.env()
    for k, v in full.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    yield full
    reset_settings()


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from falq.cli.main import main

    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().out


def test_workers_archive_and_every_reader_falls_back(clean_stack: DevStack, env: dict[str, str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from falq.gateway import GatewayServer
    from falq.producers.client import Falq
    from falq.shared.storage.s3 import Storage

    settings = clean_stack.settings()
    clean_stack.start_worker(concurrency=20)
    falq = Falq(settings)
    done = [falq.generate(f"a lighthouse on a cliff, take {i}", seed=i, metadata={"project": "coast"})
            for i in range(3)]
    cancelled = falq.generate("a cancelled lighthouse", seed=9)
    falq.cancel(cancelled.id)
    recs = [h.wait(60) for h in done]
    assert all(r.state == "completed" for r in recs)
    cat = get_catalogue(settings)
    ids = {r.id for r in recs} | {cancelled.id}
    wait_for(lambda: {r.id for r in cat.search(_q())} >= ids, 30, what="the worker archived every job")
    # job.json beside the images, the row as committed
    storage = Storage(settings)
    doc = json.loads(storage.get_bytes(storage.job_json_key(EP, recs[0].id, recs[0].created_at)))
    assert doc["id"] == recs[0].id and doc["state"] == "completed" and doc["outputs"][0]["key"] == \
        recs[0].outputs[0].key
    assert doc["prompt"] == "a lighthouse on a cliff, take 0"
    # the Redis copies expire after FALQ_ARCHIVED_TTL_S; readers answer from the catalogue
    wait_for(lambda: not any(falq.store.exists(i) for i in ids), 15, what="the Redis copies to expire")
    code, out = _cli(["status", recs[0].id, "--json"], capsys)
    assert code == 0 and json.loads(out)["state"] == "completed"
    code, out = _cli(["jobs", "--text", "lighthouse cliff", "--since", "1h", "--json"], capsys)
    assert code == 0 and {j["id"] for j in json.loads(out)} == {r.id for r in recs}
    code, out = _cli(["jobs", "--state", "cancelled", "--json"], capsys)
    assert code == 0 and [j["id"] for j in json.loads(out)] == [cancelled.id]
    code, out = _cli(["report", "spend", "--by", "day,endpoint,metadata.project", "--format", "json"], capsys)
    spend = json.loads(out)
    assert code == 0 and [(g["endpoint"], g["metadata.project"], g["completed"]) for g in spend] == \
        [(EP, "coast", 3), (EP, None, 0)]  # the cancelled job has no project; NULLs last
    code, out = _cli(["report", "spend", "--by", "endpoint", "--format", "csv"], capsys)
    assert code == 0 and out.splitlines()[0] == "endpoint,jobs,completed,images,estimate,billed,spend"
    assert _cli(["report", "spend", "--by", "colour"], capsys)[0] == 2
    with GatewayServer(settings) as gw:
        one = httpx.get(f"{gw.url}/v1/jobs/{recs[1].id}", timeout=10)
        assert one.status_code == 200 and one.json()["state"] == "completed"
        assert one.json()["result"]["images"][0]["url"].startswith("http")
        listing = httpx.get(f"{gw.url}/v1/jobs", params={"text": "lighthouse", "metadata.project": "coast"},
                            timeout=10).json()
        assert {j["id"] for j in listing["jobs"]} == {r.id for r in recs}
        status = httpx.get(f"{gw.url}/fal-ai/qwen-image-2/requests/{recs[2].id}/status", timeout=10)
        assert status.status_code == 200 and status.json()["status"] == "COMPLETED"
        result = httpx.get(f"{gw.url}/fal-ai/qwen-image-2/requests/{recs[2].id}", timeout=10)
        assert result.status_code == 200 and len(result.json()["images"]) == 1
        assert httpx.get(f"{gw.url}/fal-ai/qwen-image-2/requests/nope/status", timeout=10).status_code == 404


def _q() -> Any:
    from falq.shared.catalogue.store import CatalogueQuery

    return CatalogueQuery(limit=100)


def test_worker_refuses_an_outdated_schema_and_db_upgrade_fixes_it(clean_stack: DevStack, env: dict[str, str],
                                                                   db: Db,  # noqa: F811
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(db.url)
    upgrade(engine, "0001")  # created by the previous falq
    engine.dispose()
    run_env = {**os.environ, **env, "FALQ_DATABASE_AUTO_UPGRADE": "never", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "falq.workers", "-c", "5"], cwd=ROOT, env=run_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "falq db upgrade" in proc.stderr and "0001" in proc.stderr
    monkeypatch.setenv("FALQ_DATABASE_AUTO_UPGRADE", "never")
    reset_settings()
    code, out = _cli(["db", "current"], capsys)
    assert code == 1 and "0001" in out and "behind" in out
    code, out = _cli(["db", "upgrade", "--json"], capsys)
    assert code == 0 and json.loads(out)["from"] == "0001" and json.loads(out)["to"] == head()
    assert _cli(["db", "current"], capsys)[0] == 0
