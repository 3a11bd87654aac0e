"""Redis at ``maxmemory`` (policy ``noeviction``): producers get a typed error and leave no
half-made job behind; workers keep the jobs they hold and finish them once memory frees.

Runs against the session stack's real redis-server; every test restores ``maxmemory`` in a
``finally`` so the next test finds Redis as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from falq.producers import Falq
from falq.producers.client import JobRequest
from falq.shared.batches.store import Batch, BatchStore, batch_id_for
from falq.shared.errors import RedisMemoryFull, is_redis_oom
from falq.shared.fal.endpoints import TEXT_TO_IMAGE
from falq.shared.jobs.records import TERMINAL
from falq.testing.stack import DevStack
from tests.conftest import emulator_submissions, wait_for

QUEUES = ("falq.interactive", "falq.bulk")


@pytest.fixture
def r(clean_stack: DevStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(clean_stack.redis.url)
    client.config_set("maxmemory-policy", "noeviction")
    try:
        yield client
    finally:
        client.config_set("maxmemory", 0)
        client.close()


def fill_to_the_limit(r: redis.Redis, headroom: int = 2 * 1024 * 1024) -> None:
    """Set maxmemory a little above what is used, then write filler until Redis refuses."""
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + headroom)
    blob = b"x" * 16 * 1024
    for i in range(10_000):
        try:
            r.set(f"filler:{i}", blob)
        except redis.ResponseError as exc:
            assert is_redis_oom(exc), exc
            # Keys expiring elsewhere (TTL'd marks of earlier tests) could free a few KB and let
            # the next small write through; with maxmemory below what is used, none gets through.
            r.config_set("maxmemory", max(1, int(r.info("memory")["used_memory"]) - 512 * 1024))
            return
    raise AssertionError("Redis never reached maxmemory")


def nothing_enqueued(r: redis.Redis, prefix: str = "falq") -> None:
    assert r.zcard(f"{prefix}:created") == 0
    assert r.zcard(f"{prefix}:state:queued") == 0
    assert not list(r.scan_iter(f"{prefix}:job:*"))
    assert not list(r.scan_iter(f"{prefix}:idem:*"))
    assert all(r.llen(q) == 0 for q in QUEUES)


def test_producer_gets_a_typed_error_and_leaves_nothing_when_redis_is_full(
        r: redis.Redis, falq: Falq) -> None:
    falq.app  # noqa: B018 - connect the broker before Redis is full
    fill_to_the_limit(r)

    with pytest.raises(RedisMemoryFull) as info:
        falq.generate("a red fox in the snow", idempotency_key="fox-1")
    message = str(info.value)
    assert "Redis memory is full" in message and "maxmemory" in message
    assert "nothing was enqueued" in message
    assert info.value.retryable and info.value.enqueued == []

    reqs = [JobRequest(TEXT_TO_IMAGE["standard"], {"prompt": f"fox {i}"}, "bulk") for i in range(20)]
    with pytest.raises(RedisMemoryFull) as many:
        falq.submit_many(reqs)
    assert many.value.enqueued == []
    nothing_enqueued(r)

    # Once memory frees, the same call goes through.
    r.config_set("maxmemory", 0)
    job = falq.generate("a red fox in the snow", idempotency_key="fox-1")
    assert job.status() == "queued" and r.llen("falq.interactive") == 1


def test_record_created_but_publish_refused_is_removed_again(
        r: redis.Redis, clean_stack: DevStack, redis_server: str) -> None:
    # Job records in the stack's Redis (room to spare), the broker in a Redis that is full:
    # the record is created, the publish is refused, and the record must go again. This is the
    # direct-publish (FIFO) path; with fair dispatch the job waits in its ready set instead
    # (tests/system/test_fair_dispatch_end_to_end.py).
    broker = redis.Redis.from_url(redis_server)
    broker.flushall()
    falq = Falq(clean_stack.settings(FALQ_BROKER_URL=redis_server, FALQ_FAIR_DISPATCH="false"))
    falq.app.connection_for_write().ensure_connection(max_retries=1)
    try:
        fill_to_the_limit(broker)
        with pytest.raises(RedisMemoryFull, match="nothing was enqueued"):
            falq.generate("a lighthouse at dusk", idempotency_key="light-1")
        with pytest.raises(RedisMemoryFull) as many:
            falq.submit_many([JobRequest(TEXT_TO_IMAGE["standard"], {"prompt": f"dusk {i}"}, "bulk",
                                         idempotency_key=f"dusk-{i}") for i in range(5)])
        assert many.value.enqueued == []
        nothing_enqueued(r)
        assert all(broker.llen(q) == 0 for q in QUEUES)
    finally:
        broker.config_set("maxmemory", 0)
        broker.flushall()
        broker.close()


def _batch(falq: Falq, run_key: str) -> tuple[BatchStore, Batch]:
    store = BatchStore(falq.redis, prefix=falq.settings.key_prefix)
    bid = batch_id_for(falq.tenant, run_key)
    return store, store.open(bid, name=run_key, tenant=falq.tenant, source_name=f"{run_key}.jsonl",
                             source_sha256="0" * 64, run_key=run_key)[0]


def _batch_requests(batch: Batch, n: int, tag: str) -> list[JobRequest]:
    return [JobRequest(TEXT_TO_IMAGE["standard"], {"prompt": f"{tag} {i}"}, "bulk", idempotency_key=f"{tag}-{i}",
                       batch_id=batch.id) for i in range(n)]


def assert_counts_exact(falq: Falq, store: BatchStore, batch: Batch, jobs: list[str]) -> None:
    """The batch's kept counts equal a recount of its records, and its total and estimate are
    those of the records that exist (``jobs``: the ids that stayed enqueued)."""
    recs = [rec for rec in falq.store.get_many(jobs) if rec is not None]
    kept = store.get(batch.id)
    assert kept.counts == store.recount(batch.id, falq.store.get_many)
    assert kept.total == len(recs) == len(jobs) == sum(kept.counts.values())
    assert round(kept.est_usd * 1e6) == sum(round(rec.cost_estimate * 1e6) for rec in recs)
    assert [job_id for job_id, _ in store.job_ids(batch.id)] == sorted(jobs, key=jobs.index)


def test_an_undone_enqueue_leaves_the_batch_counts_exact(r: redis.Redis, clean_stack: DevStack,
                                                        redis_server: str) -> None:
    # The broker refuses (it is full), the job records' Redis does not: the records of the
    # batch's second chunk are created, then removed again; the batch must lose them too.
    broker = redis.Redis.from_url(redis_server)
    broker.flushall()
    falq = Falq(clean_stack.settings(FALQ_BROKER_URL=redis_server, FALQ_FAIR_DISPATCH="false"))
    falq.app.connection_for_write().ensure_connection(max_retries=1)
    store, batch = _batch(falq, "oom-broker")
    try:
        first = [job_id for job_id, _ in falq.submit_many(_batch_requests(batch, 3, "kept"))]
        store.add_jobs(batch.id, [(job_id, line) for line, job_id in enumerate(first, 1)])
        fill_to_the_limit(broker)
        with pytest.raises(RedisMemoryFull) as many:
            falq.submit_many(_batch_requests(batch, 5, "undone"))
        assert many.value.enqueued == []
        assert r.zcard("falq:created") == 3  # the 5 records are gone again
        assert_counts_exact(falq, store, batch, first)
        assert store.get(batch.id).counts["queued"] == 3
    finally:
        broker.config_set("maxmemory", 0)
        broker.flushall()
        broker.close()


def test_an_enqueue_undone_at_maxmemory_leaves_the_batch_counts_exact(r: redis.Redis, falq: Falq) -> None:
    # Redis fills up in the middle of the creates' pipeline: the creates before that went
    # through (and counted in the batch); their undo runs while Redis still refuses writes.
    falq.app  # noqa: B018 - connect the broker before Redis is full
    store, batch = _batch(falq, "oom-records")
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 256 * 1024)
    with pytest.raises(RedisMemoryFull) as many:
        falq.submit_many(_batch_requests(batch, 2000, "half"))
    assert many.value.enqueued == []
    nothing_enqueued(r)
    # Some creates did count in the batch (the field exists) before being taken back.
    assert r.hexists(f"falq:batch:{batch.id}", "total")
    assert_counts_exact(falq, store, batch, [])
    r.config_set("maxmemory", 0)


def test_jobs_at_fal_finish_once_memory_frees(r: redis.Redis, clean_stack: DevStack, falq: Falq) -> None:
    clean_stack.emu.configure(latency="fixed:4", small_images=True)
    worker = clean_stack.start_worker(concurrency=20)
    jobs = [falq.generate(f"a harbour at night {i}", seed=i) for i in range(8)]
    wait_for(lambda: all(j.status() in ("in_queue", "in_progress") for j in jobs), timeout=30,
             what="every job at fal")

    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used // 2)  # below what is used: every write is refused
    try:
        with pytest.raises(redis.ResponseError) as refused:
            r.set("probe", b"1")
        assert is_redis_oom(refused.value)
        time.sleep(6)  # fal finishes meanwhile; the workers cannot save that
        assert worker.poll() is None, "the worker died while Redis was full:\n" + clean_stack.worker_logs()[-3000:]
        assert all(j.status() not in TERMINAL for j in jobs)
    finally:
        r.config_set("maxmemory", 0)

    # Back in place, not after a visibility timeout (30 s on this stack).
    start = time.monotonic()
    recs: list[Any] = [j.wait(timeout=25) for j in jobs]
    assert time.monotonic() - start < 25
    assert [x.state for x in recs] == ["completed"] * len(jobs), [x.errors for x in recs]
    assert worker.poll() is None
    subs = emulator_submissions(clean_stack)
    for rec in recs:
        assert 1 <= len(subs.get(rec.id, [])) <= rec.attempts, (rec.id, rec.attempts)
