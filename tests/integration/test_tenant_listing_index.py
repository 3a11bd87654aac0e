"""The per-tenant creation index (``{p}:created:t:{tenant}``, :mod:`falq.shared.keys`): a small
tenant's listings walk only its own jobs, however busy the other tenants are.

Against a real redis-server (the module's own): a tenant with 10 jobs among 30,000 of another
lists all 10 with ``truncated`` false, by creation and by state, through the gateway's search
and the producer's ``jobs(tenant=)`` (``falq jobs --tenant``); the state answer is the same as a
walk of the state index; removing a record (the out-of-memory undo, expiry and the reaper's
pruning, a listing's own pruning) removes its entry; and the upgrade: records created before the
index existed are listed through the global walk until the reaper's backfill has indexed them.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from falq.gateway.rest.search import SCAN_CAP, JobQuery, search
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.settings import Settings

EDIT = "fal-ai/qwen-image-2/edit"
PREFIX = "falq"


def _records(tenant: str, n: int, *, start: float, step: float = 0.001, **kw: Any) -> list[JobRecord]:
    out = []
    for i in range(n):
        rec = JobRecord.new(endpoint=EDIT, input={"prompt": f"{tenant} {i}"}, tenant=tenant, **kw)
        rec.created_at = rec.updated_at = start + i * step
        out.append(rec)
    return out


def _create(store: JobStore, recs: list[JobRecord]) -> None:
    for start in range(0, len(recs), 2000):
        store.create_many([(rec, None) for rec in recs[start:start + 2000]])


def _forget_the_index(r: redis.Redis) -> None:
    """Redis as an older falq left it: the records and global indexes, no per-tenant index."""
    for key in r.scan_iter(f"{PREFIX}:created:t:*"):
        r.delete(key)
    r.delete(f"{PREFIX}:created:tenants", f"{PREFIX}:created:backfill")


def test_a_small_tenant_lists_all_its_jobs_among_30000_of_another(r: redis.Redis, redis_server: str) -> None:
    from falq.producers import Falq

    store = JobStore(r, prefix=PREFIX)
    now = time.time()
    small = _records("small", 10, start=now - 100)  # older than every busy job: the last a global walk reaches
    busy = _records("busy", 30_000, start=now - 50)
    _create(store, small + busy)
    assert SCAN_CAP < 30_000  # a walk of the global index would stop before reaching them
    want = [rec.id for rec in reversed(small)]

    page = search(store, JobQuery(limit=100), tenant="small")
    assert [j["id"] for j in page["jobs"]] == want
    assert page["count"] == 10 and page["scanned"] == 10
    assert page["truncated"] is False and page["next_until"] is None

    queued = search(store, JobQuery(state="queued", limit=100), tenant="small")
    assert [j["id"] for j in queued["jobs"]] == want and queued["truncated"] is False
    assert search(store, JobQuery(state="completed", limit=100), tenant="small")["count"] == 0

    # Pages: 4 + 4 + 2, each continuing where the last ended, none truncated.
    seen: list[str] = []
    until: float | None = None
    for size in (4, 4, 2):
        part = search(store, JobQuery(limit=4, until=until), tenant="small")
        assert part["count"] == size and part["truncated"] is False
        seen += [j["id"] for j in part["jobs"]]
        until = part["next_until"]
    assert seen == want and until is None

    # The busy tenant still sees its own newest, and never a small tenant's job.
    mine = search(store, JobQuery(limit=50), tenant="busy")
    assert [j["id"] for j in mine["jobs"]] == [rec.id for rec in reversed(busy[-50:])]

    # The producer's listing (`falq jobs --tenant small`) reads the same index.
    falq = Falq(Settings(_env_file=None, redis_url=redis_server, key_prefix=PREFIX))  # type: ignore[call-arg]
    assert [rec.id for rec in falq.jobs(tenant="small", limit=100)] == want
    assert [rec.id for rec in falq.jobs("queued", tenant="small", limit=100)] == want
    assert [rec.id for rec in store.find(tenant="small", limit=3)] == want[:3]


def test_a_state_search_from_the_tenants_index_equals_the_state_walk(r: redis.Redis) -> None:
    store = JobStore(r, prefix=PREFIX)
    now = time.time()
    recs = _records("small", 30, start=now - 100) + _records("busy", 200, start=now - 90)
    _create(store, recs)
    # Some of each tenant complete, at chosen times (two at the same time: ties ordered by id).
    done = [rec for rec in recs if int(rec.input["prompt"].split()[1]) % 3 == 0]
    for i, rec in enumerate(done):
        rec = store.get(rec.id)
        rec.walk_to("completed")
        store.save(rec)
        r.zadd(store.keys.state("completed"), {rec.id: now - 40 + (i // 2)})
    windows = [JobQuery(state="completed", limit=100), JobQuery(state="completed", limit=3),
               JobQuery(state="completed", since=now - 40 + 1, until=now - 40 + 3, limit=100),
               JobQuery(state="queued", since=now - 95, limit=7)]
    own = [search(store, q, tenant="small") for q in windows]
    assert store.tenant_rows_in_state("small", "completed") is not None
    # The busy tenant's own index is longer than the state index: that walk is the shorter one.
    assert store.tenant_rows_in_state("busy", "completed") is None
    # The same searches over the state index itself (the tenant's index not built yet).
    r.hdel(store.keys.created_backfill, "done")
    assert store.tenant_rows_in_state("small", "completed") is None
    walked = [search(store, q, tenant="small") for q in windows]
    for a, b in zip(own, walked, strict=True):
        assert [j["id"] for j in a["jobs"]] == [j["id"] for j in b["jobs"]]
        assert (a["count"], a["next_until"], a["truncated"]) == (b["count"], b["next_until"], b["truncated"])
    assert own[0]["count"] == 10 and own[1]["count"] == 3 and own[2]["count"] == 4  # since inclusive, until not


def test_removing_a_record_removes_its_tenant_entry(r: redis.Redis, redis_server: str) -> None:
    from falq.workers.maintenance.reaper import prune_expired

    settings = Settings(_env_file=None, redis_url=redis_server, record_ttl_s=60)  # type: ignore[call-arg]
    store = JobStore(r, prefix=settings.key_prefix, ttl_s=settings.record_ttl_s)
    key = store.keys.created_tenant("shop")
    undone, expired, dangling, alive = _records("shop", 4, start=time.time())
    for rec in (undone, expired, dangling, alive):
        store.create(rec)
    assert r.zcard(key) == 4 and r.sismember(store.keys.created_tenants, "shop")

    # The out-of-memory undo (JobStore.forget_unpublished) removes it with the record.
    assert store.forget_unpublished(undone.id, None, "shop")
    assert r.zscore(key, undone.id) is None and r.zscore(store.keys.created, undone.id) is None

    # Expiry: the record's TTL ran out; the reaper's pruning drops its entries, the tenant's too.
    for rec in (expired, alive):
        store.update(rec.id, lambda x: x.walk_to("completed"))
        for index in (key, store.keys.created, store.keys.state("completed")):
            r.zadd(index, {rec.id: 1_000.0})  # long ago
    r.delete(store.keys.job(expired.id))
    assert prune_expired(store, settings) == 3  # global created, state:completed, created:t:shop
    assert r.zscore(key, expired.id) is None and r.zscore(key, alive.id) is not None

    # A listing drops the entries of records it finds gone, in the tenant's index too.
    r.delete(store.keys.job(dangling.id))
    assert [rec.id for rec in store.find(tenant="shop")] == [alive.id]
    assert r.zscore(key, dangling.id) is None and r.zscore(store.keys.created, dangling.id) is None

    # The last record of the tenant expires: its index and its place in the tenants' set go.
    r.delete(store.keys.job(alive.id))
    assert prune_expired(store, settings) >= 1
    assert not r.exists(key) and not r.sismember(store.keys.created_tenants, "shop")


def test_records_from_before_the_index_are_listed_then_backfilled(r: redis.Redis, redis_server: str) -> None:
    from falq.workers.maintenance.reaper import prune_expired

    store = JobStore(r, prefix=PREFIX)
    assert not store.tenant_index_ready()
    now = time.time()
    # 20 small jobs created at one instant (a page of ties), spread among busy ones.
    small = _records("small", 20, start=now - 100, step=0.0)
    busy = _records("busy", 40, start=now - 99)
    _create(store, small + busy)
    assert store.tenant_index_ready()  # a fresh Redis: complete from the first record on
    _forget_the_index(r)  # ... but these were written by an older falq
    assert not store.tenant_index_ready()

    # Until the backfill is done, listings walk the global index: nothing is missing.
    page = search(store, JobQuery(limit=100), tenant="small")
    assert sorted(j["id"] for j in page["jobs"]) == sorted(rec.id for rec in small)
    assert page["scanned"] == 20 and page["truncated"] is False
    assert {rec.id for rec in store.find("queued", tenant="small")} == {rec.id for rec in small}
    # A new job meanwhile indexes itself; a record deleted meanwhile is not indexed.
    late = _records("small", 1, start=now)[0]
    store.create(late)
    r.delete(store.keys.job(busy[0].id))

    # The backfill, a page of 7 at a time: resumable (a cursor in Redis), ties not lost.
    calls = 0
    while not store.backfill_tenant_index(budget_s=0.0, page=7):
        calls += 1
        assert r.hget(store.keys.created_backfill, "cursor")
    assert calls >= 5 and store.tenant_index_ready()
    assert r.zcard(store.keys.created_tenant("small")) == 21
    assert r.zcard(store.keys.created_tenant("busy")) == 39
    assert r.zscore(store.keys.created_tenant("small"), small[0].id) == small[0].created_at
    page = search(store, JobQuery(limit=100), tenant="small")
    assert page["jobs"][0]["id"] == late.id and page["count"] == 21

    # The reaper runs the same backfill by itself (no command to run after an upgrade).
    _forget_the_index(r)
    settings = Settings(_env_file=None, redis_url=redis_server)  # type: ignore[call-arg]
    prune_expired(store, settings)
    assert store.tenant_index_ready() and r.zcard(store.keys.created_tenant("small")) == 21
    assert store.backfill_tenant_index()  # done stays done

    # A producer of the older falq still runs after the upgrade: its record has no entry; the
    # reaper sees the indexes short of the global one and walks the recent records again.
    old_style = _records("small", 1, start=time.time())[0]
    store.create(old_style)
    r.zrem(store.keys.created_tenant("small"), old_style.id)
    assert old_style.id not in [j["id"] for j in search(store, JobQuery(limit=100), tenant="small")["jobs"]]
    prune_expired(store, settings)
    assert r.zscore(store.keys.created_tenant("small"), old_style.id) == old_style.created_at
    assert search(store, JobQuery(limit=100), tenant="small")["jobs"][0]["id"] == old_style.id
    assert not store.catch_up_tenant_index()  # nothing is missing now: no walk


def test_a_restored_archived_record_is_in_its_tenants_index(r: redis.Redis) -> None:
    """falq.shared.catalogue.revive writes an archived record back (JobStore.restore): its
    tenant's listing finds it, as it finds a record that never left Redis."""
    r.flushall()
    store = JobStore(r, prefix=PREFIX)
    _create(store, _records("other", 3, start=time.time() - 120))  # a live Redis: the index is complete
    assert store.tenant_index_ready()
    [rec] = _records("shop", 1, start=time.time() - 60)
    rec.move("failed")
    assert store.restore(rec, ttl_s=600) == 1
    assert store.restore(rec, ttl_s=600) == 0  # already there: nothing written
    assert [x.id for x in store.find(tenant="shop")] == [rec.id]
    assert [x.id for x in store.find("failed", tenant="shop")] == [rec.id]
    assert rec.id not in [x.id for x in store.find(tenant="other")]


def test_only_a_tenants_first_record_looks_for_older_records_to_backfill(r: redis.Redis) -> None:
    store = JobStore(r)
    _create(store, _records("a", 1, start=time.time()))
    assert r.hget(store.keys.created_backfill, "done") is not None  # an empty Redis: nothing to backfill
    r.config_resetstat()
    _create(store, _records("a", 3, start=time.time()))
    assert "cmdstat_zcard" not in r.info("commandstats")  # a's later records skip the look
    _create(store, _records("b", 1, start=time.time()))
    assert r.info("commandstats")["cmdstat_zcard"]["calls"] == 1  # b's first record looks once
