"""The worker core in this process: Runner.run_step against real Redis, S3 (moto) and the emulator.

No Celery and no worker subprocess: the test thread plays the task (``workers/tasks.py``),
calling ``Runner(ctx).run_step(job_id)`` until the step says the job is done, with the
same admission and middleware the task's ``get_context`` installs. A failure here points
at the runner, its phases (submit, follow, mirror), the fal client or the job store,
not at broker plumbing.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from falq.emulator.server import EmulatorServer
from falq.shared.fal.client import submit_headers
from falq.shared.jobs.records import AT_FAL, JobRecord, Submission
from falq.shared.settings import Settings
from falq.shared.storage.s3 import Storage
from falq.testing.stack import TEST_FAL_KEY
from falq.workers.context import WorkerContext
from falq.workers.limits.gate import build_admission
from falq.workers.limits.limiter import LimitsAdmission
from falq.workers.metrics import MetricsMiddleware
from falq.workers.steps.runner import Outcome, Runner
from tests.support.s3server import moto_s3

ENDPOINT = "fal-ai/qwen-image-2/text-to-image"

FAST_EMULATOR: dict[str, Any] = {
    "latency": "fixed:0.2",
    "concurrency": 40,
    "small_images": True,
    "tiny_images": False,
    "fail_5xx": 0.0,
    "fail_429": 0.0,
    "drop": 0.0,
    "slow": 0.0,
    "completed_error": 0.0,
    "submit_500_created": 0.0,
    "moderation_rate": 0.0,
    "fail_5xx_codes": [502, 503, 504],
    "fault_calls": ["submit", "status", "stream", "result", "cancel", "file"],
    "fault_seed": None,
    "stream_mode": "live",
}


# --- the parts, started once per module ---------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(**FAST_EMULATOR) as emu:
        yield emu


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def settings(redis_server: str, emulator: EmulatorServer, s3_endpoint: str) -> Settings:
    emu_host = emulator.url.split("://", 1)[1]
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        fal_key=TEST_FAL_KEY,
        fal_queue_url=emulator.url,
        fal_rest_url=emulator.url,
        redis_url=redis_server,
        s3_endpoint_url=s3_endpoint,
        s3_bucket=f"falq-inproc-{uuid.uuid4().hex[:10]}",
        s3_prefix="falq",
        s3_region="us-east-1",
        aws_access_key_id="falq-test-access",
        aws_secret_access_key="falq-test-secret-0123456789",
        media_hosts=emu_host,
        allow_private_media=True,
        visibility_timeout_s=8,  # a step lasts at most 4 s
        lease_ttl_s=3.0,  # the lease keeper renews (and sees cancels) every second
        retry_base_s=0.1,
        retry_max_s=1.0,
        poll_min_s=0.1,
        poll_max_s=0.5,
        worker_concurrency=10,
        rate_per_s=100000,
        max_outstanding=100000,
    )


@pytest.fixture
def ctx(settings: Settings, emulator: EmulatorServer) -> Iterator[WorkerContext]:
    """A worker context set up the way ``workers.tasks.get_context`` does, on a clean slate."""
    flush = redis.Redis.from_url(settings.redis_url)
    flush.flushall()
    flush.close()
    emulator.reset()
    emulator.configure(**FAST_EMULATOR)
    context = WorkerContext(settings)
    context.admission = build_admission(context)
    context.middleware.append(MetricsMiddleware(context.redis, settings.key_prefix))
    try:
        yield context
    finally:
        context.shutting_down.set()
        context.leases.stop()
        if isinstance(context.admission, LimitsAdmission):
            context.admission.keeper.stop()
        for name in ("fal", "media_http", "callback_http"):  # the clients the steps built
            client = context.__dict__.get(name)
            if client is not None:
                client.close()
        context.redis.close()


@pytest.fixture
def runner(ctx: WorkerContext) -> Runner:
    return Runner(ctx)


# --- helpers ------------------------------------------------------------------------------------


def new_job(ctx: WorkerContext, prompt: str, **input_: Any) -> JobRecord:
    rec, created = ctx.store.create(JobRecord.new(endpoint=ENDPOINT, input={"prompt": prompt, **input_},
                                                  cost_estimate=0.035))
    assert created
    return rec


def drive(runner: Runner, job_id: str, *, timeout_s: float = 8.0) -> tuple[JobRecord, list[Outcome]]:
    """Play the Celery task: run steps until one says done (a short pause for each delay)."""
    outcomes: list[Outcome] = []
    end = time.monotonic() + timeout_s
    while True:
        outcome = runner.run_step(job_id)
        outcomes.append(outcome)
        if outcome.done:
            return runner.ctx.store.get(job_id), outcomes
        if time.monotonic() > end:
            raise AssertionError(f"job {job_id} not done after {timeout_s}s: {runner.ctx.store.get(job_id)!r}")
        time.sleep(min(outcome.delay, 0.5))


def submissions_of(emulator: EmulatorServer, job_id: str) -> list[dict[str, Any]]:
    """The requests the emulator accepted for ``job_id`` (by the X-Falq-Job-Id header)."""
    out = []
    for req in emulator.requests()["requests"]:
        headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
        if headers.get("x-falq-job-id") == job_id:
            out.append({**req, "headers": headers})
    return out


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    end = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def in_background(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def assert_mirrored(ctx: WorkerContext, rec: JobRecord, emulator: EmulatorServer) -> None:
    """Every output is in S3 with the recorded hash and size, byte-identical to fal's image."""
    assert rec.request_id
    fal = httpx.get(f"{emulator.url}/{ENDPOINT}/requests/{rec.request_id}",
                    headers={"Authorization": f"Key {TEST_FAL_KEY}"}, timeout=10)
    fal.raise_for_status()
    served = fal.json()["images"]
    assert len(rec.outputs) == len(served) == 1
    storage = Storage(ctx.settings)
    for stored, image in zip(rec.outputs, served, strict=True):
        data = storage.get_bytes(stored.key)
        assert hashlib.sha256(data).hexdigest() == stored.sha256
        assert stored.size == len(data) and stored.bucket == ctx.settings.s3_bucket
        assert data == httpx.get(image["url"], timeout=10).content
        assert f"/{rec.id}/" in stored.key


def assert_slot_free(ctx: WorkerContext) -> None:
    assert isinstance(ctx.admission, LimitsAdmission)
    assert ctx.admission.limiter.live_slots() == []


# --- the happy path -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_queued_job_completes_in_process_with_image_in_s3(ctx: WorkerContext, runner: Runner,
                                                          emulator: EmulatorServer) -> None:
    rec = new_job(ctx, "a red fox in the snow", seed=7)

    done, outcomes = drive(runner, rec.id)

    assert done.state == "completed", done.errors
    assert outcomes[-1].done
    assert done.attempts == 1 and done.errors == []
    assert [s.attempt for s in done.submissions] == [1]
    assert done.timestamps.keys() >= {"queued", "submitting", "in_queue", "mirroring", "completed"}
    assert done.seed is not None and done.inference_time is not None
    assert_mirrored(ctx, done, emulator)
    subs = submissions_of(emulator, rec.id)
    assert [s["request_id"] for s in subs] == [done.request_id]
    assert subs[0]["headers"]["x-falq-attempt"] == "1"
    assert ctx.store.load_result(rec.id) is None  # the kept output is dropped once mirrored
    assert ctx.leases.holder(rec.id) is None  # the step released its lease
    assert_slot_free(ctx)
    # a further delivery of a finished job is a no-op
    assert runner.run_step(rec.id).done
    assert len(submissions_of(emulator, rec.id)) == 1


# --- recovery from what a killed delivery left behind -------------------------------------------


@pytest.mark.timeout(30)
def test_submitting_without_request_id_is_written_off_and_resubmitted_as_counted_attempt(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer) -> None:
    rec = new_job(ctx, "a fox whose first submit was interrupted")

    def died_around_post(r: JobRecord) -> None:  # what start_attempt persisted before the POST
        r.attempts = 1
        r.move("submitting")

    ctx.store.update(rec.id, died_around_post)

    done, _ = drive(runner, rec.id)

    assert done.state == "completed", done.errors
    assert done.attempts == 2
    assert [e.type for e in done.errors] == ["submit_interrupted"]
    assert done.errors[0].attempt == 1 and done.errors[0].retryable
    assert [s.attempt for s in done.submissions] == [2]
    subs = submissions_of(emulator, rec.id)
    assert len(subs) == 1  # fal never saw more submissions than the record has attempts
    assert subs[0]["headers"]["x-falq-attempt"] == "2"
    assert subs[0]["request_id"] == done.request_id
    assert_mirrored(ctx, done, emulator)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("left_in", ["in_queue", "submitting"])
def test_record_with_request_id_is_followed_never_resubmitted(ctx: WorkerContext, runner: Runner,
                                                              emulator: EmulatorServer, left_in: str) -> None:
    rec = new_job(ctx, "a fox submitted by a delivery that died right after")
    # The previous delivery's POST, as the submit phase sends it.
    headers = {**submit_headers(ctx.settings, rec.lane), "X-Falq-Job-Id": rec.id, "X-Falq-Attempt": "1"}
    sub = ctx.fal.submit(ENDPOINT, rec.input, headers=headers)
    now = time.time()

    def accepted(r: JobRecord) -> None:
        r.attempts = 1
        r.request_id, r.status_url, r.response_url, r.cancel_url = (
            sub.request_id, sub.status_url, sub.response_url, sub.cancel_url)
        r.submitted_at = now
        r.submissions = [Submission(attempt=1, request_id=sub.request_id, submitted_at=now)]
        r.walk_to(left_in)  # type: ignore[arg-type]

    ctx.store.update(rec.id, accepted)

    done, _ = drive(runner, rec.id)

    assert done.state == "completed", done.errors
    assert done.request_id == sub.request_id
    assert done.attempts == 1 and len(done.submissions) == 1
    assert not any(e.type == "submit_interrupted" for e in done.errors)
    subs = submissions_of(emulator, rec.id)
    assert [s["request_id"] for s in subs] == [sub.request_id]
    assert emulator.requests()["total_requests"] == 1
    assert_mirrored(ctx, done, emulator)


# --- cancel -------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["cancel_key", "record_flag"])
def test_cancel_before_submit_never_reaches_fal(ctx: WorkerContext, runner: Runner,
                                                emulator: EmulatorServer, how: str) -> None:
    rec = new_job(ctx, "a fox nobody wants any more")
    if how == "cancel_key":
        ctx.store.request_cancel(rec.id)
    else:
        ctx.store.update(rec.id, lambda r: setattr(r, "cancel_requested", True))

    outcome = runner.run_step(rec.id)

    assert outcome.done
    done = ctx.store.get(rec.id)
    assert done.state == "cancelled"
    assert done.attempts == 0 and done.request_id is None and done.submissions == []
    assert emulator.requests()["total_requests"] == 0
    assert ctx.leases.holder(rec.id) is None
    assert_slot_free(ctx)


@pytest.mark.timeout(30)
def test_cancel_while_following_cancels_at_fal(ctx: WorkerContext, runner: Runner,
                                               emulator: EmulatorServer) -> None:
    emulator.configure(latency="fixed:30")  # fal would take far longer than this test
    rec = new_job(ctx, "a fox that takes forever")

    def submitted() -> bool:
        now = ctx.store.get(rec.id)
        return now.state in AT_FAL and now.request_id is not None

    def cancel_once_at_fal() -> None:
        wait_until(submitted, 5.0, "the job to be submitted")
        # what the producer's cancel does for a job a worker holds
        ctx.store.request_cancel(rec.id)
        ctx.store.update(rec.id, lambda r: setattr(r, "cancel_requested", True))

    thread, errors = in_background(cancel_once_at_fal)
    started = time.monotonic()
    done, outcomes = drive(runner, rec.id)
    took = time.monotonic() - started
    thread.join(5)
    assert not errors, errors

    assert done.state == "cancelled", done.errors
    assert len(outcomes) == 1  # noticed within the step that was following the request
    assert took < 6.0
    subs = submissions_of(emulator, rec.id)
    assert len(subs) == 1 and subs[0]["request_id"] == done.request_id
    assert subs[0]["cancelled"] is True  # the cancel reached fal
    assert done.outputs == []
    assert_slot_free(ctx)


# --- fal's answers ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_moderated_prompt_fails_content_policy_after_one_submission(ctx: WorkerContext, runner: Runner,
                                                                     emulator: EmulatorServer) -> None:
    rec = new_job(ctx, "a fox [[moderate]]")

    done, _ = drive(runner, rec.id)

    assert done.state == "failed"
    assert done.error is not None
    assert done.error.type == "content_policy" and not done.error.retryable
    assert done.moderation  # fal's categories, or ["unspecified"]
    assert done.attempts == 1 and len(done.submissions) == 1
    subs = submissions_of(emulator, rec.id)
    assert len(subs) == 1 and subs[0]["moderated"] is True
    assert done.outputs == []
    assert ctx.store.get(rec.id).state == "failed"
    assert_slot_free(ctx)


@pytest.mark.timeout(30)
def test_ingress_502_page_on_result_get_costs_no_new_submission(ctx: WorkerContext, runner: Runner,
                                                                emulator: EmulatorServer) -> None:
    emulator.configure(fault_calls=["result"], fail_5xx=1.0, fail_5xx_codes=[502])
    rec = new_job(ctx, "a fox behind a flaky edge")

    def ingress_errors() -> list[Any]:
        return [e for e in ctx.store.get(rec.id).errors if e.type == "fal_ingress"]

    clock: list[float | None] = []

    def heal_after_two_pages() -> None:
        wait_until(lambda: len(ingress_errors()) >= 1, 6.0, "an ingress page on the result GET")
        clock.append(ctx.store.get(rec.id).fal_completed_at)
        wait_until(lambda: len(ingress_errors()) >= 2, 6.0, "two ingress pages on the result GET")
        emulator.configure(fail_5xx=0.0)

    thread, errors = in_background(heal_after_two_pages)
    done, _ = drive(runner, rec.id)
    thread.join(5)
    assert not errors, errors
    # The retry window's clock was saved with the first error, so it spans the steps that follow.
    assert clock and clock[0] is not None and clock[0] == done.fal_completed_at, (clock, done.fal_completed_at)

    assert done.state == "completed", done.errors
    pages = [e for e in done.errors if e.type == "fal_ingress"]
    assert len(pages) >= 2 and all(e.retryable and "502" in e.message for e in pages)
    assert {e.type for e in done.errors} == {"fal_ingress"}
    assert done.attempts == 1 and len(done.submissions) == 1
    intro = emulator.requests()
    assert intro["faults"].get("5xx", 0) >= 2
    assert intro["total_requests"] == 1
    assert [s["request_id"] for s in submissions_of(emulator, rec.id)] == [done.request_id]
    assert_mirrored(ctx, done, emulator)


def test_a_write_off_lost_in_a_redis_restart_is_written_off_again_before_the_next_attempt(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer) -> None:
    """A record in `submitting` (a step died around its POST) is written off, then Redis restarts
    and loses that save (AOF: up to a second): the step's next save meets the older record. The
    attempt it then counts must still be explained on the record (chaos: "2 submissions, 1 justified")."""
    rec = new_job(ctx, "interrupted, then rolled back")
    rec.walk_to("submitting")
    rec.attempts = 1
    ctx.store.save(rec)  # attempt 1 went out; its answer never reached Redis
    key = ctx.store.job_key(rec.id)
    before_write_off = ctx.redis.hgetall(key)
    inner = ctx.admission

    class RestartLosesTheWriteOff(type(inner)):  # type: ignore[misc]
        def admit(self, r: JobRecord) -> float | None:
            ctx.redis.delete(key)
            ctx.redis.hset(key, mapping=before_write_off)  # the record as it was before the write-off
            ctx.admission = inner
            return inner.admit(r)

    restarted = RestartLosesTheWriteOff.__new__(RestartLosesTheWriteOff)
    restarted.__dict__.update(inner.__dict__)
    ctx.admission = restarted
    done, _ = drive(runner, rec.id)
    assert done.state == "completed", done.errors
    assert done.attempts == 2
    kinds = [e.type for e in done.errors]
    assert kinds.count("submit_interrupted") == 1, kinds  # the attempt counted is explained
    assert len(submissions_of(emulator, rec.id)) == 1  # this test's own POST (attempt 1 was never sent here)


def _restart_before_post(ctx: WorkerContext, job_id: str, *, saved: dict[bytes, bytes] | None = None) -> None:
    """Make the next POST's ``sending`` hook play a Redis restart that loses the record's saves
    since ``saved`` (AOF: up to a second): the record goes back to ``saved``, or to what it is now."""
    key = ctx.store.job_key(job_id)
    before = saved if saved is not None else ctx.redis.hgetall(key)
    inner = ctx.admission

    class RestartLosesTheAttempt(type(inner)):  # type: ignore[misc]
        def sending(self, r: JobRecord) -> None:
            ctx.redis.delete(key)
            ctx.redis.hset(key, mapping=before)
            ctx.admission = inner
            inner.sending(r)

    restarted = RestartLosesTheAttempt.__new__(RestartLosesTheAttempt)
    restarted.__dict__.update(inner.__dict__)
    ctx.admission = restarted


def test_an_attempt_whose_count_a_redis_restart_lost_still_records_the_request_fal_accepted(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer) -> None:
    """The save that counted the attempt is lost between it and the POST: the save of fal's
    answer meets a record back in `queued`. It must record the request (and count its attempt),
    never crash and leave the next delivery to pay for a second one (chaos: "2 submissions, 1
    justified" with nothing on the record to explain it)."""
    rec = new_job(ctx, "attempt count rolled back")
    _restart_before_post(ctx, rec.id)
    done, _ = drive(runner, rec.id)
    assert done.state == "completed", done.errors
    sent = submissions_of(emulator, rec.id)
    assert len(sent) == 1, [s["request_id"] for s in sent]
    assert done.attempts == 1
    assert [s.request_id for s in done.submissions] == [sent[0]["request_id"]] == [done.request_id]


def test_a_write_off_and_an_attempt_both_lost_in_a_redis_restart_still_explain_every_submission(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer) -> None:
    """A record in `submitting` (a step died around its POST) is written off and a new attempt
    counted; a Redis restart loses both saves before fal's answer is saved. The record must end
    with both attempts and the write-off that explains the first."""
    rec = new_job(ctx, "write-off and attempt rolled back")
    rec.walk_to("submitting")
    rec.attempts = 1
    ctx.store.save(rec)  # attempt 1 went out; its answer never reached Redis
    _restart_before_post(ctx, rec.id)
    done, _ = drive(runner, rec.id)
    assert done.state == "completed", done.errors
    assert len(submissions_of(emulator, rec.id)) == 1  # this test's own POST
    assert done.attempts == 2
    assert [e.type for e in done.errors].count("submit_interrupted") == 1, done.errors
    assert [s.attempt for s in done.submissions] == [2]


def test_fals_output_is_kept_with_the_save_that_notes_it_and_kept_alone_when_that_save_cannot_be_made(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer) -> None:
    """fal's output JSON is saved in the same step as the record's move to `mirroring`; when the
    record turned terminal meanwhile (that save is not made), the paid output is still kept
    beside the record, for `falq retry` to mirror without paying again."""
    rec = new_job(ctx, "kept with its save")
    done, _ = drive(runner, rec.id)
    assert done.state == "completed" and done.result_saved_at is not None
    assert ctx.store.load_result(rec.id) is None  # dropped once the images were in S3

    other = new_job(ctx, "ended while its result was fetched")
    inner = ctx.pricing

    class EndsTheJob:
        def quote(self, endpoint: str) -> Any:
            def end(r: JobRecord) -> None:
                r.add_error(RuntimeError("ended by hand"))
                r.move("failed")

            if ctx.store.get(other.id).request_id:  # the quote of the fetched result, not of admission
                ctx.store.update(other.id, end)  # an unfenced writer (admin) ends the job
            return inner.quote(endpoint)

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    ctx.pricing = EndsTheJob()  # type: ignore[assignment]
    try:
        ended, _ = drive(runner, other.id)
    finally:
        ctx.pricing = inner
    assert ended.state == "failed" and ended.request_id
    kept = ctx.store.load_result(other.id)
    assert kept is not None and b"images" in kept
    assert len(submissions_of(emulator, other.id)) == 1


def test_a_step_takes_its_lease_with_its_first_reads_even_after_redis_forgot_its_scripts(
        ctx: WorkerContext, runner: Runner) -> None:
    """The lease is taken in the step's first round trip (EVALSHA in a pipeline, which does not
    load a script Redis lacks): after a restart emptied the script cache the step still runs.
    A delivery of a finished job gives back the lease it took: no holder is left behind."""
    rec = new_job(ctx, "scripts forgotten")
    ctx.redis.script_flush()
    done, _ = drive(runner, rec.id)
    assert done.state == "completed"
    assert runner.run_step(rec.id).done  # a late duplicate delivery of the finished job
    assert not ctx.redis.exists(ctx.leases.key(rec.id))
    assert ctx.redis.zscore(ctx.leases.keys.holders, rec.id) is None


def test_a_jobs_spend_metric_is_written_when_fal_bills_it_not_with_the_summed_counts(
        ctx: WorkerContext, runner: Runner) -> None:
    """Counts are summed in memory for up to a second (a SIGKILL loses them); spend is not: it is
    in Redis once the job is billed, before any flush of the other counts."""
    from falq.shared.metrics import counters_key

    metrics = next(m for m in ctx.middleware if isinstance(m, MetricsMiddleware))
    metrics._flushed = time.monotonic() + 3600  # no flush during this test
    rec = new_job(ctx, "spend at once")
    done, _ = drive(runner, rec.id)
    assert done.state == "completed" and done.cost > 0
    counters = ctx.redis.hgetall(counters_key(ctx.settings.key_prefix))
    assert float(counters[f"spend|{ENDPOINT}".encode()]) == pytest.approx(done.cost)
    assert f"finished|completed|{ENDPOINT}".encode() not in counters  # still summed in memory


@pytest.mark.timeout(60)
def test_the_days_spend_key_gets_its_expiry_with_the_days_first_spend_only(
        ctx: WorkerContext, runner: Runner) -> None:
    from falq.shared.metrics import spend_key, utc_day

    day = spend_key(ctx.settings.key_prefix, utc_day(time.time()))
    first, _ = drive(runner, new_job(ctx, "the day's first spend").id)
    assert first.state == "completed" and first.cost > 0
    assert 39 * 86400 < ctx.redis.ttl(day) <= 40 * 86400  # set by the spend that made the key
    ctx.redis.expire(day, 1000)
    more = [drive(runner, new_job(ctx, f"spend {i}").id)[0] for i in range(2)]
    assert float(ctx.redis.get(day) or 0) == pytest.approx(first.cost + sum(d.cost for d in more))
    assert 0 < ctx.redis.ttl(day) <= 1000  # later spends of the day leave the expiry alone


@pytest.mark.parametrize(("lose_lease", "keeper_first"), [(False, False), (True, False), (True, True)],
                         ids=["record", "record-and-lease-save-first", "record-and-lease-renewal-first"])
def test_a_request_id_a_redis_restart_lost_is_written_back_by_the_step_that_follows_it(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer, lose_lease: bool, keeper_first: bool) -> None:
    """fal accepted the request and its id was saved, then a Redis restart lost that save (and,
    taken within that same second, the step's lease). The step's next save meets the record still
    in `submitting` without the id: it writes its own record back (never follows on a record that
    would send the next delivery to pay for a second generation). With no lease at all, no other
    worker holds the job (a new holder would hold the lease, or have saved a newer record), so the
    step takes its lease again instead of giving the job up, whether its save or the lease
    keeper's renewal finds the lease gone first. The job completes on its one request."""
    rec = new_job(ctx, "request id rolled back")
    key = ctx.store.job_key(rec.id)
    inner = ctx.admission
    before_answer: dict[bytes, bytes] = {}

    class RestartLosesTheRequestId(type(inner)):  # type: ignore[misc]
        def sending(self, r: JobRecord) -> None:
            before_answer.update(ctx.redis.hgetall(key))
            inner.sending(r)

        def submitted(self, r: JobRecord) -> None:
            ctx.redis.delete(key, *([ctx.leases.key(rec.id)] if lose_lease else []))
            ctx.redis.hset(key, mapping=before_answer)
            if keeper_first:
                ctx.leases.renew_now()  # finds the lease gone and marks it lost
                assert rec.id not in ctx.leases._held
            ctx.admission = inner
            inner.submitted(r)

    restarted = RestartLosesTheRequestId.__new__(RestartLosesTheRequestId)
    restarted.__dict__.update(inner.__dict__)
    ctx.admission = restarted
    done, _ = drive(runner, rec.id)
    assert done.state == "completed", done.errors
    sent = submissions_of(emulator, rec.id)
    assert len(sent) == 1, [s["request_id"] for s in sent]
    assert done.attempts == 1 and not done.errors, done.errors
    assert [s.request_id for s in done.submissions] == [sent[0]["request_id"]] == [done.request_id]


@pytest.mark.timeout(60)
def test_images_go_to_the_folder_on_the_record_and_an_older_record_reads_its_tenants(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer) -> None:
    """The producer writes the tenant's S3 folder on the record, so every run of the job writes
    the same keys whatever the tenant's settings say later (no Redis read for it in the mirror);
    a record an older producer made (no folder) gets the tenant's folder as stored now."""
    from falq.shared.tenants.store import Tenant, TenantStore

    TenantStore(ctx.store.r, prefix=ctx.settings.key_prefix).put(Tenant(name="acme", s3_prefix="acme/renders"))
    made_then, _ = ctx.store.create(JobRecord.new(endpoint=ENDPOINT, input={"prompt": "a kite"}, tenant="acme",
                                                  folder="acme/then", cost_estimate=0.035))
    older, _ = ctx.store.create(JobRecord.new(endpoint=ENDPOINT, input={"prompt": "a boat"}, tenant="acme",
                                              cost_estimate=0.035))
    done_then, _ = drive(runner, made_then.id)
    done_older, _ = drive(runner, older.id)
    assert done_then.state == done_older.state == "completed"
    assert "/acme/then/" in done_then.outputs[0].key
    assert "/acme/renders/" in done_older.outputs[0].key
    assert_mirrored(ctx, done_then, emulator)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cancel", [False, True])
def test_a_cancel_asked_while_the_image_uploads_ends_the_job_cancelled_with_its_output(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch,
        cancel: bool) -> None:
    """The completing save asks for a cancel itself (no read of its own before it): a cancel asked
    after the step's first read, while the image is copied, still ends the job ``cancelled`` with
    the paid-for output kept; without one the job completes."""
    rec = new_job(ctx, "a heron")
    put = ctx.storage.put_fileobj

    def put_then_cancel(*args: Any, **kwargs: Any) -> None:
        put(*args, **kwargs)
        if cancel:
            ctx.store.request_cancel(rec.id)  # what a producer's cancel writes

    monkeypatch.setattr(ctx.storage, "put_fileobj", put_then_cancel)
    done, _ = drive(runner, rec.id)
    assert done.state == ("cancelled" if cancel else "completed"), done.errors
    assert done.outputs and done.fal_outcome == ("finished" if cancel else None)
    assert_mirrored(ctx, done, emulator)


def test_a_delivered_job_is_marked_published_whatever_its_dispatcher_managed(
        ctx: WorkerContext, runner: Runner, emulator: EmulatorServer) -> None:
    # Its dispatcher died between the publish and the flag: the delivery itself marks it, so the
    # reaper (which skips an unpublished queued record) still covers the job if a message is lost.
    rec = new_job(ctx, "a flag never set")
    assert not ctx.store.is_published(rec.id)
    done, _ = drive(runner, rec.id)
    assert done.state == "completed", done.errors
    assert ctx.store.is_published(rec.id)
