"""The worker pipeline end to end: real Redis, real S3 over HTTP, the emulator, real workers."""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from falq.shared.jobs.records import JobRecord
from falq.shared.storage.s3 import Storage
from falq.testing.stack import TEST_FAL_KEY, DevStack
from tests.conftest import emulator_submissions, fetch_fal_result, wait_for


def _png(w: int = 512, h: int = 512) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.timeout(180)
def test_all_four_endpoints_complete_with_identical_images_in_s3(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.start_worker(concurrency=20)
    from falq.shared.storage.images import to_data_uri

    src = to_data_uri(_png(640, 480), "image/png")
    jobs = [
        falq.generate("a red fox, standard", seed=1),
        falq.generate("a red fox, pro", pro=True, seed=2, image_size="landscape_16_9", output_format="jpeg"),
        falq.edit("make it blue, standard", [src], seed=3, output_format="webp"),
        falq.edit("make it blue, pro", [src], pro=True, seed=4, num_images=2),
    ]
    storage = Storage(falq.settings)
    for job in jobs:
        rec: JobRecord = job.wait(120)
        assert rec.state == "completed", rec.errors
        assert rec.request_id and rec.attempts == 1 and len(rec.submissions) == 1
        assert rec.seed is not None and rec.inference_time is not None
        assert rec.timestamps.keys() >= {"queued", "submitting", "in_queue", "mirroring", "completed"}
        fal_out = fetch_fal_result(clean_stack, rec.request_id)
        assert len(rec.outputs) == len(fal_out["images"]) == rec.input.get("num_images", 1)
        for stored, served in zip(rec.outputs, fal_out["images"], strict=True):
            original = httpx.get(served["url"], timeout=30).content
            copy = storage.get_bytes(stored.key)
            assert copy == original  # byte-identical to what fal (the emulator) served
            assert hashlib.sha256(copy).hexdigest() == stored.sha256
            assert stored.size == len(copy) and stored.bucket == falq.settings.s3_bucket
            assert stored.key.startswith(f"falq/{rec.endpoint}/") and f"/{rec.id}/" in stored.key
            with Image.open(io.BytesIO(copy)) as img:
                assert (img.width, img.height) == (stored.width, stored.height)
            head = storage.head(stored.key)
            assert head is not None and head["ContentType"] == stored.content_type
            assert head["Metadata"]["falq-job-id"] == rec.id
    # the edit output follows the last input image's size when image_size is unset
    edit = jobs[2].record()
    assert (edit.outputs[0].width, edit.outputs[0].height) == (640, 480)
    assert edit.outputs[0].content_type == "image/webp" and edit.outputs[0].key.endswith(".webp")
    # a presigned URL serves the object
    first = jobs[0].result()[0]
    assert httpx.get(first["presigned_url"], timeout=30).content == storage.get_bytes(first["key"])


@pytest.mark.timeout(120)
def test_sync_mode_data_uris_are_mirrored(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.start_worker(concurrency=5)
    rec = falq.generate("sync mode cat", sync_mode=True, seed=9).wait(60)
    assert rec.state == "completed", rec.errors
    out = rec.outputs[0]
    assert out.source_host == "data-uri"
    data = Storage(falq.settings).get_bytes(out.key)
    assert hashlib.sha256(data).hexdigest() == out.sha256 and data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(240)
def test_sigkill_mid_batch_loses_nothing_and_pays_nothing_twice(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="uniform:0.5,2.5")
    first = clean_stack.start_worker(concurrency=30)
    jobs = [falq.generate(f"kill test {i}", seed=i, lane="bulk" if i % 2 else "interactive") for i in range(60)]
    # kill while jobs are spread over every state: queued, at fal, mirroring
    wait_for(lambda: sum(1 for j in jobs if j.status() != "queued") >= 15, 60, what="jobs picked up")
    clean_stack.kill_worker(first)
    clean_stack.start_worker(concurrency=30)
    recs = [j.wait(180) for j in jobs]
    unfinished = [(r.id, r.state, r.errors) for r in recs if r.state != "completed"]
    assert not unfinished, unfinished
    subs = emulator_submissions(clean_stack)
    for rec in recs:
        n = len(subs.get(rec.id, []))
        assert 1 <= n <= rec.attempts, (rec.id, n, rec.attempts)
        if n > 1:  # only a kill inside the submit round trip may cost a new attempt, and it says so
            assert any(e.type == "submit_interrupted" for e in rec.errors), rec.errors
    repeated = sum(1 for r in recs if len(subs.get(r.id, [])) > 1)
    print(f"jobs with more than one submission: {repeated} of {len(recs)}")


@pytest.mark.timeout(120)
def test_cancel_before_submission_never_reaches_fal(clean_stack: DevStack, falq: Any) -> None:
    job = falq.generate("never submitted")  # no worker running yet
    rec = job.cancel()
    assert rec.state == "cancelled"
    clean_stack.start_worker(concurrency=5)
    time.sleep(2)
    assert job.status() == "cancelled"
    assert job.id not in emulator_submissions(clean_stack)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", ["in_queue", "in_progress"])
def test_cancel_at_fal(clean_stack: DevStack, falq: Any, stage: str) -> None:
    clean_stack.emu.configure(latency="fixed:30", concurrency=1)
    clean_stack.start_worker(concurrency=5)
    blocker = falq.generate("blocker")
    wait_for(lambda: blocker.status() == "in_progress", 30, what="blocker in progress")
    job = blocker if stage == "in_progress" else falq.generate("waits in fal's queue")
    wait_for(lambda: job.status() == stage, 30, what=stage)
    job.cancel()
    rec = job.wait(30)
    assert rec.state == "cancelled"
    reqs = {r["request_id"]: r for r in clean_stack.emu.requests()["requests"]}
    assert reqs[rec.request_id]["cancelled"] is True


@pytest.mark.timeout(180)
def test_injected_faults_are_recovered(clean_stack: DevStack, falq: Any) -> None:
    # Ingress pages and 429s on every call, runner failures on some requests. Only the
    # request's own failure is paid again: an ingress blip on status/result costs nothing.
    clean_stack.emu.configure(latency="uniform:0.1,0.6", fail_5xx=0.15, fail_429=0.1,
                              completed_error=0.1, fault_seed=7)
    clean_stack.start_worker(concurrency=30, env={"FALQ_MAX_ATTEMPTS": "12"})
    jobs = [falq.generate(f"faulty {i}", seed=i) for i in range(30)]
    recs = [j.wait(150) for j in jobs]
    assert all(r.state == "completed" for r in recs), [(r.state, r.errors[-1:]) for r in recs]
    subs = emulator_submissions(clean_stack)
    for r in recs:
        own_failures = sum(1 for e in r.errors if e.type == "fal_request_failed_transient")
        assert len(subs.get(r.id, [])) == 1 + own_failures <= r.attempts
    kinds = {e.type for r in recs for e in r.errors}
    assert "fal_request_failed_transient" in kinds  # COMPLETED-with-error caused a new attempt
    assert "fal_ingress" in kinds and "fal_transient" in kinds
    rejected = clean_stack.emu.requests()["rejected"]
    assert sum(rejected.values()) > 0


@pytest.mark.timeout(60)
def test_permanent_fal_rejection_fails_fast_with_fals_message(clean_stack: DevStack, falq: Any) -> None:
    # Bypass the producer's validation to see how a 422 from fal itself is handled.
    bad = JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image", input={"prompt": "x", "num_images": 0})
    falq.store.create(bad)
    from falq.shared.engine.publish import publish

    publish(falq.app, falq.settings, bad.id, lane="interactive", endpoint=bad.endpoint)
    clean_stack.start_worker(concurrency=2)
    rec = falq.job(bad.id).wait(30)
    assert rec.state == "failed" and rec.attempts == 1
    assert rec.error and not rec.error.retryable and "num_images" in rec.error.message


@pytest.mark.timeout(60)
def test_wrong_key_fails_fast_naming_only_the_suffix(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(accepted_keys=["some-other-key-entirely"])
    clean_stack.start_worker(concurrency=2)
    rec = falq.generate("unauthorised").wait(30)
    assert rec.state == "failed" and rec.error and rec.error.type == "fal_auth"
    assert TEST_FAL_KEY[-4:] in rec.error.message and TEST_FAL_KEY not in rec.error.message


@pytest.mark.timeout(90)
def test_deadline_cancels_at_fal_and_fails(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="fixed:60")
    clean_stack.start_worker(concurrency=2, env={"FALQ_JOB_DEADLINE_S": "3"})
    rec = falq.generate("too slow").wait(40)
    assert rec.state == "failed" and rec.error and rec.error.type == "deadline_exceeded"
    reqs = {r["request_id"]: r for r in clean_stack.emu.requests()["requests"]}
    assert reqs[rec.request_id]["cancelled"] is True


@pytest.mark.timeout(120)
def test_one_job_through_rabbitmq(clean_stack: DevStack) -> None:
    from falq.producers import Falq

    tag = str(int(time.time() * 1000))
    env = {"FALQ_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
           "FALQ_QUEUE_INTERACTIVE": f"falq-test-{tag}.interactive", "FALQ_QUEUE_BULK": f"falq-test-{tag}.bulk"}
    clean_stack.start_worker(concurrency=5, env=env)
    client = Falq(clean_stack.settings(**env))
    assert client.settings.broker.startswith("amqp://")
    rec = client.generate("through rabbitmq", seed=5).wait(60)
    assert rec.state == "completed", rec.errors
    assert len(rec.outputs) == 1
