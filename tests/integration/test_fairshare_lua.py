"""Fair dispatch (shared/fairshare/scheduler.py) against a real redis-server: weights, no burst, caps,
budget pauses, crash recovery, and no record without its ready entry."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from falq.shared.fairshare.scheduler import FairShare
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.keys import Keys
from falq.shared.limits.store import tenant_spend_today
from falq.shared.settings import Settings
from falq.shared.tenants.store import Tenant, TenantStore
from falq.workers.maintenance.reaper import queue_depth, reap_once

EP = "fal-ai/qwen-image-2/text-to-image"


def settings(url: str, **over: Any) -> Settings:
    fields: dict[str, Any] = {"redis_url": url, "broker_url": url, "max_outstanding": 4, "fair_headroom": 0.0,
                              "rate_per_s": 0, "fair_recover_after_s": 0.2, "visibility_timeout_s": 60, **over}
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


@pytest.fixture
def s(redis_server: str) -> Settings:
    return settings(redis_server)


@pytest.fixture
def app(s: Settings) -> Iterator[Celery]:
    from falq.shared.engine.celery_app import make_app

    a = make_app(s)
    yield a
    a.close()


def enqueue(store: JobStore, tenant: str, n: int, lane: str = "bulk") -> list[str]:
    recs = [JobRecord.new(endpoint=EP, input={"prompt": f"{tenant} {i}"}, lane=lane, tenant=tenant)
            for i in range(n)]
    return store.create_many([(rec, None) for rec in recs], fair=True)


def finish(store: JobStore, job_ids: list[str]) -> None:
    for job_id in job_ids:
        store.update(job_id, lambda rec: rec.walk_to("completed"))


def tenant_of(store: JobStore, job_ids: list[str]) -> list[str]:
    return [rec.tenant for rec in store.get_many(job_ids) if rec is not None]


def drain_order(store: JobStore, fair: FairShare, n: int) -> list[str]:
    """Dispatch one job at a time (each finishes before the next pick): the order of service."""
    order: list[str] = []
    while len(order) < n:
        got = [job_id for job_id, *_ in fair.take(1)]
        if not got:
            break
        order += tenant_of(store, got)
        finish(store, got)
    return order


def test_target_is_max_outstanding_plus_headroom(r: redis.Redis, redis_server: str) -> None:
    store = JobStore(r)
    enqueue(store, "a", 50)
    assert len(FairShare(r, settings(redis_server, max_outstanding=10, fair_headroom=0.5)).take()) == 15
    r.flushall()
    enqueue(store, "a", 50)
    assert len(FairShare(r, settings(redis_server, max_outstanding=2, fair_headroom=0.0)).take()) == 2
    r.flushall()
    enqueue(store, "a", 50)
    assert len(FairShare(r, settings(redis_server, max_outstanding=0, fair_uncapped_room=7)).take()) == 7
    # the runtime limits (falq limits set) win over the environment
    r.flushall()
    enqueue(store, "a", 50)
    r.hset(Keys("falq").limits_config, "max_outstanding", "3")
    assert len(FairShare(r, settings(redis_server, max_outstanding=40, fair_headroom=0.0)).take()) == 3


def test_a_round_with_no_ready_tenant_runs_one_command_inside(r: redis.Redis, s: Settings) -> None:
    # Most rounds (a release, an admission) find nothing ready: they cost the script and one EXISTS.
    store, fair = JobStore(r), FairShare(r, s)
    got = enqueue(store, "a", 2)
    assert sorted(j for j, *_ in fair.take()) == sorted(got)  # the round that empties the ready set
    r.config_resetstat()
    assert fair.take() == []
    stats = r.info("commandstats")
    outside = ("cmdstat_evalsha", "cmdstat_info", "cmdstat_config")
    inside = sum(v["calls"] for k, v in stats.items() if not k.startswith(outside))
    assert inside == 1 and stats["cmdstat_exists"]["calls"] == 1, stats
    enqueue(store, "a", 1)
    assert len(fair.take()) == 1  # a tenant with a ready job again: the round dispatches it


def test_under_a_rate_limit_about_a_second_of_jobs_waits_for_admission(r: redis.Redis, redis_server: str) -> None:
    from falq.shared.limits.store import Limiter

    s = settings(redis_server, max_outstanding=0, rate_per_s=5, fal_key="unit-key-for-fair-tests")
    store, fair, keys = JobStore(r), FairShare(r, s), Keys("falq")
    enqueue(store, "a", 50)
    got = [j for j, *_ in fair.take()]
    assert len(got) == 5 and r.zcard(keys.fair_unadmitted) == 5 and fair.take() == []
    # admitted by the limiter: no longer waiting, so the next one is dispatched
    lim = Limiter(r, s)
    assert lim.acquire(got[0], EP, "bulk", 0, tenant="a").ok
    assert r.zcard(keys.fair_unadmitted) == 4 and len(fair.take()) == 1


def test_a_released_slot_frees_the_room_at_once(r: redis.Redis, redis_server: str) -> None:
    from falq.shared.limits.store import Limiter

    s = settings(redis_server, max_outstanding=2, fal_key="unit-key-for-fair-tests")
    store, fair, keys = JobStore(r), FairShare(r, s), Keys("falq")
    enqueue(store, "a", 10)
    got = [j for j, *_ in fair.take()]
    lim = Limiter(r, s)
    assert all(lim.acquire(j, EP, "bulk", 0, tenant="a").ok for j in got) and fair.take() == []
    lim.release(got[0], refund=False)   # done at fal; the job may still be mirroring
    assert r.zscore(keys.inflight, got[0]) is None and r.hget(keys.fair_count, "a") == b"1"
    assert len(fair.take()) == 1
    lim.release(got[0], refund=False)   # released twice: nothing more is freed
    assert r.hget(keys.fair_count, "a") == b"2" and fair.take() == []


def test_a_release_and_an_answer_say_whether_a_dispatch_would_find_a_ready_job(
        r: redis.Redis, redis_server: str) -> None:
    from falq.shared.limits.store import Limiter

    s = settings(redis_server, max_outstanding=2, fal_key="unit-key-for-fair-tests")
    store, fair = JobStore(r), FairShare(r, s)
    enqueue(store, "a", 3)
    got = [j for j, *_ in fair.take()]  # 2 dispatched (the cap), 1 still ready
    lim = Limiter(r, s)
    assert all(lim.acquire(j, EP, "bulk", 0, tenant="a").ok for j in got)
    assert lim.answered(got[0], 1) is True              # one job of a still waits in its ready set
    assert lim.release_and_look(got[0], refund=False) == (True, True)
    assert len(fair.take()) == 1 and fair.take() == []  # the last ready job goes; a is no longer active
    assert lim.answered(got[1], 1) is False             # nothing ready: the worker skips the dispatch
    assert lim.release_and_look(got[1], refund=False) == (True, False)
    assert lim.release_and_look(got[1], refund=False) == (False, False)  # released twice: no slot held


def test_weights_are_honoured(r: redis.Redis, s: Settings) -> None:
    store, tenants = JobStore(r), TenantStore(r)
    tenants.put(Tenant(name="a", weight=1))
    tenants.put(Tenant(name="b", weight=1))
    tenants.put(Tenant(name="c", weight=2))
    for t in "abc":
        enqueue(store, t, 300)
    counts = Counter(drain_order(store, FairShare(r, s), 400))
    assert counts == {"a": 100, "b": 100, "c": 200}


def test_a_tenant_that_becomes_active_gets_no_burst_and_no_starvation(r: redis.Redis, s: Settings) -> None:
    store, fair = JobStore(r), FairShare(r, s)
    enqueue(store, "a", 400)
    assert drain_order(store, fair, 200) == ["a"] * 200   # alone, a gets everything
    enqueue(store, "b", 50)
    order = drain_order(store, fair, 40)
    # b is served at once, then alternates with a: neither a burst for b nor a wait behind a
    assert order[:2].count("b") == 1 and Counter(order) == {"a": 20, "b": 20}


def test_ready_sets_survive_in_creation_order(r: redis.Redis, s: Settings) -> None:
    store = JobStore(r)
    ids = enqueue(store, "a", 10)
    got = [job_id for job_id, *_ in FairShare(r, s).take(10)]
    assert got == ids[:4]  # the target (max_outstanding 4, no headroom): the oldest first


def test_interactive_is_dispatched_before_bulk(r: redis.Redis, s: Settings) -> None:
    store, fair = JobStore(r), FairShare(r, s)
    enqueue(store, "a", 20, lane="bulk")
    enqueue(store, "b", 20, lane="interactive")
    got = fair.take()
    lanes = Counter(lane for _, lane, *_ in got)
    assert lanes == {"interactive": 8}  # interactive may fill twice the target; bulk waits


def test_a_tenant_at_its_own_cap_is_skipped(r: redis.Redis, redis_server: str) -> None:
    s = settings(redis_server, max_outstanding=20, fair_headroom=0.0)
    store, tenants, fair = JobStore(r), TenantStore(r), FairShare(r, s)
    tenants.put(Tenant(name="capped", weight=10, max_outstanding=1))
    enqueue(store, "capped", 30)
    enqueue(store, "free", 30)
    got = fair.take()
    counts = Counter(tenant_of(store, [j for j, *_ in got]))
    assert counts == {"capped": 1, "free": 19}  # its own cap; the others fill the rest
    finish(store, [j for j, *_ in got if tenant_of(store, [j]) == ["capped"]][:1])
    assert tenant_of(store, [j for j, *_ in fair.take()]) == ["capped"]
    assert int(r.hget(Keys("falq").fair_count, "capped") or 0) == 1


def test_a_tenant_over_its_budget_pauses_alone(r: redis.Redis, s: Settings) -> None:
    store, tenants, fair = JobStore(r), TenantStore(r), FairShare(r, s)
    tenants.put(Tenant(name="poor", budget_usd=1.0))
    enqueue(store, "poor", 10)
    enqueue(store, "rich", 10)
    day, _ = tenant_spend_today(r, "falq", [])
    r.set(Keys("falq").tenant_spend(day, "poor"), 1_000_000)
    got = fair.take()
    assert set(tenant_of(store, [j for j, *_ in got])) == {"rich"}
    # the limiter's pause mark (set when it refused a job of the tenant) works the same way
    r.delete(Keys("falq").tenant_spend(day, "poor"))
    r.set(Keys("falq").fair_paused("poor"), "1", px=60000)
    finish(store, [j for j, *_ in got])
    got = fair.take()
    assert set(tenant_of(store, [j for j, *_ in got])) == {"rich"}
    finish(store, [j for j, *_ in got])
    r.delete(Keys("falq").fair_paused("poor"))
    order = drain_order(store, fair, 20)  # once unpaused it is served at once, beside rich's last two
    assert order[0] == "poor" and Counter(order) == {"poor": 10, "rich": 2}


def test_no_record_without_its_ready_entry(r: redis.Redis, s: Settings) -> None:
    store, keys = JobStore(r), Keys("falq")
    rec, created = store.create(JobRecord.new(endpoint=EP, input={"prompt": "x"}, lane="bulk", tenant="t1"),
                                fair=True)
    assert created and r.zscore(keys.fair_ready("bulk", "t1"), rec.id) == pytest.approx(rec.created_at)
    assert r.sismember(keys.fair_active("bulk"), "t1") and not store.is_published(rec.id)
    # a second create with the same idempotency key adds nothing anywhere
    a, _ = store.create(JobRecord.new(endpoint=EP, input={"prompt": "y"}, lane="bulk", tenant="t1"), "k", fair=True)
    b, created_b = store.create(JobRecord.new(endpoint=EP, input={"prompt": "y"}, lane="bulk", tenant="t1"), "k",
                                fair=True)
    assert b.id == a.id and not created_b and r.zcard(keys.fair_ready("bulk", "t1")) == 2
    # Redis full: the create script is refused as a whole, so neither the record nor its entry exists
    r.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.ResponseError):
            store.create(JobRecord.new(endpoint=EP, input={"prompt": "z"}, lane="bulk", tenant="t2"), fair=True)
    finally:
        r.config_set("maxmemory", "0")
    assert r.zcard(keys.fair_ready("bulk", "t2")) == 0 and len(store.ids_in_state("queued")) == 2


def test_terminal_saves_free_the_room_and_cancelled_jobs_are_skipped(r: redis.Redis, s: Settings) -> None:
    store, fair, keys = JobStore(r), FairShare(r, s), Keys("falq")
    ids = enqueue(store, "a", 12)
    finish(store, ids[:2])   # cancelled/finished while still waiting: dispatch skips them
    got = [j for j, *_ in fair.take()]
    assert got == ids[2:6] and r.zcard(keys.inflight) == 4 and r.hget(keys.fair_count, "a") == b"4"
    finish(store, got[:3])
    assert r.zcard(keys.inflight) == 1 and r.hget(keys.fair_count, "a") == b"1"
    assert r.zcard(keys.fair_unadmitted) == 1
    assert [j for j, *_ in fair.take()] == ids[6:9]


def test_crash_between_pop_and_publish_is_recovered(r: redis.Redis, s: Settings, app: Celery) -> None:
    import time

    store, fair = JobStore(r), FairShare(r, s)
    waiting = enqueue(store, "a", 20)
    taken = [j for j, *_ in fair.take()]          # the dispatcher dies before publishing these
    assert taken and all(not p for p in store.published_flags(taken))
    assert fair.recover_dispatched(app) == []       # too fresh: its dispatcher may still publish
    time.sleep(0.3)
    assert sorted(fair.recover_dispatched(app)) == sorted(taken)
    assert all(store.published_flags(taken)) and queue_depth(r, s.queue_bulk) == len(taken)
    # a job that only waits in its ready set is published by no recovery: not this one, not the reaper
    rest = [j for j in waiting if j not in taken]
    r.delete(s.queue_bulk)
    old = time.time() - 3600
    for job_id in rest:
        r.zadd(store.keys.state("queued"), {job_id: old})
    assert fair.recover_dispatched(app) == [] and reap_once(app, store, s) == []
    assert queue_depth(r, s.queue_bulk) == 0 and not any(store.published_flags(rest))


def test_recovery_reads_only_jobs_the_limiter_has_not_admitted(r: redis.Redis, redis_server: str, app: Celery) -> None:
    """A job at fal for minutes is not read again by every pass: an admitted job was delivered, so
    it was published. The half-minute sweep still looks at every dispatched job and frees the room
    of one whose record is gone."""
    import time

    from falq.shared.limits.store import Limiter

    s = settings(redis_server, max_outstanding=10, fal_key="unit-key-for-fair-tests")
    store, fair, keys = JobStore(r), FairShare(r, s), Keys("falq")
    enqueue(store, "a", 6)
    got = [j for j, *_ in fair.take()]  # dispatched; the dispatcher dies before publishing
    admitted, never = got[:4], got[4:]
    lim = Limiter(r, s)
    assert all(lim.acquire(j, EP, "bulk", 0, tenant="a").ok for j in admitted)
    for job_id in admitted:  # these were published after all: their steps run
        r.hset(keys.job(job_id), "published", "1")
    time.sleep(0.3)  # past FALQ_FAIR_RECOVER_AFTER_S (0.2 s here)

    def hmgets() -> int:
        return int(r.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))

    before = hmgets()
    assert sorted(fair.recover_dispatched(app)) == sorted(never)
    # the two unadmitted jobs' state and flag, then their records to publish: no admitted job's
    assert hmgets() - before == 2 + 2
    assert queue_depth(r, s.queue_bulk) == 2 and all(store.published_flags(got))

    r.delete(keys.job(admitted[0]))  # its record expired while the job was dispatched
    assert fair.recover_dispatched(app) == [] and r.zscore(keys.inflight, admitted[0]) is not None
    assert fair.recover_dispatched(app, every_dispatched=True) == []
    assert r.zscore(keys.inflight, admitted[0]) is None and r.hget(keys.fair_count, "a") == b"5"
    assert queue_depth(r, s.queue_bulk) == 2  # nothing published twice


def test_park_puts_a_dispatched_job_back_and_frees_its_room(r: redis.Redis, s: Settings, app: Celery) -> None:
    store, fair, keys = JobStore(r), FairShare(r, s), Keys("falq")
    ids = enqueue(store, "a", 3)
    sent = fair.dispatch(app)
    assert sent == ids and all(store.published_flags(ids))
    rec = store.get(ids[0])
    assert fair.park(rec) and fair.park(rec)        # again (a redelivered message): still parked
    assert r.zscore(keys.fair_ready("bulk", "a"), rec.id) is not None and not store.is_published(rec.id)
    assert r.zscore(keys.inflight, rec.id) is None and r.hget(keys.fair_count, "a") == b"2"
    assert fair.dispatch(app) == [rec.id]
    # without fair dispatch a job is never parked (it waits in place, as before)
    direct, _ = store.create(JobRecord.new(endpoint=EP, input={"prompt": "d"}, lane="bulk", tenant="a"))
    assert not FairShare(r, settings(str(s.redis_url), fair_dispatch=False)).park(direct)


def test_make_ready_is_the_one_hand_off(r: redis.Redis, s: Settings, app: Celery, redis_server: str) -> None:
    store, keys = JobStore(r), Keys("falq")
    rec, _ = store.create(JobRecord.new(endpoint=EP, input={"prompt": "late"}, lane="interactive", tenant="x"))
    assert FairShare(r, s).make_ready(rec, app)     # ready set, then a dispatch publishes it
    assert store.is_published(rec.id) and r.zscore(keys.inflight, rec.id) is not None
    # without fair dispatch it publishes at once
    other, _ = store.create(JobRecord.new(endpoint=EP, input={"prompt": "fifo"}, lane="bulk", tenant="x"))
    assert FairShare(r, settings(redis_server, fair_dispatch=False)).make_ready(other, app)
    assert store.is_published(other.id) and r.zscore(keys.inflight, other.id) is None
    assert queue_depth(r, s.queue_bulk) == 1


def test_figures_per_tenant(r: redis.Redis, s: Settings) -> None:
    store, fair = JobStore(r), FairShare(r, s)
    enqueue(store, "a", 5)
    enqueue(store, "b", 3, lane="interactive")
    fair.take(2)
    figs = {f.tenant: f for f in fair.figures(["default"])}
    assert set(figs) == {"a", "b", "default"}
    assert figs["b"].ready == {"interactive": 1, "bulk": 0} and figs["b"].dispatched == 2
    assert figs["a"].ready == {"interactive": 0, "bulk": 5} and figs["a"].dispatched == 0


def test_top_and_metrics_show_per_tenant_figures(r: redis.Redis, redis_server: str) -> None:
    from io import StringIO

    from prometheus_client import CollectorRegistry, generate_latest
    from rich.console import Console

    from falq.ops.exporter import FalqCollector
    from falq.ops.top import render
    from falq.shared.limits.store import Limiter
    from falq.shared.metrics import read_snapshot

    s = settings(redis_server, fal_key="unit-key-for-fair-tests")
    store = JobStore(r)
    TenantStore(r).put(Tenant(name="shop", weight=2))
    enqueue(store, "shop", 7)
    got = [j for j, *_ in FairShare(r, s).take(2)]
    enqueue(store, "ghost", 2)  # not in the store: left out, the label stays bounded
    lim = Limiter(r, s)
    lim.register_key()
    assert lim.acquire(got[0], EP, "bulk", 35_000, tenant="shop").ok
    snap = read_snapshot(r, s)
    figs = {f.tenant: f for f in snap.fair}
    assert set(figs) == {"default", "shop"}
    assert figs["shop"].ready == {"interactive": 0, "bulk": 5} and figs["shop"].dispatched == 2
    assert figs["shop"].outstanding == 1 and figs["shop"].spend_today_usd == pytest.approx(0.035)
    out = StringIO()
    Console(file=out, width=160).print(render(snap))
    assert "waiting i/b" in out.getvalue() and "0 / 5" in out.getvalue() and "$0.04" in out.getvalue()
    registry = CollectorRegistry()
    registry.register(FalqCollector(s, r))
    text = generate_latest(registry).decode()
    assert 'falq_tenant_ready_jobs{lane="bulk",tenant="shop"} 5.0' in text
    assert 'falq_tenant_fal_outstanding{tenant="shop"} 1.0' in text and "ghost" not in text
