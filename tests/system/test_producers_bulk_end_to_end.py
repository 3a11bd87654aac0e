"""Producers end to end with real workers: bulk files, interrupted reruns, lanes, local images."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from falq.testing.stack import ROOT, DevStack
from tests.conftest import emulator_submissions, wait_for


def _write_jsonl(path: Path, n: int, tag: str) -> None:
    endpoints = ["fal-ai/qwen-image-2/text-to-image", "fal-ai/qwen-image-2/pro/text-to-image"]
    with path.open("w") as f:
        for i in range(n):
            line = {"endpoint": endpoints[i % 2], "input": {"prompt": f"{tag} line {i}", "seed": i,
                                                          "image_size": "square"},
                    "id": f"{tag}-{i}", "metadata": {"row": i}}
            f.write(json.dumps(line) + "\n")


def _bulk(stack: DevStack, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **stack.env()}
    return subprocess.Popen([sys.executable, "-m", "falq.cli", "bulk", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.timeout(300)
def test_bulk_file_of_1000_lines_runs_to_completion(clean_stack: DevStack, tmp_path: Path) -> None:
    clean_stack.emu.configure(latency="uniform:0.05,0.3", tiny_images=True, concurrency=0)
    clean_stack.start_worker(concurrency=200)
    src = tmp_path / "prompts.jsonl"
    _write_jsonl(src, 1000, "thousand")
    results = tmp_path / "results.jsonl"
    proc = _bulk(clean_stack, str(src), "--results", str(results), "--timeout", "240")
    out, err = proc.communicate(timeout=280)
    assert proc.returncode == 0, (out[-2000:], err[-2000:])
    rows = _results(results)
    assert len(rows) == 1000
    assert [r["line"] for r in rows] == list(range(1, 1001))
    assert all(r["state"] == "completed" and r["error"] is None for r in rows)
    assert len({r["job_id"] for r in rows}) == 1000
    assert all(r["metadata"] == {"row": r["line"] - 1} for r in rows)
    out0 = rows[0]["outputs"][0]
    assert out0["bucket"] and out0["key"] and len(out0["sha256"]) == 64 and out0["presigned_url"].startswith("http")
    subs = emulator_submissions(clean_stack)
    twice = {r["job_id"]: len(subs.get(r["job_id"], [])) for r in rows if len(subs.get(r["job_id"], [])) != 1}
    if twice:  # explain before failing
        from falq.producers import Falq

        falq = Falq(clean_stack.settings())
        for job_id in list(twice)[:3]:
            rec = falq.job(job_id).record()
            print("DOUBLE", job_id, rec.attempts, rec.errors, rec.submissions,
                  [(x["submitted_at"], x.get("headers")) for x in subs[job_id]])
        print(clean_stack.worker_logs()[-5000:])
    assert not twice, twice
    assert "1000 completed" in (out + err)


@pytest.mark.timeout(300)
def test_interrupted_bulk_run_rerun_does_every_line_exactly_once(clean_stack: DevStack, tmp_path: Path) -> None:
    # Enough lines that the kill lands mid-file (chunks of 100); the 1,000-line test above covers scale.
    lines = 700
    clean_stack.emu.configure(latency="uniform:0.05,0.3", tiny_images=True, concurrency=0)
    src = tmp_path / "prompts.jsonl"
    _write_jsonl(src, lines, "rerun")
    results = tmp_path / "results.jsonl"
    r = redis.Redis.from_url(clean_stack.redis.url)
    # First run: killed while it is still enqueueing (no worker yet, so nothing runs).
    first = _bulk(clean_stack, str(src), "--results", str(results), "--no-wait", "--chunk-size", "100")
    wait_for(lambda: r.zcard("falq:created") >= 200, 60, 0.01, what="part of the file enqueued")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    partial = r.zcard("falq:created")
    assert 0 < partial < lines
    # Rerun the same command to completion, with workers now running.
    clean_stack.start_worker(concurrency=200)
    second = _bulk(clean_stack, str(src), "--results", str(results), "--timeout", "250")
    out, err = second.communicate(timeout=290)
    assert second.returncode == 0, (out[-2000:], err[-2000:])
    assert r.zcard("falq:created") == lines  # no line became two jobs
    rows = _results(results)
    assert len(rows) == lines and all(row["state"] == "completed" for row in rows)
    subs = emulator_submissions(clean_stack)
    assert sorted(subs) == sorted(row["job_id"] for row in rows)
    assert all(len(subs[row["job_id"]]) == 1 for row in rows)  # each line submitted to fal exactly once


@pytest.mark.timeout(180)
def test_bulk_backlog_never_delays_interactive_jobs(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="fixed:1", concurrency=0)
    from falq.producers.client import JobRequest

    backlog = [JobRequest("fal-ai/qwen-image-2/text-to-image", {"prompt": f"bulk {i}"}, lane="bulk")
               for i in range(150)]
    bulk_ids = [job_id for job_id, _ in falq.submit_many(backlog)]
    clean_stack.start_worker(concurrency=10)
    wait_for(lambda: falq.store.counts()["completed"] >= 10, 60, what="bulk lane flowing")
    urgent = falq.generate("interactive, right now")
    rec = urgent.wait(60)
    assert rec.state == "completed"
    bulk = [x for x in falq.store.get_many(bulk_ids) if x and x.state == "completed"]
    # 150 bulk jobs at 10 in parallel and 1 s each take ~15 s; the interactive one is picked
    # by the next free slot, so it finishes in about one job's time. Counted in jobs, not
    # seconds (a loaded machine slows both lanes alike): the bulk jobs that finished between
    # the interactive job's creation and its end are about the 10 that were running then,
    # where waiting behind the backlog would have let over a hundred finish first.
    finished_meanwhile = sum(1 for x in bulk if rec.created_at <= x.updated_at <= rec.updated_at)
    assert len(bulk) < 120, len(bulk)
    assert finished_meanwhile <= 25, finished_meanwhile


@pytest.mark.timeout(120)
def test_edit_with_local_file_and_bytes_uploaded_to_fal_storage(clean_stack: DevStack, falq: Any,
                                                                tmp_path: Path) -> None:
    clean_stack.start_worker(concurrency=5)
    path = tmp_path / "photo.png"
    Image.new("RGB", (800, 600), (10, 120, 200)).save(path)
    buf = io.BytesIO()
    Image.new("RGBA", (500, 400), (250, 10, 10, 128)).save(buf, "PNG")
    job = falq.edit("put a hat on it", [path, buf.getvalue()], flatten_alpha=True, seed=11)
    urls = job.record().input["image_urls"]
    assert all(u.startswith(clean_stack.emu.url) for u in urls)  # short URLs in the record, not bytes
    rec = job.wait(60)
    assert rec.state == "completed", rec.errors
    # fal sized the output after the last input image (the flattened 500x400 one)
    assert (rec.outputs[0].width, rec.outputs[0].height) == (500, 400)
