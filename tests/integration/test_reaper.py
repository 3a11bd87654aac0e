"""workers.reaper in this process: reap_once against a real Redis, publishing through a Celery app
(a client of the broker only: no worker consumes anything)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from falq.shared.engine.celery_app import make_app
from falq.shared.engine.publish import TASK_NAME
from falq.shared.jobs.records import JobRecord, Lane, State
from falq.shared.jobs.store import JobStore
from falq.shared.settings import Settings
from falq.workers.lease import LeaseKeeper
from falq.workers.maintenance.reaper import mark_seen, reap_once, seen_key

ENDPOINT = "fal-ai/qwen-image-2/text-to-image"
PREFIX = "falqtest"
VISIBILITY_S = 30


@pytest.fixture
def settings(redis_server: str) -> Settings:
    return Settings(_env_file=None, redis_url=redis_server, key_prefix=PREFIX,  # type: ignore[call-arg]
                    visibility_timeout_s=VISIBILITY_S, lease_ttl_s=5.0)


@pytest.fixture
def r(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def store(r: redis.Redis, settings: Settings) -> JobStore:
    return JobStore(r, prefix=PREFIX, ttl_s=3600)


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    celery = make_app(settings)
    try:
        yield celery
    finally:
        celery.close()


def _job(store: JobStore, state: State = "queued", *, lane: Lane = "interactive", published: bool = True,
         age_s: float = 3 * VISIBILITY_S) -> str:
    """A job last touched ``age_s`` ago in ``state``, whose message was published (or not)."""
    rec, _ = store.create(JobRecord.new(endpoint=ENDPOINT, input={"prompt": "a fox"}, lane=lane))
    if state != "queued":
        store.update(rec.id, lambda x: x.walk_to(state))
    if published:
        store.mark_published([rec.id])
    store.r.zadd(f"{PREFIX}:state:{state}", {rec.id: time.time() - age_s})
    return rec.id


def _messages(r: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in r.lrange(queue, 0, -1)]


@pytest.mark.timeout(10)
def test_unfinished_job_without_lease_or_message_is_republished(app: Celery, store: JobStore, r: redis.Redis,
                                                                settings: Settings) -> None:
    job = _job(store, "queued")

    reaped = reap_once(app, store, settings)

    assert reaped == [job]
    msgs = _messages(r, settings.queue_interactive)
    assert len(msgs) == 1
    headers = msgs[0]["headers"]
    assert headers["id"] == job and headers["task"] == TASK_NAME  # the job id is the task id
    assert r.exists(seen_key(PREFIX, job))
    assert _messages(r, settings.queue_bulk) == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize("state", ["submitting", "in_queue", "in_progress", "mirroring"])
def test_a_started_job_whose_published_flag_was_never_set_is_republished(
        app: Celery, store: JobStore, r: redis.Redis, settings: Settings, state: State) -> None:
    # Its dispatcher was killed between the publish and the flag; the job ran, then lost its
    # message (seen in `make chaos`: a job left in `mirroring` with no lease and no message).
    job = _job(store, state, lane="bulk", published=False)

    assert reap_once(app, store, settings) == [job]
    assert [m["headers"]["id"] for m in _messages(r, settings.queue_bulk)] == [job]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("state", ["submitting", "in_queue", "in_progress", "mirroring"])
def test_started_job_is_republished_at_most_once_per_visibility_timeout(
        app: Celery, store: JobStore, r: redis.Redis, settings: Settings, state: State) -> None:
    job = _job(store, state, lane="bulk")

    first = reap_once(app, store, settings)
    second = reap_once(app, store, settings)

    assert first == [job] and second == []
    msgs = _messages(r, settings.queue_bulk)
    assert [m["headers"]["id"] for m in msgs] == [job]  # to its own lane's queue
    assert store.get(job).state == state  # the reaper never touches the record


@pytest.mark.timeout(10)
def test_jobs_with_a_sign_of_life_are_left_alone(app: Celery, store: JobStore, r: redis.Redis,
                                                 settings: Settings) -> None:
    leased = _job(store, "in_progress")
    leases = LeaseKeeper(r, prefix=PREFIX, ttl_s=5.0)
    lease = leases.acquire(leased)
    assert lease is not None
    seen = _job(store, "in_queue")
    mark_seen(r, settings, seen)
    never_published = _job(store, "queued", published=False)  # its producer is still publishing
    fresh = _job(store, "in_queue", age_s=1.0)
    done = _job(store, "completed")
    backlogged = _job(store, "queued", lane="bulk")
    r.lpush(settings.queue_bulk, b"someone else's message")  # the bulk lane has a backlog
    try:
        reaped = reap_once(app, store, settings)
    finally:
        leases.release(lease)
        leases.stop()

    assert reaped == []
    assert _messages(r, settings.queue_interactive) == []
    assert r.llen(settings.queue_bulk) == 1
    for job in (never_published, fresh, done, backlogged):
        assert not r.exists(seen_key(PREFIX, job)), job
    # With the backlog gone and the lease released, those two do count as lost.
    r.delete(settings.queue_bulk)
    assert reap_once(app, store, settings) == [backlogged, leased]


def test_prune_expired_drops_index_entries_of_expired_records(redis_server: str) -> None:
    import redis as redis_lib

    from falq.shared.jobs.records import JobRecord
    from falq.shared.jobs.store import JobStore
    from falq.shared.settings import Settings
    from falq.workers.maintenance.reaper import prune_expired

    r = redis_lib.Redis.from_url(redis_server)
    r.flushall()
    settings = Settings(_env_file=None, redis_url=redis_server, record_ttl_s=60)  # type: ignore[call-arg]
    store = JobStore(r, prefix=settings.key_prefix, ttl_s=settings.record_ttl_s)
    gone, alive = JobRecord.new(endpoint="fal-ai/qwen-image-2/edit", input={}), \
        JobRecord.new(endpoint="fal-ai/qwen-image-2/edit", input={})
    for rec in (gone, alive):
        store.create(rec)
        store.update(rec.id, lambda x: x.walk_to("completed"))
    long_ago = 1_000.0
    for key in (store.keys.created, store.keys.state("completed")):
        r.zadd(key, {gone.id: long_ago, alive.id: long_ago})
    r.delete(store.keys.job(gone.id))  # as if its TTL ran out
    assert prune_expired(store, settings) == 2
    assert r.zscore(store.keys.created, gone.id) is None and r.zscore(store.keys.state("completed"), gone.id) is None
    assert r.zscore(store.keys.created, alive.id) is not None  # a live record keeps its entries
