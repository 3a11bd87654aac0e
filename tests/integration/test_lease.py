"""workers.lease in this process: two LeaseKeepers (two "workers") on one real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from falq.shared.jobs.store import JobStore
from falq.workers.lease import LeaseKeeper

TTL_S = 0.6
PREFIX = "falqtest"


@pytest.fixture
def clients(redis_server: str) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """Two separate connections, as two worker processes would have."""
    a, b = redis.Redis.from_url(redis_server), redis.Redis.from_url(redis_server)
    a.flushall()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def keepers(clients: tuple[redis.Redis, redis.Redis]) -> Iterator[tuple[LeaseKeeper, LeaseKeeper]]:
    one = LeaseKeeper(clients[0], prefix=PREFIX, ttl_s=TTL_S)
    two = LeaseKeeper(clients[1], prefix=PREFIX, ttl_s=TTL_S)
    try:
        yield one, two
    finally:
        one.stop()
        two.stop()


def _job() -> str:
    return uuid.uuid4().hex


def _stop_renewing(keeper: LeaseKeeper) -> None:
    """The holder goes quiet (frozen process, partition): its renewal loop ends."""
    keeper.stop()
    if keeper._thread is not None:
        keeper._thread.join(5)
        assert not keeper._thread.is_alive()


@pytest.mark.timeout(10)
def test_only_one_keeper_acquires_a_jobs_lease(keepers: tuple[LeaseKeeper, LeaseKeeper]) -> None:
    one, two = keepers
    job = _job()

    lease = one.acquire(job)

    assert lease is not None and lease.job_id == job
    assert two.acquire(job) is None
    assert one.acquire(job) is None  # not re-entrant either: a second delivery in the same process waits
    assert one.holder(job) == lease.token == two.holder(job)
    assert one.still_held(lease)
    other = two.acquire(_job())  # other jobs are unaffected
    assert other is not None


@pytest.mark.timeout(10)
def test_renewing_holder_keeps_the_lease_past_its_ttl(keepers: tuple[LeaseKeeper, LeaseKeeper]) -> None:
    one, two = keepers
    job = _job()
    lease = one.acquire(job)
    assert lease is not None

    time.sleep(TTL_S * 3)  # the keeper's thread renews every TTL/3

    assert two.acquire(job) is None
    assert one.holder(job) == lease.token and one.still_held(lease)


@pytest.mark.timeout(10)
def test_lease_passes_to_other_keeper_after_holder_stops_renewing(keepers: tuple[LeaseKeeper, LeaseKeeper]) -> None:
    one, two = keepers
    job = _job()
    old = one.acquire(job)
    assert old is not None
    _stop_renewing(one)
    assert two.acquire(job) is None  # not before the TTL ran out

    time.sleep(TTL_S + 0.3)
    new = two.acquire(job)

    assert new is not None and new.token != old.token
    assert two.holder(job) == new.token and two.still_held(new)
    # The old holder wakes up: its release must not drop a lease that is no longer its own.
    one.release(old)
    assert two.holder(job) == new.token
    time.sleep(TTL_S * 1.5)  # `two` keeps renewing its own lease
    assert two.holder(job) == new.token


@pytest.mark.timeout(10)
def test_stale_holders_renewal_does_not_extend_the_new_holders_lease(
        keepers: tuple[LeaseKeeper, LeaseKeeper], clients: tuple[redis.Redis, redis.Redis]) -> None:
    one, two = keepers
    job = _job()
    old = one.acquire(job)
    assert old is not None
    _stop_renewing(one)
    time.sleep(TTL_S + 0.3)
    new = two.acquire(job)
    assert new is not None
    _stop_renewing(two)  # so that only `one` could touch the lease's expiry from here on
    time.sleep(TTL_S / 2)
    before = clients[0].pttl(two.key(job))
    assert 0 < before < TTL_S * 1000 * 0.75

    one.renew_now()

    after = clients[0].pttl(two.key(job))
    assert after <= before
    assert two.holder(job) == new.token


@pytest.mark.timeout(10)
def test_still_held_turns_false_for_old_holder_once_another_keeper_took_over(
        keepers: tuple[LeaseKeeper, LeaseKeeper]) -> None:
    one, two = keepers
    job = _job()
    old = one.acquire(job)
    assert old is not None
    _stop_renewing(one)
    time.sleep(TTL_S + 0.3)
    new = two.acquire(job)
    assert new is not None

    one.renew_now()  # the old holder's next renewal round finds the lease gone

    assert not one.still_held(old)


@pytest.mark.timeout(10)
def test_release_frees_the_lease_at_once(keepers: tuple[LeaseKeeper, LeaseKeeper]) -> None:
    one, two = keepers
    job = _job()
    lease = one.acquire(job)
    assert lease is not None

    one.release(lease)

    assert not one.still_held(lease)
    assert one.holder(job) is None
    assert two.acquire(job) is not None


@pytest.mark.timeout(10)
def test_renewal_reports_cancel_requests_and_deleted_records(
        keepers: tuple[LeaseKeeper, LeaseKeeper], clients: tuple[redis.Redis, redis.Redis]) -> None:
    one, _ = keepers
    r = clients[0]
    cancelled, cancelled_before, deleted, untouched = _job(), _job(), _job(), _job()
    for job in (cancelled, cancelled_before, deleted, untouched):
        r.hset(f"{PREFIX}:job:{job}", "state", "in_queue")
        assert one.acquire(job) is not None
    JobStore(r, prefix=PREFIX).request_cancel(cancelled)  # the record's cancel field
    r.set(f"{PREFIX}:cancel:{cancelled_before}", b"1")  # as a producer of the release before asked
    r.delete(f"{PREFIX}:job:{deleted}")
    assert not one.cancel_seen(cancelled)  # cancel_seen never asks Redis itself

    one.renew_now()

    assert one.cancel_seen(cancelled) and not one.deleted_seen(cancelled)
    assert one.cancel_seen(cancelled_before) and not one.deleted_seen(cancelled_before)
    assert one.deleted_seen(deleted) and not one.cancel_seen(deleted)
    assert not one.cancel_seen(untouched) and not one.deleted_seen(untouched)


@pytest.mark.timeout(10)
def test_holders_are_scored_by_lease_end_and_renewal_moves_it(
    keepers: tuple[LeaseKeeper, LeaseKeeper], clients: tuple[redis.Redis, redis.Redis]
) -> None:
    one, _ = keepers
    r = clients[0]
    job = _job()
    sec, usec = r.time()
    before = sec + usec / 1e6

    assert one.acquire(job) is not None

    first = r.zscore(one.keys.holders, job)
    assert first is not None and before + TTL_S - 0.05 <= first <= before + TTL_S + 0.5
    time.sleep(TTL_S * 0.6)
    one.renew_now()
    moved = r.zscore(one.keys.holders, job)
    assert moved is not None and moved >= first + TTL_S * 0.5


@pytest.mark.timeout(10)
def test_orphans_reads_only_leases_past_their_end(
    keepers: tuple[LeaseKeeper, LeaseKeeper], clients: tuple[redis.Redis, redis.Redis]
) -> None:
    """A sweep claims a dead holder's job once its lease ran out, and never a live holder's,
    however long that one has held it; an entry an older falq scored by the lease's start is
    kept while its lease lives."""
    one, two = keepers
    r = clients[0]
    live, dead, legacy = _job(), _job(), _job()
    assert one.acquire(live) is not None
    assert two.acquire(dead) is not None
    # Held by an older falq: its lease renewed without moving the score, which is when it was taken.
    r.set(one.key(legacy), "old-falq:token", px=60_000)
    r.zadd(one.keys.holders, {legacy: time.time() - 3600})
    _stop_renewing(two)

    assert one.orphans() == []  # nothing has run out yet
    time.sleep(TTL_S + 0.2)
    one.renew_now()

    assert one.orphans() == [dead]
    assert one.orphans() == []  # claimed once, for one sweeper
    assert r.zscore(one.keys.holders, live) is not None
    assert r.zscore(one.keys.holders, legacy) is not None


@pytest.mark.timeout(10)
def test_a_renewal_that_rides_once_per_job_runs_once_per_round(keepers: tuple[LeaseKeeper, LeaseKeeper]) -> None:
    """The limiter's slot keeper asks to ride for every job it admits, each time with a new bound
    method of the same keeper: the loop must still call it once per round, not once per job."""
    one, _ = keepers

    class Slots:
        calls = 0

        def renew_now(self) -> None:
            self.calls += 1

    slots = Slots()
    for _ in range(50):
        one.ride(slots.renew_now, 10.0)
    end = time.monotonic() + 5
    while slots.calls == 0 and time.monotonic() < end:
        time.sleep(0.01)
    _stop_renewing(one)  # lets the round in flight finish
    assert 1 <= slots.calls < 10, slots.calls  # a round every TTL_S / 3 s; 50 a round if each ride counted


def test_a_release_after_a_step_that_ran_to_its_end_ends_the_crash_streak(
        keepers: tuple[LeaseKeeper, LeaseKeeper], clients: tuple[redis.Redis, redis.Redis]) -> None:
    one, _ = keepers
    r = clients[0]
    job = _job()
    record = one.keys.job(job)
    r.hset(record, mapping={"doc": "{}", "crashes": 2})  # two crashed steps in a row
    lease = one.acquire(job)
    assert lease is not None
    one.release(lease)  # the step crashed (falq.workers.tasks.crashed counts it): the streak goes on
    assert r.hget(record, "crashes") == b"2"
    lease = one.acquire(job)
    assert lease is not None
    one.release(lease, steady=True)  # the step ran to its end: the streak is over, in the same call
    assert r.hget(record, "crashes") is None and r.get(one.key(job)) is None
    assert r.hget(record, "doc") == b"{}"  # only the streak goes
