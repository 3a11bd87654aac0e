"""A job cancelled while fal ran it, whose request fal completed anyway (billed, its images
mirrored): the one rule (``JobRecord.kept_after_cancel`` / ``has_result``) and every shape built on
it -- fal's status, result and webhook bodies, the REST record view, the bulk results row and the
CLI's state label -- against a plain cancelled job, which keeps fal's 499."""

from __future__ import annotations

from typing import Any

import pytest

from falq.cli.output import jobs_table, state_label
from falq.gateway.fal.views import error_result, failure, result_body, status_body
from falq.producers.bulk.wait import result_row
from falq.shared.fal.shapes import fal_payload
from falq.shared.jobs.records import JobRecord, StoredImage

EP = "fal-ai/qwen-image-2/text-to-image"


def _image(index: int) -> StoredImage:
    return StoredImage(index=index, bucket="bkt", key=f"falq/j/{index}.png", sha256=f"{index}" * 64, size=10,
                       content_type="image/png", width=64, height=32, source_host="fal.media")


def _cancelled(outcome: str | None, images: int = 1) -> JobRecord:
    rec = JobRecord.new(endpoint=EP, input={"prompt": "a fox"})
    rec.walk_to("in_progress")
    rec.move("mirroring")
    rec.move("cancelled")
    rec.fal_outcome = outcome  # type: ignore[assignment]
    rec.outputs = [_image(i) for i in reversed(range(images))]
    rec.seed = 7
    return rec


def _presign(key: str) -> str:
    return f"https://s3.test/{key}?sig"


@pytest.mark.parametrize(("outcome", "images", "kept"), [
    ("finished", 2, True), ("finished", 0, False), ("stopped", 0, False), ("removed", 0, False),
    ("unknown", 0, False), (None, 0, False)])
def test_only_a_cancel_fal_finished_with_images_has_a_result(outcome: str | None, images: int, kept: bool) -> None:
    rec = _cancelled(outcome, images)
    assert rec.kept_after_cancel is kept and rec.has_result is kept
    done = JobRecord.new(endpoint=EP, input={"prompt": "x"})
    done.walk_to("completed")
    assert done.has_result and not done.kept_after_cancel
    failed = JobRecord.new(endpoint=EP, input={"prompt": "x"})
    failed.walk_to("failed")
    failed.fal_outcome = "finished"
    failed.outputs = [_image(0)]
    assert not failed.has_result and not failed.kept_after_cancel


def test_fal_shapes_answer_a_kept_cancel_as_completed() -> None:
    rec = _cancelled("finished", 2)
    assert failure(rec) is None
    status = status_body(rec, {}, position=0, with_logs=False)
    assert status["status"] == "COMPLETED" and "error" not in status and "error_type" not in status
    body = result_body(rec, _presign)
    assert [i["s3"]["key"] for i in body["images"]] == ["falq/j/0.png", "falq/j/1.png"] and body["seed"] == 7
    hook = fal_payload(rec, _presign)
    assert hook["status"] == "OK" and hook["error"] is None and len(hook["payload"]["images"]) == 2


@pytest.mark.parametrize("outcome", ["stopped", "removed", "unknown", None])
def test_a_cancel_without_kept_output_keeps_fals_499(outcome: str | None) -> None:
    rec = _cancelled(outcome, 0)
    fail = failure(rec)
    assert fail is not None
    code, body, headers = error_result(fail)
    assert (code, body["error_type"], headers["x-fal-error-type"]) == (499, "client_cancelled", "client_cancelled")
    assert status_body(rec, {}, position=0, with_logs=False)["error_type"] == "client_cancelled"
    assert fal_payload(rec, _presign)["status"] == "ERROR"


def test_the_rest_view_serves_the_kept_output_and_keeps_the_state() -> None:
    from falq.gateway.rest.jobs import _job_view

    class Gw:
        presign = staticmethod(_presign)

    kept = _job_view(Gw(), _cancelled("finished", 1))  # type: ignore[arg-type]
    assert kept["state"] == "cancelled" and kept["fal_outcome"] == "finished" and kept["fal_status"] == "COMPLETED"
    assert kept["result"]["images"][0]["url"] == _presign("falq/j/0.png") and "error_type" not in kept
    plain = _job_view(Gw(), _cancelled(None, 0))  # type: ignore[arg-type]
    assert "result" not in plain and plain["error_type"] == "client_cancelled"


def test_the_bulk_results_row_lists_the_kept_images() -> None:
    kept = result_row(1, "a", "j", _cancelled("finished", 2), None, _presign)  # type: ignore[arg-type]
    assert kept["state"] == "cancelled" and kept["fal_outcome"] == "finished"
    assert [o["key"] for o in kept["outputs"]] == ["falq/j/1.png", "falq/j/0.png"]
    assert kept["error"]["type"] == "cancelled" and "fal finished it anyway" in kept["error"]["message"]
    plain = result_row(2, "b", "k", _cancelled("removed", 0), None, _presign)  # type: ignore[arg-type]
    assert plain["outputs"] == [] and plain["error"] == {"type": "cancelled", "message": "cancelled"}


def test_listings_show_how_fal_ended_a_cancel_beside_the_state() -> None:
    from rich.console import Console

    assert state_label(_cancelled("finished", 1)) == "cancelled (fal finished)"
    assert state_label(_cancelled("removed", 0)) == "cancelled (fal removed)"
    assert state_label(_cancelled(None, 0)) == "cancelled"
    done = JobRecord.new(endpoint=EP, input={"prompt": "x"})
    done.walk_to("completed")
    done.fal_outcome = "finished"  # the deadline's cancel, which fal ignored: nothing to add
    assert state_label(done) == "completed"
    console = Console(record=True, width=200)
    console.print(jobs_table([_cancelled("finished", 1), done]))
    text: Any = console.export_text()
    assert text.count("cancelled (fal finished)") == 1
