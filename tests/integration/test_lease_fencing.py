"""Fencing by lease token: a worker step whose lease ran out can never overwrite the job's record.

The situation of a host cut off from Redis for longer than ``FALQ_LEASE_TTL_S``: its lease
expires, another worker takes the job and saves newer progress, then the link heals and the
old step tries to save what it had in hand. Version compare-and-set alone would not stop it
(a step reloads and reapplies its change on a conflict); the lease token checked inside the
save script does. Real Redis, two lease keepers standing for two hosts.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import cast

import pytest
import redis

from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore, LeaseLost
from falq.workers.context import WorkerContext
from falq.workers.lease import LeaseKeeper
from falq.workers.steps.step import Fenced, StepBase

PREFIX = "falqfence"
TTL_S = 0.5


def _ctx(r: redis.Redis, keeper: LeaseKeeper) -> WorkerContext:
    """Just what StepBase.commit touches: the store, the leases, no middleware."""
    return cast(WorkerContext, SimpleNamespace(
        store=JobStore(r, prefix=PREFIX, ttl_s=3600), leases=keeper, middleware=[],
        settings=SimpleNamespace(visibility_timeout_s=60), shutting_down=SimpleNamespace(is_set=lambda: False)))


def _new(store: JobStore) -> JobRecord:
    rec, _ = store.create(JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image", input={"prompt": "fence"}))
    return rec


@pytest.mark.timeout(20)
def test_store_save_is_refused_without_the_lease_and_writes_nothing(r: redis.Redis) -> None:
    store = JobStore(r, prefix=PREFIX, ttl_s=3600)
    keeper = LeaseKeeper(r, prefix=PREFIX, ttl_s=TTL_S)
    rec = _new(store)
    lease = keeper.acquire(rec.id)
    assert lease is not None
    rec.attempts = 1
    store.save(rec, fence=(keeper.key(rec.id), lease.token))  # held: saved
    keeper.stop()
    time.sleep(TTL_S * 2.5)  # expired in Redis, nobody holds it
    stale = store.get(rec.id)
    stale.attempts = 99
    with pytest.raises(LeaseLost):
        store.save(stale, fence=(keeper.key(rec.id), lease.token))
    assert store.get(rec.id).attempts == 1 and store.get(rec.id).version == 2


@pytest.mark.timeout(20)
def test_stale_step_back_from_a_partition_cannot_overwrite_the_new_holders_progress(r: redis.Redis) -> None:
    host_a, host_b = LeaseKeeper(r, prefix=PREFIX, ttl_s=TTL_S), LeaseKeeper(r, prefix=PREFIX, ttl_s=TTL_S)
    ctx_a, ctx_b = _ctx(r, host_a), _ctx(r, host_b)
    rec = _new(ctx_a.store)
    lease_a = host_a.acquire(rec.id)
    assert lease_a is not None
    step_a = StepBase(ctx_a, ctx_a.store.get(rec.id), lease_a)
    step_a.commit(lambda j: j.move("submitting"))

    host_a.stop()  # A is cut off: it renews no more, its lease expires
    time.sleep(TTL_S * 2.5)
    lease_b = host_b.acquire(rec.id)
    assert lease_b is not None, "the expired lease must be free for another host"
    step_b = StepBase(ctx_b, ctx_b.store.get(rec.id), lease_b)

    def b_progress(j: JobRecord) -> None:
        j.request_id = "req-of-b"
        j.move("in_queue")

    step_b.commit(b_progress)
    before = ctx_b.store.get(rec.id)

    # The link heals; A goes on with the record it had (version behind) and would reapply.
    with pytest.raises(Fenced):
        step_a.commit(lambda j: j.move("queued"))
    after = ctx_b.store.get(rec.id)
    assert (after.state, after.request_id, after.version) == ("in_queue", "req-of-b", before.version)
    host_b.stop()
