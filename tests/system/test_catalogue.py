"""The catalogue of finished jobs, on PostgreSQL (127.0.0.1:5432) and on SQLite alike.

Each test gets its own database: a fresh PostgreSQL database ``falq_test_<random>`` (created
and dropped here) or its own SQLite file. The archiver runs in-process against a real
redis-server (with AOF where a restart is shown); a SIGKILL is a real one, of a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import sqlalchemy as sa

from falq.shared.catalogue.engine import check_schema, current, head, make_engine, upgrade
from falq.shared.catalogue.rows import row_from_record
from falq.shared.catalogue.schema import jobs
from falq.shared.catalogue.store import Catalogue, CatalogueQuery, get_catalogue, reset_catalogues
from falq.shared.errors import CatalogueSchemaOutdated, CatalogueUnavailable, JobNotFound
from falq.shared.jobs.ended import trim as ended_trim
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.settings import Settings
from falq.testing.stack import RedisServer, S3Server
from falq.workers.maintenance.archive import GROUP, Archiver

PG = "postgresql://postgres@127.0.0.1:5432"
ROOT = Path(__file__).resolve().parents[2]
EP = "fal-ai/qwen-image-2/text-to-image"


def _pg_admin(sql: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


class Db:
    """One test's database: ``url`` (what FALQ_DATABASE_URL would say), ``make()``/``drop()``
    to create it (PostgreSQL) or remove it, and ``break_()``/``fix()`` for an outage."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        if kind == "postgresql":
            self.name = f"falq_test_{uuid.uuid4().hex[:12]}"
            self.url = f"{PG}/{self.name}"
        else:
            self.dir = tmp / "db"
            self.url = f"sqlite:///{self.dir}/catalogue.sqlite3"

    def make(self) -> None:
        if self.kind == "postgresql":
            _pg_admin(f'CREATE DATABASE "{self.name}"')
        else:
            self.dir.mkdir(parents=True, exist_ok=True)

    def drop(self) -> None:
        reset_catalogues()
        if self.kind == "postgresql":
            _pg_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            for p in self.dir.glob("catalogue.sqlite3*") if self.dir.is_dir() else []:
                p.unlink()

    def break_(self) -> None:
        """The database goes away: PostgreSQL's database does not exist (connections refused
        with an error), SQLite's directory is a plain file (the database cannot be opened)."""
        if self.kind == "postgresql":
            self.drop()
        else:
            if self.dir.is_dir():
                for p in self.dir.iterdir():
                    p.unlink()
                self.dir.rmdir()
            self.dir.write_text("not a directory")

    def fix(self) -> None:
        if self.kind == "sqlite" and self.dir.is_file():
            self.dir.unlink()
        self.make()


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    d = Db(request.param, tmp_path)
    d.make()
    try:
        yield d
    finally:
        d.drop()


def _settings(db: Db, redis_url: str, **kw: Any) -> Settings:
    fields: dict[str, Any] = {"database_url": db.url, "redis_url": redis_url, "database_auto_upgrade": "always",
                              "database_timeout_s": 3.0, "archived_ttl_s": 3600, "job_json": False,
                              "key_prefix": f"t{uuid.uuid4().hex[:6]}", **kw}
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


def _finish(store: JobStore, n: int, *, state: str = "completed", prompt: str = "a red fox", **kw: Any) -> list[str]:
    """``n`` jobs that ended (their terminal save enqueues them for archiving)."""
    ids = []
    for i in range(n):
        rec, _ = store.create(JobRecord.new(endpoint=EP, input={"prompt": f"{prompt} {i}", "seed": i},
                                            cost_estimate=0.035, **kw))
        rec.walk_to(state)  # type: ignore[arg-type]
        store.save(rec)
        ids.append(rec.id)
    return ids


def _rows(cat: Catalogue) -> dict[str, dict[str, Any]]:
    with cat.engine.connect() as conn:
        return {row["id"]: dict(row) for row in conn.execute(sa.select(jobs)).mappings()}


def _ids_in_db(cat: Catalogue) -> list[str]:
    with cat.engine.connect() as conn:
        return [x for (x,) in conn.execute(sa.select(jobs.c.id))]


def _drain(archiver: Archiver, *, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while archiver.backlog() and time.monotonic() < end:
        archiver.tick()
    assert archiver.backlog() == 0


# --- writing ---------------------------------------------------------------------------------------


def test_upsert_is_idempotent_and_never_goes_back_a_version(db: Db) -> None:
    cat = Catalogue(make_engine(db.url))
    upgrade(cat.engine)
    rec = JobRecord.new(endpoint=EP, input={"prompt": "a lighthouse at dusk"}, metadata={"project": "p1"})
    rec.move("failed")
    rec.version = 5
    cat.upsert([row_from_record(rec, archived_at=1.0)])
    cat.upsert([row_from_record(rec, archived_at=1.0)])
    assert _ids_in_db(cat) == [rec.id]
    rec.walk_to("completed")
    rec.version = 9
    cat.upsert([row_from_record(rec, archived_at=2.0)])
    older = rec.model_copy(update={"state": "failed", "version": 7})
    cat.upsert([row_from_record(older, archived_at=3.0)])  # a late duplicate of an older save
    got = cat.get(rec.id)
    assert got is not None and got.state == "completed" and got.version == 9
    assert _rows(cat)[rec.id]["archived_at"] == 2.0
    cat.dispose()


def test_terminal_save_enqueues_and_keeps_the_record_until_archived(db: Db, r: redis.Redis,
                                                                     redis_server: str) -> None:
    s = _settings(db, redis_server)
    store = JobStore(r, prefix=s.key_prefix, ttl_s=s.record_ttl_s, archive=True)
    [job] = _finish(store, 1)
    assert r.ttl(store.job_key(job)) == -1  # no expiry while not archived
    assert r.xlen(store.keys.ended) == 1
    archiver = Archiver(store, s, None)
    assert archiver.tick() == 1
    assert 0 < r.ttl(store.job_key(job)) <= s.archived_ttl_s
    assert _ids_in_db(archiver.catalogue) == [job]
    # saved again after archiving (a callback outcome, a retry): archived again, same row
    store.update(job, lambda rec: rec.metadata.__setitem__("note", "again"))
    assert r.ttl(store.job_key(job)) == -1
    assert archiver.tick() == 1
    got = archiver.catalogue.get(job)
    assert got is not None and got.metadata["note"] == "again"
    assert _ids_in_db(archiver.catalogue) == [job]
    assert ended_trim(r, store.keys, ["archivers"]) == 2
    assert r.xlen(store.keys.ended) == 0  # acked entries trimmed


def test_archive_survives_a_database_outage(db: Db, r: redis.Redis, redis_server: str) -> None:
    """While the database is gone, jobs keep ending, nothing expires, the archiver neither
    crashes nor hangs; once it is back, archiving catches up by itself, each job once."""
    import threading

    s = _settings(db, redis_server)
    store = JobStore(r, prefix=s.key_prefix, archive=True)
    db.break_()
    archiver = Archiver(store, s, None, catalogue=Catalogue(make_engine(db.url, timeout_s=3.0)))
    first = _finish(store, 20)
    t0 = time.monotonic()
    with pytest.raises(CatalogueUnavailable):
        archiver.tick()
    assert time.monotonic() - t0 < 10, "a tick against a dead database must be bounded"
    stop = threading.Event()
    loop = threading.Thread(target=archiver.run, args=(stop,), daemon=True)
    loop.start()
    try:
        second = _finish(store, 10, state="failed")  # jobs keep ending meanwhile
        time.sleep(1.5)
        assert loop.is_alive() and archiver.failures >= 1
        assert all(r.ttl(store.job_key(j)) == -1 for j in first + second)  # nothing expires
        db.fix()
        end = time.monotonic() + 40
        while archiver.backlog() and time.monotonic() < end:
            time.sleep(0.2)
        assert archiver.backlog() == 0, "archiving did not catch up"
    finally:
        stop.set()
        loop.join(10)
    ids = _ids_in_db(archiver.catalogue)
    assert sorted(ids) == sorted(first + second) and len(ids) == len(set(ids)) == 30
    assert all(0 < r.ttl(store.job_key(j)) <= s.archived_ttl_s for j in first + second)


_KILLED_ARCHIVER = textwrap.dedent("""
    import sys, time
    import redis
    from falq.shared.jobs.store import JobStore
    from falq.shared.jobs.records import JobRecord
    from falq.shared.settings import Settings
    from falq.shared.catalogue.rows import row_from_record
    from falq.workers.maintenance.archive import Archiver
    url, db_url, prefix = sys.argv[1:4]
    s = Settings(_env_file=None, redis_url=url, database_url=db_url, key_prefix=prefix, job_json=False,
                 database_auto_upgrade="always")
    store = JobStore(redis.Redis.from_url(url), prefix=prefix, archive=True)
    a = Archiver(store, s, None, consumer="doomed")
    entries = a.ended.read()            # now pending to this consumer
    recs = a._records([e.job_id for e in entries])
    a._ensure_schema()
    half = [row_from_record(r, archived_at=time.time()) for r in list(recs.values())[: len(recs) // 2]]
    a.catalogue.upsert(half)            # half committed, nothing acked, no TTL set
    print(len(entries), flush=True)
    time.sleep(600)
""")


def test_worker_sigkill_mid_archive_is_taken_over(db: Db, r: redis.Redis, redis_server: str) -> None:
    s = _settings(db, redis_server, archive_claim_idle_s=0.5)
    store = JobStore(r, prefix=s.key_prefix, archive=True)
    ids = _finish(store, 12)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_ARCHIVER, redis_server, db.url, s.key_prefix],
                            cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"12"
        pending = r.xpending(store.keys.ended, GROUP)
        assert pending["pending"] == 12 and {c["name"] for c in pending["consumers"]} == {b"doomed"}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    survivor = Archiver(store, s, None, consumer="survivor")
    assert len(_ids_in_db(survivor.catalogue)) == 6  # the half the dead one committed
    time.sleep(0.6)  # its entries are idle past FALQ_ARCHIVE_CLAIM_IDLE_S
    _drain(survivor)
    got = _ids_in_db(survivor.catalogue)
    assert sorted(got) == sorted(ids) and len(got) == 12
    assert r.xpending(store.keys.ended, GROUP)["pending"] == 0
    assert all(0 < r.ttl(store.job_key(j)) <= s.archived_ttl_s for j in ids)


def test_archive_survives_a_redis_restart(db: Db, tmp_path: Path) -> None:
    """With persistence (AOF, as in production) the stream, its group and the entries pending
    to a consumer survive a Redis crash; archiving resumes, every job once."""
    server = RedisServer(tmp_path / "redis-aof", aof=True).start()
    try:
        s = _settings(db, server.url, archive_claim_idle_s=0.5)
        client = redis.Redis.from_url(server.url)
        store = JobStore(client, prefix=s.key_prefix, archive=True)
        ids = _finish(store, 15)
        a = Archiver(store, s, None, consumer="before-restart")
        assert len(a.ended.read()) == 15  # delivered, then Redis dies before any ack
        server.restart()  # SIGKILL, then start again on the same data
        client = redis.Redis.from_url(server.url)
        store = JobStore(client, prefix=s.key_prefix, archive=True)
        assert client.xpending(store.keys.ended, GROUP)["pending"] == 15
        more = _finish(store, 5)
        b = Archiver(store, s, None, consumer="after-restart")
        time.sleep(0.6)
        _drain(b)
        got = _ids_in_db(b.catalogue)
        assert sorted(got) == sorted(ids + more) and len(got) == 20
        client.close()
    finally:
        server.stop()


# --- reading ---------------------------------------------------------------------------------------


def test_lookups_fall_back_to_the_catalogue_after_the_redis_copy_expired(db: Db, r: redis.Redis,
                                                                        redis_server: str) -> None:
    from falq.producers.client import Falq

    s = _settings(db, redis_server, archived_ttl_s=1)
    falq = Falq(s, redis_client=r)
    ids = _finish(falq.store, 3, prompt="a lighthouse at dusk", metadata={"project": "moon"})
    live = _finish(falq.store, 1, state="queued", prompt="a lighthouse at dawn")  # stays in Redis only
    archiver = Archiver(falq.store, s, None)
    _drain(archiver)
    time.sleep(1.3)
    assert not any(r.exists(falq.store.job_key(j)) for j in ids)  # the Redis copies expired
    rec = falq.lookup(ids[0])
    assert rec.id == ids[0] and rec.state == "completed" and rec.input["prompt"] == "a lighthouse at dusk 0"
    assert falq.job(ids[1]).record().metadata == {"project": "moon"}
    assert falq.job(ids[1]).wait(1).state == "completed"
    with pytest.raises(JobNotFound):
        falq.lookup(ids[0], tenant="someone-else")  # another tenant's job is not found, like a bad id
    with pytest.raises(JobNotFound):
        falq.lookup("no-such-job")
    found = falq.jobs(text="lighthouse", limit=10)
    assert {j.id for j in found} == {*ids, *live}  # live from Redis, history from the catalogue
    assert [j.id for j in falq.jobs(text="lighthouse dusk", metadata={"project": "moon"}, limit=2)] == \
        sorted(ids, key=lambda j: falq.lookup(j).created_at, reverse=True)[:2]
    assert falq.jobs(text="submarine", limit=10) == []
    assert {j.id for j in falq.jobs("completed", endpoint=EP, tenant="default", limit=10)} == set(ids)


def test_search_uses_full_text_time_endpoint_metadata_and_tenant(db: Db) -> None:
    cat = Catalogue(make_engine(db.url))
    upgrade(cat.engine)
    now = time.time()
    rows = []
    for i, (prompt, ep, tenant, age_d) in enumerate([
            ("red foxes in the snow", EP, "default", 1), ("a red fox at night", EP, "shop", 1),
            ("a blue whale", EP, "default", 2), ("the red fox sleeps", "fal-ai/qwen-image-2/edit", "default", 1),
            ("red fox, long ago", EP, "default", 30)]):
        rec = JobRecord.new(endpoint=ep, input={"prompt": prompt}, tenant=tenant, metadata={"n": i, "k": f"v{i}"})
        rec.created_at = now - age_d * 86400
        rec.walk_to("completed")
        rows.append(row_from_record(rec, archived_at=now))
    cat.upsert(rows)
    q = CatalogueQuery(text="fox", endpoint=EP, since=now - 7 * 86400, tenant="default")
    assert [r["prompt"] for r in cat.search_rows(q)] == ["red foxes in the snow"]  # stemmed: foxes ~ fox
    assert len(cat.search_rows(CatalogueQuery(text="red fox"))) == 4
    assert [r["prompt"] for r in cat.search_rows(CatalogueQuery(metadata={"k": "v2"}))] == ["a blue whale"]
    assert [r["prompt"] for r in cat.search_rows(CatalogueQuery(metadata={"n": "2"}))] == ["a blue whale"]
    assert cat.search_rows(CatalogueQuery(text='"; DROP TABLE jobs; --')) == []  # words only, never syntax
    plan = cat.explain(q)
    assert plan
    cat.dispose()


# --- the bucket ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    server = S3Server().start()
    yield server.url
    server.stop()


def test_rebuild_from_s3_gives_back_the_same_rows(db: Db, r: redis.Redis, redis_server: str, s3: str) -> None:
    """A batch is archived (rows + job.json); then the database and Redis are both lost; the
    bucket alone rebuilds the very same rows."""
    from falq.cli.catalogue import rebuild_from_s3
    from falq.shared.storage.s3 import Storage

    s = _settings(db, redis_server, job_json=True, s3_endpoint_url=s3, s3_bucket=f"b{uuid.uuid4().hex[:10]}",
                  aws_access_key_id="k", aws_secret_access_key="s")
    storage = Storage(s)
    storage.ensure_bucket()
    store = JobStore(r, prefix=s.key_prefix, archive=True)
    ids = _finish(store, 8, metadata={"project": "p"}, callback_url="https://hooks.example.com/x?token=secret")
    ids += _finish(store, 2, state="cancelled")
    archiver = Archiver(store, s, storage)
    _drain(archiver)
    before = _rows(archiver.catalogue)
    assert sorted(before) == sorted(ids)
    keys = [k for k in storage.list_keys() if k.endswith("/job.json")]
    assert len(keys) == 10
    doc = json.loads(storage.get_bytes(storage.job_json_key(EP, ids[0], before[ids[0]]["created_at"])))
    assert doc["id"] == ids[0] and "secret" not in json.dumps(doc)  # the callback's token is not kept
    assert doc["callback_host"] == "hooks.example.com"
    # lose both
    r.flushall()
    db.drop()
    db.make()
    out = rebuild_from_s3(s)
    assert out["objects"] == 10 and out["upserted"] == 10 and not out["bad"]
    after = _rows(get_catalogue(s))
    assert after == before
    assert rebuild_from_s3(s, prefix=keys[0].rsplit("/", 1)[0])["upserted"] == 1  # --prefix


def test_archive_makes_the_bucket_when_no_image_upload_did(db: Db, r: redis.Redis, redis_server: str,
                                                            s3: str) -> None:
    """A new deployment whose first finished jobs made no image (failed, cancelled): the bucket
    did not exist yet, and the archive writes their job.json anyway instead of stalling."""
    from falq.shared.storage.s3 import Storage

    s = _settings(db, redis_server, job_json=True, s3_endpoint_url=s3, s3_bucket=f"b{uuid.uuid4().hex[:10]}",
                  aws_access_key_id="k", aws_secret_access_key="s")
    storage = Storage(s)
    store = JobStore(r, prefix=s.key_prefix, archive=True)
    ids = _finish(store, 2, state="failed") + _finish(store, 1, state="cancelled")
    archiver = Archiver(store, s, storage)
    _drain(archiver)
    assert sorted(_rows(archiver.catalogue)) == sorted(ids)
    assert len([k for k in storage.list_keys() if k.endswith("/job.json")]) == 3


# --- schema ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["0001", "0002", "0003", "0004"])
def test_a_database_at_a_previous_revision_upgrades(db: Db, start: str) -> None:
    from falq.shared.catalogue.schema import jobs

    engine = make_engine(db.url)
    assert upgrade(engine, start) == start
    rec = JobRecord.new(endpoint=EP, input={"prompt": "archived long ago"}, metadata={"project": "old"})
    rec.walk_to("completed")
    # A row as the falq of that revision wrote it: without the columns of later revisions.
    later = {"0004": ("unit_price", "price_source", "billable_units"), "0005": ("fal_outcome",)}
    old_row = {k: v for k, v in row_from_record(rec, archived_at=1.0).items()
               if not any(k in cols for rev, cols in later.items() if rev > start)}
    with engine.begin() as conn:
        conn.execute(jobs.insert().values(old_row))
    with pytest.raises(CatalogueSchemaOutdated, match="falq db upgrade"):
        check_schema(engine, auto_upgrade=False)  # what workers and the gateway say at start
    assert upgrade(engine) == head() == current(engine)
    assert upgrade(engine) == head()  # again: nothing to do
    cat = Catalogue(engine)
    assert [r.id for r in cat.search(CatalogueQuery(metadata={"project": "old"}))] == [rec.id]  # indexed by 0002
    assert [r.id for r in cat.search(CatalogueQuery(text="archived"))] == [rec.id]  # 0003's tsvector, on old rows
    old = cat.get(rec.id)
    assert old is not None and old.fal_outcome is None  # 0005's column, NULL on old rows
    if start < "0004":
        assert old.price_source is None  # 0004's columns, NULL on old rows
    assert check_schema(engine, auto_upgrade=False) == head()
    engine.dispose()


def test_spend_report_is_one_group_by(db: Db) -> None:
    cat = Catalogue(make_engine(db.url))
    upgrade(cat.engine)
    day1, day2 = 1_780_000_000.0, 1_780_000_000.0 + 86400
    rows = []
    for state, ep, tenant, billed, when, project in [
            ("completed", EP, "default", 0.03, day1, "a"), ("completed", EP, "default", None, day1, "b"),
            ("completed", "fal-ai/qwen-image-2/pro/text-to-image", "shop", 0.07, day1, "a"),
            ("failed", EP, "default", None, day1, "a"), ("completed", EP, "default", 0.03, day2, "a")]:
        rec = JobRecord.new(endpoint=ep, input={"prompt": "x"}, tenant=tenant, cost_estimate=0.035,
                            metadata={"project": project})
        rec.cost_billed = billed
        rec.created_at = when - 60
        rec.walk_to(state)  # type: ignore[arg-type]
        rec.timestamps[state] = when
        rows.append(row_from_record(rec, archived_at=when))
    cat.upsert(rows)
    got = cat.spend(["day", "endpoint"], since=day1 - 3600)
    assert [(g["day"], g["endpoint"], g["jobs"], g["completed"], g["spend"]) for g in got] == [
        ("2026-05-28", "fal-ai/qwen-image-2/pro/text-to-image", 1, 1, 0.07),
        ("2026-05-28", EP, 3, 2, round(0.03 + 0.035, 6)),
        ("2026-05-29", EP, 1, 1, 0.03),
    ]
    by_meta = {g["metadata.project"]: g["spend"] for g in cat.spend(["metadata.project"])}
    assert by_meta == {"a": round(0.03 + 0.07 + 0.03, 6), "b": 0.035}
    assert [g["tenant"] for g in cat.spend(["tenant"], tenant="shop")] == ["shop"]
    cat.dispose()
