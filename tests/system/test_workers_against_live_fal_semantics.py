"""falq against fal as the live service behaves (reference section 10), end to end.

Real Redis, real S3 over HTTP, the emulator over HTTP with its live-service defaults, and
real worker processes. One test per behaviour: moderation, the submit answers that may
have created a request, one stream connection per request, logs kept once, the result
kept through an S3 outage, fal's headers and billed units.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from falq.shared.metrics import counters_key
from falq.shared.storage.s3 import Storage
from falq.testing.stack import DevStack
from tests.chaos.s3_faults import S3FaultProxy
from tests.conftest import emulator_submissions, wait_for


def _requests_by_job(stack: DevStack) -> dict[str, list[dict[str, Any]]]:
    return emulator_submissions(stack)


def _counters(falq: Any) -> dict[str, float]:
    raw = redis.Redis.from_url(falq.settings.redis_url).hgetall(counters_key(falq.settings.key_prefix))
    return {k.decode(): float(v) for k, v in raw.items()}


@pytest.mark.timeout(90)
def test_moderation_fails_once_with_its_own_reason_and_pauses_nothing(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.start_worker(concurrency=10)
    at_result = falq.generate("a poster [[moderate]] for a shop", seed=1)
    at_submit = falq.generate("a poster [[moderate:submit]] for a shop", seed=2)
    fine = [falq.generate(f"a harmless fox {i}", seed=10 + i) for i in range(3)]
    for job in (at_result, at_submit):
        rec = job.wait(60)
        assert rec.state == "failed" and rec.error is not None
        assert rec.error.type == "content_policy" and not rec.error.retryable
        assert rec.attempts == 1 and rec.paused is None
        assert rec.moderation == ["sexual"], rec.moderation
    subs = _requests_by_job(clean_stack)
    assert len(subs[at_result.id]) == 1  # ran at fal once, never retried
    assert at_submit.id not in subs  # refused at submit: no request exists
    assert all(j.wait(60).state == "completed" for j in fine)  # nothing paused the key
    # counters are summed in the worker and flushed at most every FLUSH_S (by the maintenance pass)
    counters = wait_for(lambda: (c := _counters(falq)).get("failure|content_policy") == 2 and c,
                        timeout=10, what="both content-policy failures counted")
    assert counters["failure|content_policy"] == 2
    # and the other failure reasons stay apart from it
    assert not any(k.startswith("failure|") and k != "failure|content_policy" for k in counters)


@pytest.mark.timeout(120)
def test_ingress_errors_on_every_call_but_submit_cost_zero_extra_submissions(
        clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="uniform:0.2,0.8", fail_5xx=0.25, fail_429=0.1, drop=0.05, fault_seed=5,
                              fault_calls=["status", "stream", "result", "cancel", "file"])
    clean_stack.start_worker(concurrency=30, env={"FALQ_RETRY_MAX_S": "2"})
    jobs = [falq.generate(f"blips {i}", seed=i) for i in range(25)]
    recs = [j.wait(100) for j in jobs]
    assert all(r.state == "completed" for r in recs), [(r.state, r.errors[-1:]) for r in recs]
    subs = _requests_by_job(clean_stack)
    assert all(len(subs[r.id]) == 1 and r.attempts == 1 for r in recs)  # zero extra submissions
    kinds = {e.type for r in recs for e in r.errors}
    assert "fal_ingress" in kinds, kinds
    assert sum(clean_stack.emu.requests()["rejected"].values()) > 0


@pytest.mark.timeout(120)
def test_submit_faults_resubmit_only_what_cannot_have_created_a_request(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="uniform:0.1,0.4", fail_5xx=0.3, fail_429=0.2, completed_error=0.15,
                              fault_seed=3, fault_calls=["submit"])
    clean_stack.start_worker(concurrency=30, env={"FALQ_MAX_ATTEMPTS": "12", "FALQ_RETRY_MAX_S": "2"})
    jobs = [falq.generate(f"submit faults {i}", seed=i) for i in range(25)]
    recs = [j.wait(100) for j in jobs]
    assert all(r.state == "completed" for r in recs), [(r.state, r.errors[-1:]) for r in recs]
    subs = _requests_by_job(clean_stack)
    for r in recs:
        # Only the request's own failure (COMPLETED with an infrastructure error) is paid again.
        own_failures = sum(1 for e in r.errors if e.type == "fal_request_failed_transient")
        assert len(subs[r.id]) == 1 + own_failures <= r.attempts
    kinds = {e.type for r in recs for e in r.errors}
    assert {"fal_ingress", "fal_transient", "fal_request_failed_transient"} <= kinds, kinds


@pytest.mark.timeout(60)
def test_a_submit_answer_lost_after_sending_is_not_sent_again(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(drop=1.0, fault_calls=["submit"])
    clean_stack.start_worker(concurrency=5)
    rec = falq.generate("lost answer", seed=1).wait(30)
    assert rec.state == "failed" and rec.error is not None and rec.error.type == "submit_uncertain"
    assert "not sent again" in rec.error.message and rec.attempts == 1
    assert clean_stack.emu.requests()["rejected_submits"]["drop"] == 1  # one POST, never a second


@pytest.mark.timeout(90)
def test_resubmit_mode_sends_a_lost_submit_again_as_a_counted_attempt(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(drop=0.5, fault_seed=2, fault_calls=["submit"])
    clean_stack.start_worker(concurrency=10, env={"FALQ_SUBMIT_UNCERTAIN": "resubmit", "FALQ_MAX_ATTEMPTS": "12",
                                                  "FALQ_RETRY_MAX_S": "1"})
    recs = [falq.generate(f"resubmit {i}", seed=i).wait(60) for i in range(8)]
    assert all(r.state == "completed" for r in recs)
    subs = _requests_by_job(clean_stack)
    assert all(len(subs[r.id]) <= r.attempts for r in recs)
    assert any(e.type == "submit_uncertain" for r in recs for e in r.errors)


@pytest.mark.timeout(60)
def test_a_5xx_naming_a_request_is_followed_not_paid_twice(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(submit_500_created=1.0)
    clean_stack.start_worker(concurrency=5)
    recs = [falq.generate(f"created anyway {i}", seed=i).wait(40) for i in range(3)]
    subs = _requests_by_job(clean_stack)
    for r in recs:
        assert r.state == "completed", r.errors
        assert len(subs[r.id]) == 1 and [s.request_id for s in r.submissions] == [subs[r.id][0]["request_id"]]
        assert r.errors[0].type == "submit_uncertain"


@pytest.mark.timeout(120)
def test_one_stream_connection_per_request_and_cancel_is_still_prompt(clean_stack: DevStack, falq: Any) -> None:
    # fal's live stream: an event per change, a ": ping" every 15 s. With 20 s of inference,
    # a 5 s read timeout would reconnect about four times per request.
    clean_stack.emu.configure(latency="fixed:20", log_steps=0)
    # The test bed shortens the visibility timeout to 30 s, which ends a step (and its stream)
    # after 15 s; production's default (600 s) is what this is about.
    clean_stack.start_worker(concurrency=10, env={"FALQ_VISIBILITY_TIMEOUT_S": "600"})
    jobs = [falq.generate(f"quiet stream {i}", seed=i) for i in range(4)]
    victim = falq.generate("cancel me while the stream is quiet", seed=99)
    wait_for(lambda: victim.status() == "in_progress", 20, 0.2, "victim in progress")
    time.sleep(2.0)  # the stream is quiet now: nothing to tell until the next ping
    asked = time.monotonic()
    victim.cancel()
    rec = victim.wait(10)
    assert rec.state == "cancelled" and time.monotonic() - asked < 4.0
    recs = [j.wait(60) for j in jobs]
    assert all(r.state == "completed" for r in recs)
    by_id = {r["request_id"]: r for r in clean_stack.emu.requests()["requests"]}
    for r in recs:
        calls = by_id[r.request_id]["calls"]
        assert calls.get("stream", 0) == 1, calls  # one connection for the whole request
        assert calls.get("status", 0) == 0, calls
    assert by_id[rec.request_id]["cancelled"] is True


@pytest.mark.parametrize("use_stream", ["true", "false"])
@pytest.mark.timeout(60)
def test_logs_tail_holds_each_line_once_in_order(clean_stack: DevStack, falq: Any, use_stream: str) -> None:
    steps = 15  # more than the polled window (10), fewer than the tail (20) with the first line
    clean_stack.emu.configure(latency="fixed:3", log_steps=steps, status_logs_window=10)
    clean_stack.start_worker(concurrency=4, env={"FALQ_USE_STATUS_STREAM": use_stream, "FALQ_POLL_MIN_S": "0.2",
                                                 "FALQ_POLL_MAX_S": "0.3"})
    rec = falq.generate("log lines", seed=1).wait(40)
    assert rec.state == "completed"
    expected = [f"step {i}/{steps}" for i in range(1, steps + 1)]
    got = [line for line in rec.logs if line.startswith("step ")]
    assert got == expected, rec.logs
    assert len(rec.logs) == len(set(rec.logs))


@pytest.mark.timeout(120)
def test_result_is_kept_through_an_s3_outage_after_fal_forgot_it(clean_stack: DevStack, falq: Any) -> None:
    settings = clean_stack.settings()
    Storage(settings).ensure_bucket()
    proxy = S3FaultProxy(settings.s3_endpoint_url, put_failure_rate=1.0)
    with proxy:
        clean_stack.start_worker(concurrency=4, env={"FALQ_S3_ENDPOINT_URL": proxy.url, "FALQ_RETRY_MAX_S": "2",
                                                     "FALQ_MAX_ATTEMPTS": "50"})
        job = falq.generate("through an outage", seed=1)
        rec = wait_for(lambda: (r := job.record()).state == "mirroring" and r.result_saved_at
                       and any(e.type == "storage_transient" for e in r.errors) and r, 40, 0.2, "mirror failing")
        # fal forgets every result now (as after its retention), and S3 comes back.
        clean_stack.emu.configure(result_retention_s=0, result_retention_large_s=0, payload_retention_s=0)
        proxy.rate = 0.0
        rec = job.wait(60)
    assert rec.state == "completed", rec.errors
    by_id = {r["request_id"]: r for r in clean_stack.emu.requests()["requests"]}
    assert by_id[rec.request_id]["calls"].get("result", 0) == 1  # fetched once, never again
    assert len(_requests_by_job(clean_stack)[rec.id]) == 1
    raw = redis.Redis.from_url(settings.redis_url).hget(f"{settings.key_prefix}:job:{rec.id}", "result")
    assert raw is None  # the kept copy is dropped once the images are in S3


@pytest.mark.timeout(60)
def test_a_result_fal_no_longer_has_fails_the_job_without_paying_again(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(result_retention_s=0, result_retention_large_s=0, payload_retention_s=0)
    clean_stack.start_worker(concurrency=4)
    rec = falq.generate("forgotten", seed=1).wait(40)
    assert rec.state == "failed" and rec.error is not None and rec.error.type == "result_expired"
    assert rec.request_id and rec.request_id in rec.error.message
    assert len(_requests_by_job(clean_stack)[rec.id]) == 1


@pytest.mark.timeout(60)
def test_fal_headers_priority_lifecycle_store_io_and_billed_units(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.start_worker(concurrency=4, env={"FALQ_FAL_STORE_IO": "false", "FALQ_FAL_MEDIA_EXPIRY_S": "3600"})
    inter = falq.generate("interactive", seed=1, num_images=2)
    bulk = falq.generate("bulk", seed=2, lane="bulk")
    recs = {"interactive": inter.wait(40), "bulk": bulk.wait(40)}
    subs = _requests_by_job(clean_stack)
    for rec in recs.values():
        assert rec.state == "completed", rec.errors
        headers = {k.lower(): v for k, v in subs[rec.id][0]["headers"].items()}
        assert headers["x-fal-queue-priority"] == "normal"  # low is only ever an explicit choice
        assert headers["x-fal-object-lifecycle-preference"] == '{"expiration_duration_seconds": 3600}'
        assert headers["x-fal-store-io"] == "0"
        # fal's start timeout bounds queue time by default, under both header names (section 11.5)
        assert headers["x-fal-request-start-timeout"] == headers["x-fal-request-timeout"] == "900.0"
        assert "x-fal-no-retry" not in headers
        assert rec.cost_source == "fal_billable_units"
        # units x the account's price from the emulator's pricing API (0.03), not the list price
        assert rec.price_source == "fal_pricing_api" and rec.unit_price == 0.03
        assert rec.cost_billed == pytest.approx(0.03 * len(rec.outputs))
    assert len(recs["interactive"].outputs) == 2


@pytest.mark.timeout(60)
def test_start_timeout_drops_a_request_unbilled_with_a_clear_outcome(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(concurrency=1, latency="fixed:5")
    clean_stack.start_worker(concurrency=4, env={"FALQ_FAL_START_TIMEOUT_S": "2"})
    jobs = [falq.generate(f"start timeout {i}", seed=i) for i in range(2)]
    recs = [j.wait(40) for j in jobs]
    states = sorted(r.state for r in recs)
    assert states == ["completed", "failed"], [(r.state, r.errors) for r in recs]
    dropped = next(r for r in recs if r.state == "failed")
    assert dropped.error is not None and dropped.error.type == "start_timeout" and "unbilled" in dropped.error.message
    subs = _requests_by_job(clean_stack)
    assert len(subs[dropped.id]) == 1
    headers = {k.lower(): v for k, v in subs[dropped.id][0]["headers"].items()}
    assert headers["x-fal-request-timeout"] == headers["x-fal-request-start-timeout"] == "2.0"
    assert dropped.cost_billed == 0.0
