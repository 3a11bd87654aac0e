"""Money safety against fal as the live service behaves, round 2 (reference section 11; issue 23).

Real Redis, real S3 over HTTP, the emulator over HTTP and real worker processes running with
falq's DEFAULT settings: the test bed's shortened retry and step timings are put back to
falq's defaults (``DEFAULTS``); only the emulator's fault options are configured. Each test
counts what fal was paid for: submissions per job at the emulator (never a second one), the
job's end state, its cost against what the emulator billed, and the mirrored output in S3.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from rich.console import Console

from falq.cli.output import record_view
from falq.shared.engine.publish import publish
from falq.shared.jobs.records import JobRecord
from falq.shared.settings import Settings
from falq.shared.storage.s3 import Storage
from falq.testing.stack import DevStack
from tests.conftest import emulator_submissions, wait_for

#: falq's defaults for what the test bed shortens (testing/stack.py DevStack.env).
_D = Settings()
DEFAULTS = {
    "FALQ_RETRY_BASE_S": str(_D.retry_base_s),
    "FALQ_RETRY_MAX_S": str(_D.retry_max_s),
    "FALQ_VISIBILITY_TIMEOUT_S": str(_D.visibility_timeout_s),
    "FALQ_LEASE_TTL_S": str(_D.lease_ttl_s),
}


def _fal_request(stack: DevStack, request_id: str | None) -> dict[str, Any]:
    return next(r for r in stack.emu.requests()["requests"] if r["request_id"] == request_id)


def _assert_mirrored(falq: Any, rec: JobRecord, images: int = 1) -> None:
    assert len(rec.outputs) == images, rec.outputs
    storage = Storage(falq.settings)
    for out in rec.outputs:
        head = storage.head(out.key)
        assert head is not None and head["ContentLength"] == out.size > 0, out.key


def _billed(falq: Any, stack: DevStack, rec: JobRecord) -> float:
    """What the emulator billed for the job's one request (its ledger: units x the account's price)."""
    events = httpx.get(f"{stack.emu.url}/_emulator/billing", timeout=10).json()["events"]
    return sum(e["cost_micro"] for e in events if e["request_id"] == rec.request_id) / 1e6


# --- 1. a result error after a clean COMPLETED never causes a new submission -------------------


@pytest.mark.timeout(120)
def test_result_5xx_with_a_request_id_fetches_the_same_result_again(clean_stack: DevStack, falq: Any) -> None:
    # fal-ai/fal#694: the result GET of a request that succeeded answers 500 naming the request.
    clean_stack.emu.configure(result_5xx_first=3, tiny_images=True)
    clean_stack.start_worker(concurrency=8, env=DEFAULTS)
    jobs = [falq.generate(f"result blips {i}", seed=i) for i in range(3)]
    recs = [j.wait(90) for j in jobs]
    subs = emulator_submissions(clean_stack)
    for rec in recs:
        assert rec.state == "completed", (rec.state, rec.errors[-3:])
        assert len(subs[rec.id]) == 1 and rec.attempts == 1  # 0 second submissions
        kinds = [(e.type, e.message[:150]) for e in rec.errors]
        assert sum(1 for e in rec.errors if e.type == "fal_result_error") == 3, kinds
        assert rec.cost_source == "fal_billable_units" and rec.cost_billed == _billed(falq, clean_stack, rec) > 0
        assert _fal_request(clean_stack, rec.request_id)["calls"]["result"] == 4
        _assert_mirrored(falq, rec)


@pytest.mark.timeout(150)
def test_a_step_that_keeps_crashing_ends_failed_with_its_error(clean_stack: DevStack, falq: Any) -> None:
    # The wedge's symptom: a record in `mirroring` whose request fields are gone and no result is
    # kept. Its step crashes every time; it must end failed, visibly, instead of looping.
    bad = JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image", input={"prompt": "wedged"})
    bad.state = "mirroring"
    falq.store.create(bad)
    publish(falq.app, falq.settings, bad.id, lane="interactive", endpoint=bad.endpoint)
    clean_stack.start_worker(concurrency=2, env=DEFAULTS)
    rec = falq.job(bad.id).wait(130)
    assert rec.state == "failed" and rec.error is not None, rec
    assert rec.error.type == "step_crashed" and not rec.error.retryable
    assert f"crashed {falq.settings.max_step_crashes} times in a row" in rec.error.message
    assert "AssertionError" in rec.error.message
    assert bad.id not in emulator_submissions(clean_stack)  # never paid for anything


# --- 2. a cancel is a request, not an outcome -----------------------------------------------------


@pytest.mark.timeout(120)
def test_a_cancelled_job_fal_finished_anyway_is_kept_billed_and_never_paid_again(
        clean_stack: DevStack, falq: Any) -> None:
    # fal's e2e test_app_cancellation: an app without a cancel handler ignores the cancel.
    clean_stack.emu.configure(latency="fixed:15", cancel_ignored_share=1.0, tiny_images=True)
    clean_stack.start_worker(concurrency=4, env=DEFAULTS)
    job = falq.generate("cancelled too late", seed=3)
    wait_for(lambda: job.status() == "in_progress", 30, what="in progress")
    job.cancel()
    wait_for(lambda: _fal_request(clean_stack, job.record().request_id)["cancelled"], 12, what="the cancel at fal")
    assert job.status() == "in_progress"  # asked, not an outcome: falq follows the request on
    rec = job.wait(60)
    assert rec.state == "cancelled" and rec.fal_outcome == "finished", (rec.state, rec.fal_outcome, rec.errors)
    fal_req = _fal_request(clean_stack, rec.request_id)
    assert fal_req["cancelled"] and fal_req["cancel_ignored"]  # the cancel reached fal, which finished it
    assert rec.cost_billed == _billed(falq, clean_stack, rec) > 0  # the bill counts
    _assert_mirrored(falq, rec)
    console = Console(record=True, width=200)
    console.print(record_view(rec))  # what `falq status` shows
    assert "fal finished it despite the cancel: billed" in console.export_text()
    # A retry uses the kept output: it completes without a second submission.
    [again] = falq.retry([rec.id])
    assert again.state == "completed" and again.outputs == rec.outputs
    time.sleep(2)
    assert len(emulator_submissions(clean_stack)[rec.id]) == 1
    assert falq.job(rec.id).record().state == "completed"


@pytest.mark.timeout(120)
def test_a_queued_request_fal_removed_costs_nothing_and_says_so(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="fixed:8", concurrency=1, tiny_images=True)
    clean_stack.start_worker(concurrency=4, env=DEFAULTS)
    blocker = falq.generate("runs", seed=1)
    wait_for(lambda: blocker.status() == "in_progress", 30, what="blocker in progress")
    queued = falq.generate("waits in fal's queue", seed=2)
    wait_for(lambda: queued.status() == "in_queue", 30, what="in fal's queue")
    queued.cancel()
    rec = queued.wait(30)
    assert rec.state == "cancelled" and rec.fal_outcome == "removed", (rec.state, rec.fal_outcome)
    assert rec.cost_billed == 0.0 and rec.cost == 0.0 and rec.outputs == []
    fal_req = _fal_request(clean_stack, rec.request_id)
    assert fal_req["started_at"] is None and fal_req["billable_units"] == 0.0
    assert len(emulator_submissions(clean_stack)[rec.id]) == 1
    done = blocker.wait(30)
    assert done.state == "completed" and done.cost_billed == _billed(falq, clean_stack, done)
    _assert_mirrored(falq, done)


@pytest.mark.timeout(120)
def test_the_deadline_never_throws_away_a_generation_fal_finishes(clean_stack: DevStack, falq: Any) -> None:
    # The deadline is the setting under test, so it is shortened; nothing else is.
    clean_stack.emu.configure(latency="fixed:8", cancel_ignored_share=1.0, tiny_images=True)
    clean_stack.start_worker(concurrency=4, env={**DEFAULTS, "FALQ_JOB_DEADLINE_S": "3"})
    rec = falq.generate("slow but paid for", seed=4).wait(60)
    assert rec.state == "completed" and rec.fal_outcome == "finished", (rec.state, rec.errors)
    assert rec.fal_cancel_why == "deadline" and _fal_request(clean_stack, rec.request_id)["cancelled"]
    assert rec.cost_billed == _billed(falq, clean_stack, rec) > 0
    assert len(emulator_submissions(clean_stack)[rec.id]) == 1
    _assert_mirrored(falq, rec)


# --- 4. answers that created nothing are not attempts ---------------------------------------------


@pytest.mark.timeout(300)
def test_a_minute_long_submit_edge_outage_fails_no_job_and_uses_no_attempts(
        clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(submit_outage_s=60, tiny_images=True)
    started = time.monotonic()
    clean_stack.start_worker(concurrency=8, env=DEFAULTS)
    jobs = [falq.generate(f"through the outage {i}", seed=i) for i in range(4)]
    recs = [j.wait(240) for j in jobs]
    assert time.monotonic() - started >= 55  # the outage really lasted
    subs = emulator_submissions(clean_stack)
    for rec in recs:
        assert rec.state == "completed", (rec.state, rec.errors[-3:])
        assert rec.attempts == 1 and len(subs[rec.id]) == 1  # edge pages were not attempts
        assert sum(1 for e in rec.errors if e.type == "fal_ingress") >= 3
        assert rec.refused_since is None
        assert rec.cost_billed == _billed(falq, clean_stack, rec)
        _assert_mirrored(falq, rec)
    assert clean_stack.emu.requests()["rejected_submits"]["outage"] >= 3 * len(recs)


# --- 5. start timeout on status, stream and result alike -----------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("use_stream", ["true", "false"])
def test_start_timeout_on_the_status_call_fails_unbilled(clean_stack: DevStack, falq: Any, use_stream: str) -> None:
    # The start timeout is the setting under test, so it is shortened (the default is 900 s).
    clean_stack.emu.configure(concurrency=1, latency="fixed:6", tiny_images=True)
    clean_stack.start_worker(concurrency=4, env={**DEFAULTS, "FALQ_FAL_START_TIMEOUT_S": "2",
                                                 "FALQ_USE_STATUS_STREAM": use_stream})
    jobs = [falq.generate(f"start timeout {i}", seed=i) for i in range(2)]
    recs = sorted((j.wait(60) for j in jobs), key=lambda r: r.state)
    assert [r.state for r in recs] == ["completed", "failed"], [(r.state, r.errors) for r in recs]
    done, dropped = recs
    assert dropped.error is not None and dropped.error.type == "start_timeout" and not dropped.error.retryable
    assert dropped.cost_billed == 0.0 and dropped.outputs == []
    fal_req = _fal_request(clean_stack, dropped.request_id)
    assert fal_req["start_timed_out"] and fal_req["billable_units"] == 0.0
    assert fal_req["calls"].get("result", 0) == 0  # recognised on the status call itself
    subs = emulator_submissions(clean_stack)
    assert len(subs[dropped.id]) == 1 and len(subs[done.id]) == 1
    headers = {k.lower(): v for k, v in subs[dropped.id][0]["headers"].items()}
    assert headers["x-fal-request-start-timeout"] == headers["x-fal-request-timeout"] == "2.0"
    assert done.cost_billed == _billed(falq, clean_stack, done)
    _assert_mirrored(falq, done)
