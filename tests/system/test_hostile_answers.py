"""Hostile answers from fal, end to end: every one ends its job with a plain error, none hurts the worker.

One real worker process (gevent pool, the stack's real Redis and S3) runs one job per case
against :class:`tests.support.hostile_fal.HostileFal` at once: bad submit answers, bad status and
SSE answers, bad results and bad media. A second, *strict* worker (private media
refused, its own queues) proves loopback addresses are refused even when allowlisted.

Each case must end ``failed`` within a bounded time, with a message that names the
problem, after at most ``attempts`` submissions, and without the step crashing into the
task's catch-all. Afterwards both workers are alive and a good job still completes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from falq.shared.jobs.records import JobRecord
from falq.shared.settings import reset_settings
from falq.testing.stack import DevStack
from tests.support.hostile_fal import HostileFal

pytestmark = pytest.mark.timeout(240)

MAX_IMAGE = 5 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One hostile behaviour and what falq must make of it."""

    name: str
    says: tuple[str, ...]  # substrings of the final error message
    submits: int = 1  # exact number of submissions expected at the hostile fal
    error_type: str | None = None
    strict: bool = False  # run on the worker that refuses private media


CASES = [
    # submit
    Case("submit-nonjson", ("non-JSON",), error_type="fal_bad_answer"),
    Case("submit-list", ("submit answer is not a JSON object",)),
    Case("submit-no-request-id", ("lacks", "'request_id'")),
    Case("submit-no-status-url", ("lacks", "'status_url'")),
    Case("submit-wrong-type", ("'request_id'", "not a non-empty string")),
    Case("submit-huge-length", ("declares 10737418240 bytes", "limit", "refusing")),
    Case("submit-huge-body", ("exceeded", "limit")),
    # A body still trickling in after the POST went out, and a 500 without a request id, may
    # both stand for a request fal created: never sent twice (FALQ_SUBMIT_UNCERTAIN=fail).
    Case("submit-slow", ("submit outcome unknown", "still arriving"), submits=1, error_type="submit_uncertain"),
    Case("submit-500-html", ("submit outcome unknown", "500"), submits=1, error_type="submit_uncertain"),
    # status stream (SSE) and polled status
    Case("stream-bad-json", ("non-JSON",)),
    Case("stream-unknown-status", ("unknown status", "EXPLODED")),
    Case("stream-not-utf8", ("not UTF-8",)),
    Case("stream-endless-line", ("oversized",)),
    Case("stream-noise", ("did not finish", "FALQ_JOB_DEADLINE_S"), error_type="deadline_exceeded"),
    Case("status-unknown", ("unknown status", "DONE?")),
    Case("status-nonjson", ("non-JSON",)),
    Case("status-list", ("not a JSON object",)),
    Case("status-slow", ("did not finish", "FALQ_JOB_DEADLINE_S"), error_type="deadline_exceeded"),
    # result
    Case("result-nonjson", ("non-JSON",)),
    Case("result-list", ("result is not a JSON object",)),
    Case("result-no-images", ("output schema", "images", "Field required")),
    Case("result-images-string", ("output schema", "images", "valid list")),
    Case("result-seed-abc", ("output schema", "seed", "valid integer")),
    Case("result-empty-images", ("no images",)),
    Case("result-huge-length", ("declares 10737418240 bytes", "limit")),
    # media
    Case("media-metadata-url", ("169.254.169.254", "not in the allowlist"), error_type="mirror_rejected"),
    Case("media-evil-host", ("evil.example", "not in the allowlist")),
    Case("media-redirect-off", ("redirect", "outside the allowlist", "evil.example")),
    Case("media-redirect-metadata", ("redirect", "outside the allowlist", "169.254.169.254")),
    Case("media-html-png", ("not a JPEG, PNG or WEBP", "HTML", "claimed image/png")),
    Case("media-gif", ("not a JPEG, PNG or WEBP", "GIF")),
    Case("media-huge-length", ("2147483648 bytes", f"limit is {MAX_IMAGE}")),
    Case("media-endless", (f"exceeds {MAX_IMAGE} bytes",)),
    # a cut transfer is fetched again (fal's CDN may have dropped it); one that stays cut fails
    Case("media-truncated-png", ("truncated in 3 downloads", "is truncated", "no PNG IEND chunk"),
         error_type="media_truncated"),
    Case("media-truncated-jpeg", ("truncated in 3 downloads", "is truncated", "end-of-image marker (FF D9)"),
         error_type="media_truncated"),
    Case("media-404", ("HTTP 404",)),
    Case("media-500", ("mirroring failed", "HTTP 500"), error_type="storage_transient"),
    # private / loopback media refused by the strict worker, although allowlisted
    Case("media-https-loopback", ("non-public address", "127.0.0.1"), strict=True),
    Case("media-https-localhost", ("localhost", "non-public address"), strict=True),
    Case("media-plain-http", ("plain http", "not allowed"), strict=True),
]


@dataclass
class Run:
    """Everything the module's tests look at after the batch ran."""

    stack: DevStack
    fal: HostileFal
    main: subprocess.Popen[bytes]
    strict: subprocess.Popen[bytes]
    client: Any
    jobs: dict[str, Any]
    records: dict[str, JobRecord]
    seconds: float


def hostile_env(fal: HostileFal) -> dict[str, str]:
    return {
        "FALQ_FAL_QUEUE_URL": fal.url,
        "FALQ_MEDIA_HOSTS": fal.netloc,
        "FALQ_ALLOW_PRIVATE_MEDIA": "true",
        "FALQ_MAX_IMAGE_BYTES": str(MAX_IMAGE),
        "FALQ_MAX_ATTEMPTS": "2",
        "FALQ_RETRY_BASE_S": "0.2",
        "FALQ_RETRY_MAX_S": "1",
        "FALQ_FAL_HTTP_TIMEOUT_S": "3",  # a trickling answer is given up after 2 x 3 s
        "FALQ_JOB_DEADLINE_S": "10",
        # After the deadline's cancel falq follows the request for fal's answer; this fal never
        # gives one, so the wait for it is shortened too.
        "FALQ_FAL_AFTER_CANCEL_S": "1",
    }


def strict_env(fal: HostileFal) -> dict[str, str]:
    # A deployment of its own (key prefix and queues): with the main worker's prefix, either side's
    # fair dispatch could publish the other's jobs to its own queues, to be run with the wrong rules.
    return {
        **hostile_env(fal),
        "FALQ_KEY_PREFIX": "falq-strict",
        "FALQ_ALLOW_PRIVATE_MEDIA": "false",
        "FALQ_MEDIA_HOSTS": f"{fal.netloc},localhost:{fal.port}",
        "FALQ_QUEUE_INTERACTIVE": "falq-strict.interactive",
        "FALQ_QUEUE_BULK": "falq-strict.bulk",
    }


@pytest.fixture(scope="module")
def run(stack: DevStack) -> Iterator[Run]:
    """Start both workers, enqueue one job per case, wait until every job has ended (or 90 s)."""
    from falq.producers import Falq

    r = redis.Redis.from_url(stack.redis.url)
    r.flushall()
    r.close()
    stack.extra_env.clear()
    reset_settings()
    with HostileFal() as fal:
        main = stack.start_worker(concurrency=80, env=hostile_env(fal), loglevel="INFO")
        strict = stack.start_worker(concurrency=10, env=strict_env(fal), loglevel="INFO")
        client = Falq(stack.settings(**hostile_env(fal)))
        strict_client = Falq(stack.settings(**strict_env(fal)))
        t0 = time.monotonic()
        jobs = {c.name: (strict_client if c.strict else client).generate(f"case:{c.name} hostile answer")
                for c in CASES}
        records: dict[str, JobRecord] = {}
        end = time.monotonic() + 90
        while len(records) < len(jobs) and time.monotonic() < end:
            for name, job in jobs.items():
                if name not in records:
                    rec = job.record()
                    if rec.terminal:
                        records[name] = rec
            time.sleep(0.3)
        seconds = time.monotonic() - t0
        for name, job in jobs.items():  # what the unfinished ones look like, for the failure message
            records.setdefault(name, job.record())
        try:
            yield Run(stack, fal, main, strict, client, jobs, records, seconds)
        finally:
            stack.stop_workers()
            reset_settings()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_hostile_answer_fails_the_job_plainly(run: Run, case: Case) -> None:
    rec = run.records[case.name]
    assert rec.state == "failed", (rec.state, [e.message for e in rec.errors])
    assert rec.error is not None
    message = rec.error.message
    for words in case.says:
        assert words in message, f"{words!r} not in {message!r}"
    if case.error_type:
        assert rec.error.type == case.error_type, rec.error
    took = rec.timestamps["failed"] - rec.created_at
    # The deadline's cases also wait (FALQ_FAL_AFTER_CANCEL_S) and read once more for fal's
    # answer to the cancel, which a trickling status makes one 2 x FALQ_FAL_HTTP_TIMEOUT_S read.
    limit = 45 if case.error_type == "deadline_exceeded" else 30
    assert took < limit, f"{case.name} took {took:.1f}s to fail"
    # never more submissions than attempts, and exactly as many as the case implies
    submitted = run.fal.submissions[rec.id]
    assert submitted <= rec.attempts, (submitted, rec.attempts)
    assert submitted == case.submits, (submitted, [e.message for e in rec.errors])
    # the state machine handled it: the task's catch-all never saw an exception for this job
    log = run.stack.worker_logs()
    assert f"step of job {rec.id} crashed" not in log


def test_refused_media_was_never_fetched(run: Run) -> None:
    """Refusals happen before connecting: no media GET for any URL falq refused."""
    for name in ("media-https-loopback", "media-https-localhost", "media-plain-http",
                 "media-metadata-url", "media-evil-host"):
        assert run.fal.hits[f"/media/{name}.png"] == 0, name
    # ... while the redirecting and oversized ones were fetched (and cut short) exactly once
    assert run.fal.hits["/media/media-redirect-off.png"] == 1
    assert run.fal.hits["/media/media-endless.png"] == 1


def test_truncated_media_is_fetched_again_and_never_stored(run: Run) -> None:
    from falq.shared.storage.s3 import Storage

    storage = Storage(run.client.settings)
    for name in ("media-truncated-png", "media-truncated-jpeg"):
        rec = run.records[name]
        assert run.fal.hits[f"/media/{name}.png"] == 3, name  # TRUNCATED_TRIES downloads, then failed
        # three retryable notes, then the same error as the final, non-retryable one. A status
        # stream this loaded test server drops now and then adds a retryable fal_transient note
        # (the follower reconnects); any other note would be a real difference.
        media = [(e.type, e.retryable) for e in rec.errors if e.type != "fal_transient"]
        assert media == [("media_truncated", True)] * 3 + [("media_truncated", False)], \
            [e.message for e in rec.errors]
        assert all(e.retryable for e in rec.errors if e.type == "fal_transient"), [e.message for e in rec.errors]
        assert rec.outputs == []
        listed = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=f"{run.client.settings.s3_prefix}/")
        # no image (the job's job.json, its catalogue row, is written for failed jobs too)
        assert not [o["Key"] for o in listed.get("Contents", [])
                    if f"/{rec.id}/" in o["Key"] and not o["Key"].endswith("/job.json")], name


def test_truncated_once_then_whole_completes(run: Run) -> None:
    rec = run.client.generate("case:media-truncated-once hostile answer").wait(30)
    assert rec.state == "completed", [e.message for e in rec.errors]
    assert [e.type for e in rec.errors] == ["media_truncated"]
    assert run.fal.hits["/media/media-truncated-once.png"] == 2
    assert rec.outputs and rec.outputs[0].content_type == "image/jpeg"
    assert run.fal.submissions[rec.id] == 1  # fetched again, never generated again


def test_slow_answers_are_cut_and_recorded(run: Run) -> None:
    """A trickling status answer is given up after 2 x FALQ_FAL_HTTP_TIMEOUT_S, and the request is
    cancelled at fal when the deadline fails the job."""
    rec = run.records["status-slow"]
    assert any("still arriving after 6s" in e.message for e in rec.errors), [e.message for e in rec.errors]
    noisy = run.records["stream-noise"]
    assert noisy.request_id in run.fal.cancels and rec.request_id in run.fal.cancels


def test_batch_ended_in_bounded_time(run: Run) -> None:
    unfinished = {n: r for n, r in run.records.items() if not r.terminal}
    log = run.stack.worker_logs().splitlines()
    # what the workers said about an unfinished job, to tell a slow machine from a stranded job
    assert not unfinished, {n: (r.state, [line for line in log if r.id in line][-8:]) for n, r in unfinished.items()}
    assert run.seconds < 60, run.seconds


def test_workers_survive_and_still_complete_jobs(run: Run) -> None:
    assert run.main.poll() is None and run.strict.poll() is None
    rec = run.client.generate("a perfectly normal fox").wait(30)
    assert rec.state == "completed", [e.message for e in rec.errors]
    assert rec.outputs and rec.outputs[0].content_type == "image/png" and rec.attempts == 1
    assert run.fal.submissions[rec.id] == 1
