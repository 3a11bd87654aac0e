"""Thumbnails made ahead by the gateway (:mod:`falq.gateway.console.ahead`), on a real stack.

Redis, moto S3, the fal emulator and a worker process run for real; the gateways are real
(:class:`GatewayServer`). Checked: with a gateway running (its console touched once: the
threads start with the console's first request), a completed job's thumbnail appears in S3
without anyone viewing the gallery, under its tenant's folder; two replicas make each one once
between them (the Redis claim); the worker makes none (no gateway, no thumbnail); a gateway
started later makes the newest ones when its console is first opened; a page view then answers
from memory; the threads end with the server; the waiting queue is bounded (the oldest
dropped, the newest made first); the setting turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from falq.gateway.console import console_of
from falq.gateway.console.ahead import ThumbsAhead, _Work
from falq.gateway.console.pages import Console
from falq.gateway.server import GatewayServer
from falq.producers import Falq
from falq.shared.jobs.records import JobRecord, StoredImage
from falq.shared.storage.s3 import Storage
from falq.shared.tenants.store import Tenant, TenantStore
from falq.testing.stack import DevStack
from tests.conftest import wait_for
from tests.system.test_console_signin_limit import try_key

KEY = "falq-console-ahead-key-0123456789abcdef"


def _thumb_key(console: Console, rec: JobRecord) -> str:
    img = min(rec.outputs, key=lambda i: i.index)
    return console.thumbs.key(img, console.thumbs.folder_of(rec.endpoint, img))


def _thumbs_in_s3(storage: Storage) -> list[str]:
    return [k for k in storage.list_keys() if "/_thumbs/" in f"/{k}"]


@pytest.fixture
def jobs(clean_stack: DevStack) -> Iterator[tuple[DevStack, Falq]]:
    settings = clean_stack.settings()
    r = redis.Redis.from_url(settings.redis_url)
    TenantStore(r, prefix=settings.key_prefix).put(Tenant(name="acme"))  # its images go under "acme/"
    r.close()
    clean_stack.start_worker(concurrency=10)
    yield clean_stack, Falq(settings)


@pytest.mark.timeout(120)
def test_two_replicas_make_each_thumbnail_once_ahead_of_any_view(jobs: tuple[DevStack, Falq]) -> None:
    stack, falq = jobs
    settings = stack.settings()
    with GatewayServer(settings, api_keys=[KEY]) as a, GatewayServer(settings, api_keys=[KEY]) as b:
        ca, cb = console_of(a.app), console_of(b.app)
        assert ca.ahead is None  # nothing runs before the console's first request
        assert httpx.get(f"{a.url}/ui/login").status_code == httpx.get(f"{b.url}/ui/login").status_code == 200
        assert ca.ahead is not None and cb.ahead is not None and ca.ahead.running and cb.ahead.running
        recs = [j.wait(60) for j in [falq.generate(f"made ahead {i}", seed=i) for i in range(4)]
                + [Falq(settings, tenant="acme").generate(f"acme's picture {i}", seed=10 + i) for i in range(2)]]
        assert all(rec.state == "completed" and rec.outputs for rec in recs), [rec.errors for rec in recs]
        keys = {rec.id: _thumb_key(ca, rec) for rec in recs}
        # Nobody opened the console: the thumbnails appear in S3 all the same.
        wait_for(lambda: all(ca.thumbs.storage.head(k) for k in keys.values()), timeout=30,
                 what="every thumbnail made ahead")
        prefix = ca.thumbs.storage.prefix
        for rec in recs:
            folder = "acme/" if rec.tenant == "acme" else ""
            assert keys[rec.id] == f"{prefix}/{folder}_thumbs/{settings.console_thumb_px}/{rec.outputs[0].sha256}.jpg"
            head = ca.thumbs.storage.head(keys[rec.id])
            assert head is not None and head["ContentType"] == "image/jpeg"
        ours = [k for k in _thumbs_in_s3(ca.thumbs.storage) if any(r.outputs[0].sha256 in k for r in recs)]
        assert sorted(ours) == sorted(keys.values())  # one each, in its folder, nowhere else
        # Between the two replicas each thumbnail was made exactly once (the claim in Redis).
        # (The replica that lost a claim may see that job a little later: wait until both saw all.)
        wait_for(lambda: ca.ahead.stats.skipped_claimed + cb.ahead.stats.skipped_claimed >= len(recs), timeout=10,
                 what="both replicas to have seen every completion")
        assert ca.thumbs.made + cb.thumbs.made == len(recs)
        assert ca.ahead.stats.made + cb.ahead.stats.made == len(recs)
        assert ca.ahead.stats.skipped_claimed + cb.ahead.stats.skipped_claimed == len(recs)
        # A page view on the replica that made one answers from its memory: nothing is made again.
        base, mine = next((url, rec) for con, url in ((ca, a.url), (cb, b.url)) for rec in recs
                          if rec.tenant == "default" and con.thumbs.cached(rec.outputs[0]))
        with httpx.Client(base_url=base, timeout=10) as c:
            c.cookies.update(try_key(base, KEY, "127.0.0.1").cookies)
            got = c.get(f"/ui/jobs/{mine.id}/thumb/0")
            assert got.status_code == 200 and got.content[:2] == b"\xff\xd8"
        assert ca.thumbs.made + cb.thumbs.made == len(recs)
        stats = ca.ahead.stats
        assert stats.errors == 0 and cb.ahead.stats.errors == 0, (stats.last_error, cb.ahead.stats.last_error)


@pytest.mark.timeout(120)
def test_workers_make_none_and_a_gateway_started_later_makes_the_newest(jobs: tuple[DevStack, Falq]) -> None:
    stack, falq = jobs
    settings = stack.settings()
    recs = [j.wait(60) for j in [falq.generate(f"before any gateway {i}", seed=i) for i in range(3)]]
    assert all(rec.state == "completed" for rec in recs)
    storage = Storage(settings)
    time.sleep(1.0)
    assert not [k for k in _thumbs_in_s3(storage) if any(r.outputs[0].sha256 in k for r in recs)]  # workers make none
    with GatewayServer(settings, api_keys=[KEY]) as gw:
        console = console_of(gw.app)
        assert httpx.get(f"{gw.url}/ui/login").status_code == 200  # someone opens the console
        wait_for(lambda: all(storage.head(_thumb_key(console, rec)) for rec in recs), timeout=30,
                 what="the newest completions' thumbnails, made when the console was opened")
        assert console.ahead is not None and console.ahead.stats.made == len(recs)
        assert all(console.thumbs.cached(rec.outputs[0]) for rec in recs)  # and kept in memory for the first page
        ahead = console.ahead
    # The server stopped: its threads end by themselves (nobody called close).
    wait_for(lambda: not ahead.running, timeout=10, what="the threads to end with the server")


def test_switched_off_by_its_setting(clean_stack: DevStack) -> None:
    settings = clean_stack.settings(FALQ_CONSOLE_THUMBS_AHEAD_WORKERS="0")
    with GatewayServer(settings, api_keys=[KEY]) as gw:
        assert httpx.get(f"{gw.url}/ui/login").status_code == 200
        assert console_of(gw.app).ahead is None


def test_the_waiting_queue_is_bounded_and_newest_first(clean_stack: DevStack) -> None:
    settings = clean_stack.settings()
    r = redis.Redis.from_url(settings.redis_url)
    falq = Falq(settings)
    from falq.gateway.console.thumbs import Thumbnails

    ahead = ThumbsAhead(r, falq.store, Thumbnails(Storage(settings), 384), prefix=settings.key_prefix, workers=1,
                        queue=3)  # not started: only the queue is looked at
    img = StoredImage(index=0, bucket="b", key="k.png", size=1, sha256="0" * 64, content_type="image/png", width=1,
                      height=1)
    ahead.enqueue([_Work(f"job-{i}", img, "") for i in range(10)])
    assert ahead.pending() == 3 and ahead.stats.dropped == 7 and ahead.stats.queued == 10
    assert [ahead._queue.pop().job_id for _ in range(3)] == ["job-9", "job-8", "job-7"]  # the order makers take
    with pytest.raises(ValueError, match="workers must be at least 1"):
        ThumbsAhead(r, falq.store, ahead.thumbs, prefix="p", workers=0)
    r.close()
