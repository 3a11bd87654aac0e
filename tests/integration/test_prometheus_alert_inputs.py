"""The figures falq's alert rules read that the exporter added for them, read from a real Redis.

``falq_budget_daily_dollars``, ``falq_fal_key_paused{key}``, ``falq_limiter_waiting_jobs{reason}``,
``falq_archive_lag``, and the counters exported as 0 before their first increment (so that
``rate()`` sees the first one). tests/system/test_prometheus_scrapes_real_stack.py sees them in a real
Prometheus; this checks the edge cases a run does not reach (no stream, no group, a key of
another type, expired waits).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from falq.ops.exporter import FalqCollector
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.keys import Keys
from falq.shared.metrics import read_snapshot
from falq.shared.settings import Settings


@pytest.fixture
def setup(redis_server: str) -> Iterator[tuple[redis.Redis, Settings, Keys]]:
    prefix = "t" + os.urandom(4).hex()
    settings = Settings(_env_file=None, redis_url=redis_server, key_prefix=prefix,  # type: ignore[call-arg]
                        queue_interactive=f"{prefix}.i", queue_bulk=f"{prefix}.b")
    r = redis.Redis.from_url(redis_server)
    try:
        yield r, settings, Keys(prefix)
    finally:
        for key in r.scan_iter(match=f"{prefix}*"):
            r.delete(key)
        r.close()


def exported(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FalqCollector(settings))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(generate_latest(registry).decode()) for s in fam.samples}


def test_nothing_there_yet(setup: tuple[redis.Redis, Settings, Keys]) -> None:
    r, settings, _ = setup
    snap = read_snapshot(r, settings)
    assert snap.archive_lag == 0 and snap.paused_keys == {} and snap.waiting == {} and snap.budget_daily is None
    data = exported(settings)
    assert data[("falq_archive_lag", ())] == 0
    assert not any(name == "falq_budget_daily_dollars" for name, _ in data)  # no budget, no series
    # Seeded at 0: what the alerts divide exists before its first increment.
    assert data[("falq_failures_total", (("reason", "content_policy"),))] == 0
    assert data[("falq_retries_total", (("reason", "storage_transient"),))] == 0
    for endpoint in ENDPOINTS:
        for state in ("completed", "failed", "cancelled"):
            assert data[("falq_jobs_finished_total", (("endpoint", endpoint), ("state", state)))] == 0


def test_counted_values_win_over_the_seeded_zeros(setup: tuple[redis.Redis, Settings, Keys]) -> None:
    r, settings, keys = setup
    r.hset(keys.metrics_counters, mapping={"failure|content_policy": 3, "finished|failed|fal-ai/qwen-image-2/edit": 3})
    data = exported(settings)
    assert data[("falq_failures_total", (("reason", "content_policy"),))] == 3
    assert data[("falq_jobs_finished_total", (("endpoint", "fal-ai/qwen-image-2/edit"), ("state", "failed")))] == 3


def test_budget_from_the_runtime_config(setup: tuple[redis.Redis, Settings, Keys]) -> None:
    r, settings, keys = setup
    r.hset(keys.limits_config, "budget_daily", "12.5")
    assert read_snapshot(r, settings).budget_daily == 12.5
    assert exported(settings)[("falq_budget_daily_dollars", ())] == 12.5
    r.hset(keys.limits_config, "budget_daily", "none")  # `falq budget --clear`
    assert read_snapshot(r, settings).budget_daily is None


def test_paused_keys_and_waiting_jobs(setup: tuple[redis.Redis, Settings, Keys]) -> None:
    r, settings, keys = setup
    r.hset(keys.limits_keys, mapping={"aaaaaaaaaaaa": "1111", "bbbbbbbbbbbb": "2222"})
    r.set(f"{keys.limits('aaaaaaaaaaaa')}:paused", "fal account locked", px=60_000)
    now_ms = int(time.time() * 1000)
    r.zadd(f"{keys.limits('aaaaaaaaaaaa')}:waiting:locked", {"j1": now_ms + 60_000, "j2": now_ms + 60_000})
    r.zadd(f"{keys.limits('bbbbbbbbbbbb')}:waiting:budget", {"j3": now_ms + 60_000, "gone": now_ms - 5_000})
    snap = read_snapshot(r, settings)
    assert snap.paused_keys == {"aaaaaaaaaaaa": 1, "bbbbbbbbbbbb": 0}
    assert snap.waiting == {"interactive": 0, "bulk": 0, "budget": 1, "locked": 2}  # the expired wait is not counted
    data = exported(settings)
    assert data[("falq_fal_key_paused", (("key", "aaaaaaaaaaaa"),))] == 1
    assert data[("falq_limiter_waiting_jobs", (("reason", "locked"),))] == 2


def test_archive_lag_is_read_defensively(setup: tuple[redis.Redis, Settings, Keys]) -> None:
    r, settings, keys = setup
    for i in range(5):
        r.xadd(keys.ended, {"id": f"job{i}", "v": "3", "state": "completed", "ar": "1", "cb": "0", "ch": "0"})
    assert read_snapshot(r, settings).archive_lag == 5  # no archiver has ever read it
    r.xgroup_create(keys.ended, "archivers", id="0")
    got = r.xreadgroup("archivers", "a1", {keys.ended: ">"}, count=3)
    ids = [entry_id for _, entries in got for entry_id, _ in entries]
    r.xack(keys.ended, "archivers", ids[0])
    # 2 delivered and not acked, 2 never delivered.
    assert read_snapshot(r, settings).archive_lag == 4
    # An older release's stream counts too, until the archivers drained it.
    r.xadd(keys.archive, {"id": "old", "v": "3"})
    assert read_snapshot(r, settings).archive_lag == 5
    r.delete(keys.ended, keys.archive)
    r.set(keys.ended, "not a stream")
    assert read_snapshot(r, settings).archive_lag == 0
