"""The chaos suite: `make chaos` runs the full scenario; `make test` runs a quick variant."""

from __future__ import annotations

import os

import pytest

from tests.chaos.scenario import run, table


def _check(report_text: str, report: object) -> None:
    print("\n" + report_text)
    r = report
    assert r.lost == 0, r.failures[:20]  # type: ignore[attr-defined]
    assert r.states.get("terminal_missing", 0) == 0, r.failures[:20]  # type: ignore[attr-defined]
    assert r.over_attempts == 0, r.failures[:20]  # type: ignore[attr-defined]
    assert r.images_bad == 0, r.failures[:20]  # type: ignore[attr-defined]
    assert r.unexplained_failures == 0  # type: ignore[attr-defined]
    assert r.extra_submissions == 0, r.failures[:20]  # type: ignore[attr-defined]
    assert r.paid_output_dropped == 0, r.failures[:20]  # type: ignore[attr-defined]
    assert r.cancels_sent >= 1 and r.submit_outage_s > 0  # type: ignore[attr-defined]
    assert r.emulator_faults.get("result_5xx_with_id", 0) > 0, r.emulator_faults  # type: ignore[attr-defined]
    assert not r.batch_count_mismatches, r.batch_count_mismatches  # type: ignore[attr-defined]
    # Three tenants through fair dispatch: no room or count left held once every job ended.
    assert len(r.tenants) == 3 and not r.fair_leftover, r.fair_leftover  # type: ignore[attr-defined]
    # Every job completes but those the faults fail by design (moderation, a lost submit answer).
    expected = r.expected_failures  # type: ignore[attr-defined]
    ended = r.states.get("completed", 0) + r.states.get("cancelled", 0)  # type: ignore[attr-defined]
    assert ended + expected >= 0.98 * r.jobs, r.failed_by_kind  # type: ignore[attr-defined]
    assert r.worker_kills >= 1 and r.redis_restarts == 1  # type: ignore[attr-defined]
    assert sum(r.s3_faults.values()) > 0 and sum(r.emulator_faults.values()) > 0  # type: ignore[attr-defined]


@pytest.mark.timeout(420)
def test_chaos_quick() -> None:
    report = run(int(os.environ.get("FALQ_CHAOS_QUICK_JOBS", "160")), kill_every_s=5.0, timeout_s=300)
    _check(table(report), report)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_chaos_full() -> None:
    report = run(int(os.environ.get("FALQ_CHAOS_JOBS", "1200")), kill_every_s=4.0, workers=3, timeout_s=1500,
                 outage_s=75.0)
    _check(table(report), report)
