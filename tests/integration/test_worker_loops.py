"""A worker runs at most four background loops (docs/internals/recovery.md, "Background loops"),
and its maintenance pass runs each cleanup at its cadence.

The worker's ready hook (falq.workers.signals) runs in this process against the test stack with
falq's default settings; a lease and a limiter slot are then held, so the lazily started
renewals run too. The loops are counted by thread name.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from falq.shared.settings import reset_settings
from falq.testing.stack import DevStack

# Per-item helpers (one delivery, one chain entry) are not loops: they end with their item.
NOT_LOOPS = {"falq-callback", "falq-chain"}
ALLOWED = {"falq-lease-keeper", "falq-maintenance", "falq-consumers", "falq-reach"}


def _loops(before: set[int]) -> list[str]:
    return sorted(t.name for t in threading.enumerate()
                  if t.ident not in before and t.name.startswith("falq-") and t.name not in NOT_LOOPS)


@pytest.fixture
def worker_env(clean_stack: DevStack) -> Iterator[None]:
    env = clean_stack.env()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings()
    import falq.workers.app as worker_app
    from falq.workers.tasks import get_context

    saved_app = worker_app._app
    worker_app._app = None
    get_context.cache_clear()
    try:
        yield
    finally:
        ctx = get_context()
        ctx.shutting_down.set()
        if ctx.reach is not None:
            ctx.reach.stop()
        ctx.leases.stop()
        ctx.admission.keeper.stop()  # type: ignore[attr-defined]
        get_context.cache_clear()
        worker_app._app = saved_app
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()


def test_a_worker_runs_at_most_four_background_loops(worker_env: None) -> None:
    from falq.workers.signals import _on_ready
    from falq.workers.tasks import get_context

    before = {t.ident for t in threading.enumerate() if t.ident is not None}
    _on_ready()
    ctx = get_context()
    assert ctx.settings.takeover and ctx.settings.catalogue  # the defaults: every loop there is
    lease = ctx.leases.acquire("loops-test-job")            # starts the lease keeper
    assert lease is not None
    ctx.admission.keeper.track("loops-test-job")            # type: ignore[attr-defined]  # the slot renewal
    time.sleep(0.5)
    loops = _loops(before)
    assert set(loops) <= ALLOWED, f"loops not in docs/internals/recovery.md's list: {loops}"
    assert len(loops) <= 4, f"a worker runs {len(loops)} background loops: {loops}"
    assert {"falq-lease-keeper", "falq-maintenance", "falq-consumers", "falq-reach"} == set(loops)
    ctx.leases.release(lease)


def test_the_maintenance_pass_runs_each_cleanup_at_its_cadence(r: redis.Redis) -> None:
    from falq.shared.keys import Keys
    from falq.workers.maintenance.housekeeping import Cleanup, MaintenancePass

    keys = Keys("loops-test")
    calls: dict[str, int] = {"every": 0, "slow": 0, "mine": 0, "boom": 0}

    def count(name: str) -> Callable[[], None]:
        def fn() -> None:
            calls[name] += 1
        return fn

    def boom() -> None:
        calls["boom"] += 1
        raise ValueError("a failing cleanup does not stop the others")

    def worker() -> MaintenancePass:
        return MaintenancePass(r, keys, 0.5, [Cleanup("boom", boom), Cleanup("every", count("every")),
                                              Cleanup("slow", count("slow"), every_s=30.0),
                                              Cleanup("mine", count("mine"), locked=False)])

    a, b = worker(), worker()
    first, second = a.run_once(), b.run_once()       # one pass lock: b's locked cleanups wait
    assert first == ["every", "slow", "mine"] and second == ["mine"]
    r.delete(keys.maintenance_lock)                   # the next pass (the lock lapses after 450 ms)
    assert b.run_once() == ["every", "mine"]          # "slow" ran within its 30 s, by a
    assert calls == {"every": 2, "slow": 1, "mine": 3, "boom": 2}
