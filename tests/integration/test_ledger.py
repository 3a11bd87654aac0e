"""The one ledger of work in flight ({p}:ledger) against a real redis-server: one entry per job from
dispatch to release, a charge kept until its release settles it, the tenants' dispatched counts
recounted from it, and records written before the ledger (a rolling upgrade) still settled."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from falq.shared.fairshare.scheduler import FairShare
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.keys import Keys
from falq.shared.limits.store import Limiter, micro, spend_today
from falq.shared.settings import Settings

EP = "fal-ai/qwen-image-2/text-to-image"
K = Keys("falq")


def settings(url: str, **over: Any) -> Settings:
    fields: dict[str, Any] = {"redis_url": url, "broker_url": url, "max_outstanding": 10, "fair_headroom": 0.0,
                              "rate_per_s": 0, "fal_key": "unit-key-for-ledger-tests", **over}
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


def dispatched(r: redis.Redis, s: Settings, tenant: str, n: int) -> list[str]:
    store = JobStore(r)
    recs = [JobRecord.new(endpoint=EP, input={"prompt": f"{tenant} {i}"}, tenant=tenant) for i in range(n)]
    store.create_many([(rec, None) for rec in recs], fair=True)
    return [job_id for job_id, *_ in FairShare(r, s).take(n)]


def entry(r: redis.Redis, job_id: str) -> str | None:
    raw = r.hget(K.ledger, job_id)
    return raw.decode() if raw is not None else None


def test_one_entry_from_dispatch_to_release(r: redis.Redis, redis_server: str) -> None:
    s = settings(redis_server)
    lim = Limiter(r, s)
    [job] = dispatched(r, s, "a", 1)
    assert entry(r, job) == f"a|{EP}||"
    assert r.hget(K.fair_count, "a") == b"1"
    cost = micro(0.03)
    assert lim.acquire(job, EP, "bulk", cost, tenant="a").ok
    day = spend_today(r, "falq")[0]
    assert entry(r, job) == f"a|{EP}|{day}|{cost}"
    assert lim.release(job, refund=True)
    assert entry(r, job) is None and r.hlen(K.ledger) == 0
    assert r.zcard(K.inflight) == 0 and r.hget(K.fair_count, "a") == b"0"
    assert spend_today(r, "falq")[1] == 0.0
    # The slot sets are empty too: nothing of the job is left anywhere.
    assert r.zcard(K.limits_slots(lim.kid)) == 0
    assert r.zcard(K.limits_slots_ep(lim.kid, EP)) == 0 and r.zcard(K.limits_slots_t(lim.kid, "a")) == 0


def test_a_terminal_save_keeps_a_charge_for_its_release_and_drops_an_entry_without_one(
        r: redis.Redis, redis_server: str) -> None:
    s = settings(redis_server)
    store, lim = JobStore(r), Limiter(r, s)
    charged, plain = dispatched(r, s, "a", 2)
    assert lim.acquire(charged, EP, "bulk", micro(0.03), tenant="a").ok
    for job_id in (charged, plain):
        store.update(job_id, lambda rec: rec.walk_to("failed"))
    assert entry(r, plain) is None
    assert entry(r, charged) is not None and r.zcard(K.inflight) == 0
    lim.release(charged, refund=True)   # fal never accepted it: the charge comes back
    assert entry(r, charged) is None and spend_today(r, "falq")[1] == 0.0
    assert r.hget(K.fair_count, "a") == b"0"


def test_the_recount_puts_a_drifted_count_right(r: redis.Redis, redis_server: str) -> None:
    s = settings(redis_server)
    fair = FairShare(r, s)
    dispatched(r, s, "a", 3)
    dispatched(r, s, "b", 1)
    assert fair.recount() == 0
    # A worker of an older release freed a job it could not find in its owner hash: the count
    # was left one high; another tenant's count went missing altogether.
    r.hset(K.fair_count, "a", 4)
    r.hdel(K.fair_count, "b")
    r.hset(K.fair_count, "c", 2)
    assert fair.recount() == 3
    assert {k.decode(): int(v) for k, v in r.hgetall(K.fair_count).items()} == {"a": 3, "b": 1}


def old_release_state(r: redis.Redis, lim: Limiter, job: str, tenant: str, cost: int) -> str:
    """What a worker before the ledger left for a job it dispatched and admitted (its side hashes)."""
    day = spend_today(r, "falq")[0]
    r.zadd(K.inflight, {job: 1})
    r.hset(K.fair_owner, job, tenant)
    r.hincrby(K.fair_count, tenant, 1)
    expiry = 10**13
    r.zadd(K.limits_slots(lim.kid), {job: expiry})
    r.zadd(K.limits_slots_ep(lim.kid, EP), {job: expiry})
    r.zadd(K.limits_slots_t(lim.kid, tenant), {job: expiry})
    r.hset(K.limits_slot_ep(lim.kid), job, EP)
    r.hset(K.limits_slot_t(lim.kid), job, tenant)
    r.hset(K.limits_charges(lim.kid), job, f"{day}|{cost}|{tenant}")
    r.incrby(K.spend(day), cost)
    r.incrby(K.tenant_spend(day, tenant), cost)
    return day


def test_a_job_admitted_before_the_ledger_is_released_in_full(r: redis.Redis, redis_server: str) -> None:
    s = settings(redis_server)
    lim = Limiter(r, s)
    cost = micro(0.03)
    old_release_state(r, lim, "old-1", "a", cost)
    assert lim.release("old-1", refund=True)
    assert spend_today(r, "falq")[1] == 0.0
    assert r.hget(K.fair_count, "a") == b"0" and r.zcard(K.inflight) == 0
    for legacy in (K.limits_slot_ep(lim.kid), K.limits_slot_t(lim.kid), K.limits_charges(lim.kid), K.fair_owner):
        assert r.hlen(legacy) == 0, legacy
    assert r.zcard(K.limits_slots_ep(lim.kid, EP)) == 0 and r.zcard(K.limits_slots_t(lim.kid, "a")) == 0
    assert r.hlen(K.ledger) == 0


def test_a_job_admitted_before_the_ledger_and_followed_after_moves_into_it(
        r: redis.Redis, redis_server: str) -> None:
    s = settings(redis_server)
    lim = Limiter(r, s)
    cost = micro(0.065)
    day = old_release_state(r, lim, "old-2", "b", cost)
    lim.hold("old-2", EP, "b")      # a new worker takes the job over and follows it
    assert entry(r, "old-2") == f"b|{EP}|{day}|{cost}"
    assert r.hlen(K.limits_charges(lim.kid)) == 0 and r.hlen(K.fair_owner) == 0
    assert FairShare(r, s).recount() == 0     # the owner moved with it: the count stands
    lim.release("old-2", refund=False)        # fal accepted it: the charge stays spent
    assert spend_today(r, "falq")[1] == 0.065
    assert r.hget(K.fair_count, "b") == b"0" and r.hlen(K.ledger) == 0


def test_expired_slot_entries_stop_counting_and_housekeeping_drops_them(r: redis.Redis, redis_server: str) -> None:
    s = settings(redis_server, max_outstanding=0, slot_lease_s=0.2)
    lim = Limiter(r, s)
    r.hset(K.limits_config, "max_outstanding_per_endpoint", json.dumps({EP: 1}))
    assert lim.acquire("dead", EP, "bulk", 0, tenant="a").ok
    assert lim.acquire("next", EP, "bulk", 0, tenant="a").status == "endpoint"
    time.sleep(0.3)   # the worker holding "dead" died: its slot's lease ran out
    assert lim.acquire("next", EP, "bulk", 0, tenant="a").ok
    assert lim.trim_expired() == 2      # "dead" in the endpoint's and the tenant's slot sets
    assert r.zrange(K.limits_slots_ep(lim.kid, EP), 0, -1) == [b"next"]
