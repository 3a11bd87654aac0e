"""Recovery with the settings a new user gets: a SIGKILLed worker's jobs resume in seconds.

The test bed (testing/stack.py) shortens the visibility timeout to 30 s and the lease to 6 s;
here both are put back to their defaults, and the global limits too, so this is what a
user sees out of the box: a dead worker's messages would come back only after 600 s, but
its jobs are taken over once their leases expire (``workers/maintenance/reaper.py``, takeover).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from falq.shared.jobs.records import AT_FAL
from falq.shared.settings import Settings
from falq.testing.stack import DevStack
from tests.conftest import emulator_submissions, wait_for

DEFAULTS = Settings(_env_file=None)  # type: ignore[call-arg]
PRODUCTION = {
    "FALQ_VISIBILITY_TIMEOUT_S": str(DEFAULTS.visibility_timeout_s),
    "FALQ_LEASE_TTL_S": str(DEFAULTS.lease_ttl_s),
    "FALQ_RETRY_BASE_S": str(DEFAULTS.retry_base_s),
    "FALQ_RETRY_MAX_S": str(DEFAULTS.retry_max_s),
    "FALQ_RATE_PER_S": str(DEFAULTS.rate_per_s),
    "FALQ_MAX_OUTSTANDING": str(DEFAULTS.max_outstanding),
}


def test_the_defaults_are_what_this_test_assumes() -> None:
    assert DEFAULTS.visibility_timeout_s == 600 and DEFAULTS.lease_ttl_s == 20


@pytest.mark.timeout(240)
def test_sixty_jobs_two_sigkills_all_done_within_two_minutes_with_defaults(
        clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="fixed:6", concurrency=40)
    worker = clean_stack.start_worker(concurrency=200, env=PRODUCTION)
    jobs = [falq.generate(f"recover {i}", seed=i) for i in range(60)]
    ids = [j.id for j in jobs]
    t0 = time.monotonic()
    for _ in range(2):
        # Kill it while it holds jobs at fal.
        wait_for(lambda: sum(1 for r in falq.store.get_many(ids) if r and r.state in AT_FAL) >= 10, 60, 0.2,
                 "jobs held at fal")
        clean_stack.kill_worker(worker)
        worker = clean_stack.start_worker(concurrency=200, env=PRODUCTION)
        time.sleep(3)
    recs = wait_for(lambda: (rs := falq.store.get_many(ids)) and all(r and r.terminal for r in rs) and rs,
                    120, 0.5, "all 60 jobs after two SIGKILLs")
    took = time.monotonic() - t0
    assert all(r.state == "completed" for r in recs), [(r.id, r.state, r.errors[-1:]) for r in recs if r]
    assert took < 120, f"took {took:.0f}s"
    subs = emulator_submissions(clean_stack)
    for r in recs:
        interrupted = sum(1 for e in r.errors if e.type == "submit_interrupted")
        assert len(subs.get(r.id, [])) <= r.attempts and len(subs.get(r.id, [])) <= 1 + interrupted
    assert "took over" in clean_stack.worker_logs()
