"""Fair share end to end: real workers, the fal emulator, tenants with weights, caps and budgets."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import redis

from falq.producers import Falq
from falq.producers.client import JobRequest
from falq.shared.fairshare.scheduler import FairShare
from falq.shared.limits.store import tenant_spend_today, write_config
from falq.shared.tenants.store import Tenant, TenantStore
from falq.testing.stack import DevStack
from tests.conftest import emulator_submissions, wait_for

EP = "fal-ai/qwen-image-2/text-to-image"


def enqueue(falq: Falq, tenant: str, n: int) -> list[str]:
    reqs = [JobRequest(EP, {"prompt": f"{tenant} {i}", "seed": i}, "bulk", tenant=tenant) for i in range(n)]
    return [job_id for job_id, _ in falq.submit_many(reqs)]


def tenants_of(falq: Falq) -> dict[str, str]:
    return {rec.id: rec.tenant for rec in falq.store.find(limit=10_000)}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


@pytest.mark.timeout(120)
def test_weighted_shares_and_a_tenant_cap_hold_at_fal(clean_stack: DevStack, falq: Falq) -> None:
    clean_stack.emu.configure(latency="fixed:0.3", concurrency=0)
    store = TenantStore(falq.redis)
    store.put(Tenant(name="a", weight=1))
    store.put(Tenant(name="b", weight=1))
    store.put(Tenant(name="c", weight=2))
    store.put(Tenant(name="capped", weight=5, max_outstanding=1))
    write_config(falq.redis, "falq", {"max_outstanding": "4", "rate": "0"})
    ids = {t: enqueue(falq, t, 40) for t in ("a", "b", "c")}
    capped = enqueue(falq, "capped", 6)
    clean_stack.start_worker(concurrency=50)
    wait_for(lambda: falq.store.counts()["completed"] >= 126, 90, 0.3, "all jobs")
    owner = tenants_of(falq)
    reqs = sorted((r for subs in emulator_submissions(clean_stack).values() for r in subs),
                  key=lambda r: r["submitted_at"])
    assert all(len(subs) == 1 for subs in emulator_submissions(clean_stack).values())
    job_of = [{k.lower(): v for k, v in r["headers"].items()}["x-falq-job-id"] for r in reqs]
    # While all three are backlogged: 1 : 1 : 2. The first 4 (the dispatch target: the cap of
    # 4, no headroom) went to a alone, dispatched as it was enqueued before b and c.
    order = [owner[j] for j in job_of if owner[j] != "capped"]
    assert len(order) == 120 and order[:4] == ["a"] * 4
    window = Counter(order[4:64])
    assert abs(window["a"] - 15) <= 4 and abs(window["b"] - 15) <= 4 and abs(window["c"] - 30) <= 4, window
    # The capped tenant never had more than one request at fal, whatever its weight.
    spans = [(r["submitted_at"], r["completed_at"]) for r, j in zip(reqs, job_of, strict=True) if j in capped]
    assert len(spans) == 6 and max_overlap(spans) == 1
    assert sum(len(v) for v in ids.values()) == 120


@pytest.mark.timeout(120)
def test_a_tenant_over_its_budget_pauses_alone(clean_stack: DevStack, falq: Falq) -> None:
    clean_stack.emu.configure(latency="fixed:0.2", concurrency=0)
    store = TenantStore(falq.redis)
    store.put(Tenant(name="poor", budget_usd=0.08))   # 2 jobs at $0.03 (the account's price); a third would pass it
    store.put(Tenant(name="rich"))
    poor, rich = enqueue(falq, "poor", 6), enqueue(falq, "rich", 6)
    clean_stack.start_worker(concurrency=20, env={"FALQ_PAUSE_POLL_S": "1"})
    wait_for(lambda: all(r and r.state == "completed" for r in falq.store.get_many(rich)), 60, 0.3, "rich done")

    def poor_paused() -> bool:
        recs = [r for r in falq.store.get_many(poor) if r]
        return sum(r.state == "completed" for r in recs) == 2 and \
            sum(r.state == "queued" and r.paused == "budget" for r in recs) == 4

    wait_for(poor_paused, 30, 0.3, "poor paused for its budget")
    _, spend = tenant_spend_today(falq.redis, "falq", ["poor", "rich"])
    assert spend == {"poor": pytest.approx(0.06), "rich": pytest.approx(0.18)}
    subs = emulator_submissions(clean_stack)
    assert sum(1 for j in poor if j in subs) == 2
    # Parked jobs hold no dispatch room: they wait in their ready set, not in the broker.
    depth = {f.tenant: f for f in FairShare(falq.redis, falq.settings).figures([])}
    assert depth["poor"].ready["bulk"] >= 3 and depth["poor"].dispatched <= 1
    # More budget: the tenant goes on by itself (its pause mark lapses, a tick dispatches).
    store.put(Tenant(name="poor", budget_usd=1.0))
    wait_for(lambda: all(r and r.state == "completed" for r in falq.store.get_many(poor)), 30, 0.3, "poor done")
    subs = emulator_submissions(clean_stack)
    assert all(len(subs[j]) == 1 for j in poor + rich)


def test_broker_full_jobs_wait_dispatched_and_are_published_later(
        clean_stack: DevStack, redis_server: str) -> None:
    from tests.system.test_redis_out_of_memory import fill_to_the_limit

    broker = redis.Redis.from_url(redis_server)
    broker.flushall()
    falq = Falq(clean_stack.settings(FALQ_BROKER_URL=redis_server, FALQ_FAIR_RECOVER_AFTER_S="0.2"))
    falq.app.connection_for_write().ensure_connection(max_retries=1)
    try:
        fill_to_the_limit(broker)
        job = falq.generate("a lighthouse at dusk")  # enqueued: the record and its ready entry exist
        assert job.status() == "queued" and not falq.store.is_published(job.id)
        assert falq.redis.zscore("falq:inflight", job.id) is not None  # dispatched, publish refused
    finally:
        broker.config_set("maxmemory", 0)
    time.sleep(0.3)
    assert falq.fair.recover_dispatched(falq.app) == [job.id]
    assert falq.store.is_published(job.id) and broker.llen("falq.interactive") == 1
    broker.flushall()
    broker.close()


def test_fifo_setting_publishes_directly(clean_stack: DevStack) -> None:
    falq: Any = Falq(clean_stack.settings(FALQ_FAIR_DISPATCH="false"))
    ids = enqueue(falq, "default", 3)
    r = falq.redis
    assert all(falq.store.published_flags(ids)) and r.llen("falq.bulk") == 3
    assert r.zcard("falq:inflight") == 0 and not r.exists("falq:fair:ready:bulk:default")
