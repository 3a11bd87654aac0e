"""The Lua limiter against a real redis-server: rate, burst, slots, leases, priority, budget, pause."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from falq.shared.limits.store import Answer, Limiter, key_id, micro, read_config, spend_today, write_config
from falq.shared.settings import Settings
from falq.testing.stack import RedisServer
from falq.workers.limits.limiter import SlotKeeper

EP = "fal-ai/qwen-image-2/text-to-image"
PRO = "fal-ai/qwen-image-2/pro/edit"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(Path(tmp_path_factory.mktemp("limits-redis"))).start()
    yield srv
    srv.stop()


@pytest.fixture
def r(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield client
    client.close()


def make(r: redis.Redis, **over: Any) -> Limiter:
    fields = {"fal_key": "falq-unit-key-0123456789", "rate_per_s": 0, "max_outstanding": 0, "slot_lease_s": 15,
              "rate_headroom": 0.0, **over}
    return Limiter(r, Settings(_env_file=None, **fields))  # type: ignore[call-arg]


def grant(lim: Limiter, job: str, *, lane: str = "bulk", ep: str = EP, cost: int = 0) -> Answer:
    return lim.acquire(job, ep, lane, cost)


def windows_max(times_ms: list[int], width_ms: int = 1000) -> int:
    """Largest number of events in any half-open window [t_i, t_i + width)."""
    ts = sorted(times_ms)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while j < len(ts) and ts[j] < t + width_ms:
            j += 1
        best = max(best, j - i)
    return best


def test_key_id_never_contains_the_key() -> None:
    kid = key_id("falq-unit-key-0123456789")
    assert len(kid) == 12 and "0123" not in kid and key_id(None) == "nokey"


def test_utc_day_from_redis_time_matches_python(r: redis.Redis) -> None:
    lim = make(r)
    sec, _ = r.time()
    assert lim.state().today == dt.datetime.fromtimestamp(int(sec), dt.UTC).strftime("%Y-%m-%d")
    assert spend_today(r, "falq")[0] == lim.state().today


def test_config_is_seeded_once_then_redis_is_the_truth(r: redis.Redis) -> None:
    make(r, rate_per_s=7, max_outstanding=3)
    grant(make(r, rate_per_s=7, max_outstanding=3), "a")
    cfg = read_config(r, "falq")
    assert float(cfg["rate"]) == 7 and cfg["max_outstanding"] == "3" and cfg["budget_daily"] == "none"
    # a worker with other defaults does not override what is stored
    grant(make(r, rate_per_s=99, max_outstanding=50), "b")
    assert float(read_config(r, "falq")["rate"]) == 7


def test_token_bucket_never_exceeds_rate_in_any_window_and_uses_it(r: redis.Redis) -> None:
    lim = make(r, rate_per_s=40)
    grants: list[int] = []
    end = time.monotonic() + 2.2
    n = 0
    while time.monotonic() < end:
        ans = grant(lim, f"j{n}")
        n += 1
        if ans.ok:
            grants.append(ans.at_ms)
        else:
            time.sleep(ans.wait_s)
    assert windows_max(grants) <= 40
    span = (max(grants) - min(grants)) / 1000
    assert (len(grants) - 1) / span >= 0.97 * 40
    # reserved grants are evenly spaced: 1000/rate ms apart
    gaps = [b - a for a, b in zip(sorted(grants), sorted(grants)[1:], strict=False)]
    assert min(gaps) >= 24


def test_burst_lets_that_many_through_at_once(r: redis.Redis) -> None:
    lim = make(r, rate_per_s=2, rate_burst=4)
    answers = [grant(lim, f"b{i}") for i in range(7)]
    assert [a.delay_s for a in answers[:4]] == [0, 0, 0, 0]
    # the next tokens are reserved ahead (up to a 1 s horizon), 500 ms apart
    assert answers[4].ok and 0.45 <= answers[4].delay_s <= 0.5
    assert answers[5].ok and 0.95 <= answers[5].delay_s <= 1.0
    assert not answers[6].ok and answers[6].status == "rate"


def test_headroom_paces_below_the_rate(r: redis.Redis) -> None:
    lim = make(r, rate_per_s=10, rate_headroom=0.05)
    a, b = grant(lim, "x"), grant(lim, "y")
    assert b.at_ms - a.at_ms == pytest.approx(105, abs=1)


def test_outstanding_cap_per_key_and_per_endpoint(r: redis.Redis) -> None:
    lim = make(r, max_outstanding=3, max_outstanding_per_endpoint={PRO: 1})
    assert all(grant(lim, f"s{i}").ok for i in range(3))
    assert grant(lim, "s3").status == "slots"
    lim.release("s0", refund=False)
    assert grant(lim, "p0", ep=PRO).ok
    lim.release("s1", refund=False)
    assert grant(lim, "p1", ep=PRO).status == "endpoint"
    assert grant(lim, "s4").ok
    assert len(lim.live_slots()) == 3
    assert lim.state().per_endpoint == {EP: 2, PRO: 1}


def test_reacquire_by_a_slot_holder_is_idempotent(r: redis.Redis) -> None:
    lim = make(r, max_outstanding=2)
    assert grant(lim, "a").ok and grant(lim, "b").ok
    assert grant(lim, "a").ok  # a redelivered job that holds a slot keeps it, takes no second one
    assert sorted(lim.live_slots()) == ["a", "b"]
    assert grant(lim, "c").status == "slots"


def test_dead_workers_slots_expire_after_the_lease(r: redis.Redis) -> None:
    lim = make(r, max_outstanding=2, slot_lease_s=0.4)
    assert grant(lim, "a").ok and grant(lim, "b").ok
    assert grant(lim, "c").status == "slots"
    time.sleep(0.5)
    assert lim.live_slots() == []
    assert grant(lim, "c").ok
    assert lim.state().outstanding == 1


def test_keeper_renews_only_jobs_whose_lease_this_process_holds(r: redis.Redis) -> None:
    lim = make(r, slot_lease_s=0.6)
    keeper = SlotKeeper(lim, owner="host:1")
    for job in ("mine", "theirs", "nobody"):
        assert grant(lim, job).ok
    r.set("falq:lease:mine", "host:1:abcd1234")
    r.set("falq:lease:theirs", "host:2:abcd1234")
    keeper._tracked.update({"mine", "theirs", "nobody"})
    for _ in range(4):
        time.sleep(0.2)
        keeper.renew_now()
    assert lim.live_slots() == ["mine"]
    assert keeper.tracked() == {"mine"}


def test_keeper_holds_what_it_renews_until_a_renewal_finds_the_slot_gone(r: redis.Redis) -> None:
    """LimitsAdmission.following counts a slot again only when this process does not renew it."""
    lim = make(r, slot_lease_s=5)
    keeper = SlotKeeper(lim, owner="host:1")
    assert grant(lim, "mine").ok
    r.set("falq:lease:mine", "host:1:abcd1234")
    keeper._tracked.add("mine")
    keeper.renew_now()
    assert keeper.holds("mine") and not keeper.holds("other")
    lim.release("mine", refund=False)  # the slot is gone (as after a long Redis outage)
    keeper.renew_now()
    assert not keeper.holds("mine")


def test_an_expired_waiting_entry_holds_no_bulk_back_and_housekeeping_drops_it(r: redis.Redis) -> None:
    lim = make(r, max_outstanding=1)
    assert grant(lim, "running").ok
    assert grant(lim, "urgent", lane="interactive").status == "slots"  # waits, ahead of bulk
    key = lim.keys.limits_waiting(lim.kid, "interactive")
    r.zadd(key, {"urgent": 1})  # its wait ended long ago (cancelled while waiting)
    lim.release("running", refund=False)
    assert grant(lim, "bulk-1", lane="bulk").ok  # admission counts only live waiters
    assert r.zcard(key) == 1  # the entry is memory until the housekeeping
    assert lim.state().waiting["interactive"] == 0
    assert r.zcard(key) == 0


def test_hold_counts_an_outstanding_request_even_above_the_cap(r: redis.Redis) -> None:
    lim = make(r, max_outstanding=1)
    assert grant(lim, "a").ok
    lim.hold("followed-again", EP)
    assert sorted(lim.live_slots()) == ["a", "followed-again"]
    assert grant(lim, "b").status == "slots"


def test_interactive_jobs_get_slots_before_bulk(r: redis.Redis) -> None:
    lim = make(r, max_outstanding=1)
    assert grant(lim, "running").ok
    assert grant(lim, "bulk1", lane="bulk").status == "slots"
    assert grant(lim, "inter", lane="interactive").status == "slots"
    lim.release("running", refund=False)
    # a slot is free, but an interactive job waits for it: bulk must not take it
    assert grant(lim, "bulk1", lane="bulk").status == "priority"
    assert grant(lim, "inter", lane="interactive").ok
    lim.release("inter", refund=False)
    assert grant(lim, "bulk1", lane="bulk").ok


def test_budget_stops_at_the_budget_and_resumes_when_raised(r: redis.Redis) -> None:
    lim = make(r, budget_daily=0.35)
    price = micro(0.035)
    results = [grant(lim, f"j{i}", cost=price) for i in range(12)]
    assert [a.status for a in results] == ["ok"] * 10 + ["budget"] * 2
    assert spend_today(r, "falq")[1] == pytest.approx(0.35)
    assert lim.state().waiting["budget"] == 2
    write_config(r, "falq", {"budget_daily": "0.42"})
    assert grant(lim, "j10", cost=price).ok and grant(lim, "j11", cost=price).ok
    assert grant(lim, "j12", cost=price).status == "budget"
    # fal never accepted j11's request: its reservation comes back
    lim.release("j11", refund=True)
    lim.release("j10", refund=False)
    assert spend_today(r, "falq")[1] == pytest.approx(0.385)
    assert grant(lim, "j12", cost=price).ok
    write_config(r, "falq", {"budget_daily": "none"})
    assert grant(lim, "j13", cost=price).ok


def test_runtime_changes_apply_on_the_next_admission(r: redis.Redis) -> None:
    lim = make(r, max_outstanding=1)
    assert grant(lim, "a").ok and grant(lim, "b").status == "slots"
    write_config(r, "falq", {"max_outstanding": "2"})
    assert grant(lim, "b").ok
    write_config(r, "falq", {"rate": "1", "max_outstanding": "0"})
    assert grant(lim, "c").ok and grant(lim, "d").delay_s == pytest.approx(1.0, abs=0.01)
    assert grant(lim, "e").status == "rate"


def test_pause_refuses_everyone_until_resumed(r: redis.Redis) -> None:
    lim = make(r)
    assert lim.pause("402 locked", 60) is True
    assert lim.pause("402 locked again", 60) is False
    ans = grant(lim, "a", lane="interactive")
    assert ans.status == "locked" and 59 <= ans.wait_s <= 60
    st = lim.state()
    assert st.paused_reason == "402 locked again" and st.waiting["locked"] == 1
    assert lim.resume()
    assert grant(lim, "a").ok


def test_send_check_counts_requests_on_their_way_and_answered_ones(r: redis.Redis) -> None:
    make(r, rate_per_s=3, rate_strict=False).acquire("seed", EP, "bulk", 0)  # seeds the configuration, logs no send
    lim = make(r, rate_per_s=3)
    oks = [lim.confirm(f"s{i}") for i in range(3)]
    assert all(wait == 0 for wait, _ in oks)
    wait, _ = lim.confirm("s3")
    assert 1 <= wait <= 5  # three POSTs are on their way: ask again shortly
    base = oks[0][1]
    for i in range(3):
        lim.answered(f"s{i}", base + 10 + i)  # answered (so arrived at fal) by these times
    wait, _ = lim.confirm("s3")
    # the 4th may leave only a full second after the 1st was known to have arrived
    sec, usec = r.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    assert wait == pytest.approx(base + 10 + 1000 - now_ms + 1, abs=3)


def test_an_admission_makes_the_send_check_and_logs_the_post_it_lets_go(r: redis.Redis) -> None:
    """Under the strict rate, an admission logs its POST as on its way when the send check passes
    then (the worker skips limiter.confirm); when the window is full, it still admits, logs
    nothing and leaves the check to limiter.confirm. Without FALQ_RATE_STRICT nothing is logged."""
    lim = make(r, rate_per_s=2, rate_headroom=0.0)
    first = grant(lim, "a")
    assert first.ok and first.sent_ms > 0
    assert lim.confirm("x")[0] == 0  # one on its way, room for one more in the window
    second = grant(lim, "b")  # the token may be reserved ahead (delay); the window is full now
    assert second.ok and second.sent_ms == 0
    assert lim.confirm("b")[0] > 0  # the check waits for an answer, as before
    lim.answered("a", first.sent_ms + 5)
    lim.answered("x", first.sent_ms + 5)
    from falq.shared.keys import Keys

    assert r.zrange(Keys("falq").limits_sending(lim.kid), 0, -1) == []  # both answered
    loose = make(r, rate_per_s=2, rate_strict=False)
    assert grant(loose, "c").sent_ms == 0


def test_the_days_spend_keys_get_their_expiry_with_the_first_charge_only(r: redis.Redis) -> None:
    from falq.shared.keys import Keys

    lim = make(r)
    r.config_resetstat()
    for i in range(3):
        assert grant(lim, f"c{i}", cost=30_000).ok
    day, spent = spend_today(r, "falq")
    assert spent == pytest.approx(0.09)
    keys = Keys("falq")
    for key in (keys.spend(day), keys.tenant_spend(day, "default")):
        assert 39 * 86400 < r.ttl(key) <= 40 * 86400, key
    assert r.info("commandstats")["cmdstat_expire"]["calls"] == 2  # one a key, not one a charge
    lim.release("c0", refund=True)
    assert spend_today(r, "falq")[1] == pytest.approx(0.06) and r.ttl(keys.spend(day)) > 39 * 86400


def test_an_admitted_job_leaves_every_waiting_set_of_its_lane(r: redis.Redis) -> None:
    from falq.shared.keys import Keys

    lim = make(r, max_outstanding=1)
    keys = Keys("falq")
    for lane in ("interactive", "bulk"):
        r.flushall()
        assert grant(lim, "holder", lane=lane).ok
        assert not grant(lim, "waiter", lane=lane).ok  # the cap: it waits in its lane's set
        assert r.zscore(keys.limits_waiting(lim.kid, lane), "waiter") is not None
        lim.release("holder", refund=False)
        assert grant(lim, "waiter", lane=lane).ok
        assert all(r.zscore(keys.limits_waiting(lim.kid, why), "waiter") is None
                   for why in ("interactive", "bulk", "budget", "locked"))


def test_an_expired_slot_stops_counting_at_once_and_the_housekeeping_frees_it(r: redis.Redis) -> None:
    """A dead worker's slot (its lease expired) no longer counts against the outstanding cap the
    moment it expires, without any trim first; `limiter.state` (the maintenance pass) drops it."""
    from falq.shared.keys import Keys

    lim = make(r, max_outstanding=1)
    assert grant(lim, "dead").ok
    slots = Keys("falq").limits_slots(lim.kid)
    assert grant(lim, "next").status == "slots"  # the live slot counts
    sec, usec = r.time()
    r.zadd(slots, {"dead": int(sec) * 1000 + int(usec) // 1000 - 1})  # its lease ran out
    assert grant(lim, "next").ok
    assert r.zscore(slots, "dead") is not None  # only memory now
    assert lim.state().outstanding == 1 and r.zscore(slots, "dead") is None


def test_the_send_log_counts_by_score_and_the_housekeeping_frees_old_entries(r: redis.Redis) -> None:
    """An answer older than a second stops counting in the send check without a trim first, and
    the wait the check asks for is measured from the oldest answer still inside the window (never
    a stale one); `limiter.state` drops what no longer counts (memory only)."""
    from falq.shared.keys import Keys

    keys = Keys("falq")
    lim = make(r, rate_per_s=1, rate_burst=1, rate_headroom=0.0)
    assert grant(make(r, rate_per_s=1, rate_burst=1, rate_strict=False), "seed").ok  # seeds the runtime config
    sec, usec = r.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    sent = keys.limits_sent(lim.kid)
    r.zadd(sent, {"old@1": now_ms - 5000})  # answered long ago: outside the window
    assert lim.confirm("a")[0] == 0  # counted by score: the stale answer does not hold it back
    lim.answered("a", now_ms + 2)
    wait, _ = lim.confirm("b")
    assert 900 <= wait <= 1003  # from a's answer, not from the stale one (which would give 1 ms)
    assert r.zscore(sent, "old@1") is not None  # not trimmed by the check
    lim.state()
    assert r.zscore(sent, "old@1") is None and r.zcard(sent) == 1
    assert r.ttl(keys.limits_sending(lim.kid)) == -2 and r.ttl(sent) == -1  # no expiry per call
