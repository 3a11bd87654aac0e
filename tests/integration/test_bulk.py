"""Bulk files (``falq bulk`` and :mod:`falq.producers.bulk.enqueue`) against a private redis-server.

No workers run here: job outcomes are written straight into the job store. With Celery on
Redis a lane's queue is a Redis list named after the queue, so ``LLEN`` counts messages.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from falq.cli.main import main
from falq.producers.bulk.enqueue import enqueue, file_key, load_file, wait_and_report
from falq.shared.errors import PermanentError
from falq.shared.jobs.records import JobRecord, StoredImage
from falq.shared.settings import Settings, get_settings, reset_settings

ROOT = Path(__file__).resolve().parents[2]
EDIT = "fal-ai/qwen-image-2/edit"


@dataclass
class Env:
    settings: Settings
    r: redis.Redis
    tmp: Path
    vars: dict[str, str]

    def snapshot(self) -> tuple[int, list[bytes], int, int]:
        return self.r.dbsize(), sorted(self.r.keys("*")), self.llen("interactive"), self.llen("bulk")

    def llen(self, lane: str = "bulk") -> int:
        return int(self.r.llen(self.settings.queue_bulk if lane == "bulk" else self.settings.queue_interactive))

    def handed(self, lane: str = "bulk") -> int:
        """Jobs handed on to run: broker messages plus entries waiting in a tenant's ready set
        (with fair dispatch a producer publishes only what the dispatch room allows)."""
        ready = sum(int(self.r.zcard(k)) for k in self.r.keys(f"{self.settings.key_prefix}:fair:ready:{lane}:*"))
        return self.llen(lane) + ready

    def jobs(self) -> int:
        return int(self.r.zcard(f"{self.settings.key_prefix}:created"))

    def falq(self) -> Any:
        from falq.producers import Falq

        return Falq(self.settings)

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path


@pytest.fixture
def env(redis_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    tag = f"b{uuid.uuid4().hex[:10]}"
    values = {"FALQ_REDIS_URL": redis_server, "FALQ_KEY_PREFIX": tag, "FALQ_QUEUE_INTERACTIVE": f"{tag}.interactive",
              "FALQ_QUEUE_BULK": f"{tag}.bulk", "FALQ_INPUT_UPLOAD": "data-uri"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    r = redis.Redis.from_url(redis_server)
    yield Env(get_settings(), r, tmp_path, values)
    r.close()
    reset_settings()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def jl(*objs: Any) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


OK = {"input": {"prompt": "a red fox"}}
URL = "https://example.com/a.png"

# (id, file name, content, expected error fragments as printed after "error: ")
INVALID: list[tuple[str, str, str | bytes, list[str]]] = [
    ("empty", "a.jsonl", "", ["file: ", "holds no jobs (it is empty)"]),
    ("blank-lines", "a.jsonl", "\n  \n\n", ["holds no jobs"]),
    ("malformed-json", "a.jsonl", jl(OK, '{"input": {"prompt": '), ["line 2: is not valid JSON"]),
    ("nested-too-deep", "a.jsonl", jl(OK, "[" * 100_000), ["line 2: is not valid JSON here (nested too deeply)"]),
    ("huge-integer", "a.jsonl", jl(OK, '{"input": {"prompt": "a", "seed": ' + "9" * 5000 + "}}"),
     ["line 2: is not valid JSON here"]),
    ("string-line", "a.ndjson", jl(OK, '"a fox"'), ["line 2: must be a JSON object, not a string"]),
    ("array-line", "a.jsonl", jl("[1, 2]"), ["line 1: must be a JSON object, not an array"]),
    ("bad-utf8", "a.jsonl", b'{"input": {"prompt": "\xff"}}\n', ["line 1: is not valid UTF-8"]),
    ("unknown-line-key", "a.jsonl", jl({**OK, "prompt": "x"}), ["line 1: prompt: is not a line field"]),
    ("unknown-input-field", "a.jsonl", jl({"input": {"prompt": "a", "steps": 30}}),
     ["line 1: input.steps: is not a field of this endpoint"]),
    ("seed-string", "a.jsonl", jl({"input": {"prompt": "a", "seed": "7"}}),
     ["line 1: input.seed: must be a valid integer"]),
    ("seed-negative", "a.jsonl", jl({"input": {"prompt": "a", "seed": -3}}), ["line 1: input.seed: must be greater"]),
    ("num-images-float", "a.jsonl", jl({"input": {"prompt": "a", "num_images": 1.5}}), ["line 1: input.num_images: "]),
    ("bool-string", "a.jsonl", jl({"input": {"prompt": "a", "enable_safety_checker": "no"}}),
     ["line 1: input.enable_safety_checker: must be a valid boolean"]),
    ("prompt-empty", "a.jsonl", jl(OK, OK, {"input": {"prompt": ""}}), ["line 3: input.prompt: must not be empty"]),
    ("prompt-missing", "a.jsonl", jl({"input": {"seed": 1}}), ["line 1: input.prompt: is required"]),
    ("prompt-number", "a.jsonl", jl({"input": {"prompt": 5}}), ["line 1: input.prompt: must be a valid string"]),
    ("input-string", "a.jsonl", jl({"input": "a fox"}), ["line 1: input: must be a JSON object"]),
    ("input-missing", "a.jsonl", jl({"endpoint": EDIT}), ["line 1: input: is required"]),
    ("unknown-endpoint", "a.jsonl", jl({**OK, "endpoint": "fal-ai/flux/dev"}),
     ["line 1: endpoint: unknown endpoint 'fal-ai/flux/dev'"]),
    ("size-small", "a.jsonl", jl({"input": {"prompt": "a", "image_size": {"width": 100, "height": 100}}}),
     ["line 1: input.image_size: width x height is 10000 pixels"]),
    ("size-preset", "a.jsonl", jl({"input": {"prompt": "a", "image_size": "huge"}}),
     ["line 1: input.image_size: must be one of"]),
    ("format", "a.jsonl", jl({"input": {"prompt": "a", "output_format": "gif"}}),
     ["line 1: input.output_format: must be one of"]),
    ("edit-ftp", "a.jsonl", jl({"endpoint": EDIT, "input": {"prompt": "a", "image_urls": ["ftp://h/a.png"]}}),
     ["line 1: input.image_urls.0: has scheme 'ftp:'; only http(s) URLs and data URIs are accepted"]),
    ("edit-local-path", "a.jsonl", jl({"endpoint": EDIT, "input": {"prompt": "a", "image_urls": ["/tmp/a.png"]}}),
     ["line 1: input.image_urls.0: has no scheme"]),
    ("edit-too-many", "a.jsonl", jl({"endpoint": EDIT, "input": {"prompt": "a", "image_urls": [URL] * 7}}),
     ["line 1: input.image_urls: must have at most 6 items"]),
    ("edit-prompt-long", "a.jsonl", jl({"endpoint": EDIT, "input": {"prompt": "p" * 801, "image_urls": [URL]}}),
     ["line 1: input.prompt: must have at most 800 characters"]),
    ("duplicate-id", "a.jsonl", jl({**OK, "id": "a"}, {**OK, "id": "b"}, {**OK, "id": "a"}),
     ["line 3: id: duplicate of line 1"]),
    ("id-number", "a.jsonl", jl({**OK, "id": 5}), ["line 1: id: must be a string"]),
    ("id-empty", "a.jsonl", jl({**OK, "id": ""}), ["line 1: id: must be 1-200 characters"]),
    ("metadata-list", "a.jsonl", jl({**OK, "metadata": ["x"]}), ["line 1: metadata: must be a JSON object"]),
    ("lane", "a.jsonl", jl({**OK, "lane": "fast"}), ["line 1: lane: must be 'interactive' or 'bulk'"]),
    ("callback", "a.jsonl", jl({**OK, "callback_url": "ftp://x/y"}), ["line 1: callback_url: must be an http(s) URL"]),
    ("many-per-line", "a.jsonl", jl({"input": {"prompt": "", "seed": "x"}, "lane": "q", "zz": 1}),
     ["line 1: zz: is not a line field", "line 1: input.prompt: must not be empty", "line 1: input.seed: ",
      "line 1: lane: must be"]),
    ("csv-header-only", "a.csv", "prompt,seed\n", ["holds no jobs"]),
    ("csv-empty", "a.csv", "", ["holds no jobs"]),
    ("csv-no-prompt", "a.csv", "id,seed\nx,1\n", ["file: line 1: a 'prompt' column is required"]),
    ("csv-unknown-column", "a.csv", "prompt,steps\nx,1\n", ["file: line 1: column 'steps' is unknown"]),
    ("csv-seed-text", "a.csv", "prompt,seed\nfox,1\nowl,abc\n", ["line 3: input.seed: must be an integer (got 'abc')"]),
    ("csv-cells", "a.csv", "prompt,seed\nfox,1\nowl,2,3\n", ["line 3: has 3 cells; the header has 2"]),
    ("csv-num-images", "a.csv", "prompt,num_images\nfox,0\n", ["line 2: input.num_images: must be greater than"]),
    ("csv-empty-prompt", "a.csv", "prompt,seed\n,1\n", ["line 2: input.prompt: must not be empty"]),
    ("csv-size", "a.csv", "prompt,image_size\nfox,10x10\n", ["line 2: input.image_size: width x height is 100"]),
    ("csv-dup-id", "a.csv", "prompt,id\nfox,a\nowl,a\n", ["line 3: id: duplicate of line 2"]),
    ("csv-bad-utf8", "a.csv", b"prompt\nfox\n\xff\n", ["file: line 3 is not valid UTF-8"]),
    ("unknown-extension", "a.txt", jl(OK), ["format: cannot tell the format of 'a.txt'"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), [(n, c, e) for _, n, c, e in INVALID],
                         ids=[i for i, *_ in INVALID])
def test_invalid_files_enqueue_nothing(env: Env, capsys: pytest.CaptureFixture[str], name: str,
                                       content: str | bytes, expected: list[str]) -> None:
    path = env.write(name, content)
    before = env.snapshot()
    for extra in ([], ["--dry-run"]):
        code, out, err = run(capsys, "bulk", str(path), *extra)
        assert code == 2, (extra, out, err)
        lines = [x.removeprefix("error: ") for x in err.splitlines() if x.startswith("error: ")]
        for fragment in expected:
            assert any(fragment in line for line in lines), (fragment, err)
        assert env.snapshot() == before
    code, out, _ = run(capsys, "bulk", str(path), "--json")
    assert code == 2
    doc = json.loads(out)
    if "error" in doc:  # the file as a whole is unusable
        flat = [f"{e['field']}: {e['message']}" for e in doc["error"]["errors"]]
    else:
        assert doc["exit_code"] == 2 and doc["invalid"] >= 1
        flat = [f"line {e['line']}: " + (f"{e['field']}: " if e["field"] else "") + e["message"]
                for e in doc["errors"]]
    for fragment in expected:
        assert any(fragment in f for f in flat), (fragment, flat)
    assert env.snapshot() == before


def test_missing_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bulk", str(env.tmp / "nope.jsonl"))
    assert code == 2 and "error: file: cannot read" in err


def test_load_file_reports_every_bad_line(env: Env) -> None:
    path = env.write("x.jsonl", jl(OK, "nope", {"input": {"prompt": ""}}, OK, {"input": {"prompt": "b"}, "id": 3}))
    lines, rejects = load_file(path, env.falq())
    assert [x.line for x in lines] == [1, 4]
    assert [(r.line, [str(e) for e in r.errors]) for r in rejects] == [
        (2, ["is not valid JSON (Expecting value at column 1)"]),
        (3, ["input.prompt: must not be empty"]),
        (5, ["id: must be a string of 1-200 characters, not a number"]),
    ]
    assert rejects[1].messages() == ["line 3: input.prompt: must not be empty"]


def test_dry_run_valid(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write("ok.jsonl", jl(OK, {"input": {"prompt": "b"}, "id": "b"},
                                    {"endpoint": EDIT, "input": {"prompt": "c", "image_urls": [URL]}}))
    before = env.snapshot()
    code, _, err = run(capsys, "bulk", str(path), "--dry-run")
    assert code == 0 and "dry run: 3 lines, 3 valid, 0 invalid; nothing was enqueued" in err
    assert env.snapshot() == before


def test_skip_invalid_writes_rejects(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    bad2 = '{"input": {"prompt": ""}}'
    bad4 = "{oops"
    path = env.write("mix.jsonl", jl(OK, bad2, {"input": {"prompt": "b"}}, bad4, {"input": {"prompt": "c"}}))
    code, out, _ = run(capsys, "bulk", str(path), "--skip-invalid", "--no-wait", "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["valid"], doc["invalid"], doc["new"]) == (3, 2, 3)
    assert env.llen() == 3 and env.jobs() == 3
    rejects = [json.loads(x) for x in Path(f"{path}.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["raw"]) for r in rejects] == [(2, bad2), (4, bad4)]
    assert rejects[0]["errors"] == [{"field": "input.prompt", "message": "must not be empty"}]
    custom = env.tmp / "bad.jsonl"
    code, _, err = run(capsys, "bulk", str(path), "--skip-invalid", "--no-wait", "--rejects", str(custom))
    assert code == 0 and len(custom.read_text().splitlines()) == 2
    assert "0 new, 3 already known" in err and env.llen() == 3


def _lines(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        line: dict[str, Any] = {"input": {"prompt": f"prompt {i}", "seed": i}, "metadata": {"i": i}}
        if i % 3 == 0:
            line["id"] = f"row-{i}"
        out.append(line)
    out.append({"input": {"prompt": "same"}})
    out.append({"input": {"prompt": "same"}})  # identical lines are distinct jobs
    return out


def test_rerun_after_interruption_enqueues_only_what_is_missing(env: Env, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A record without its message exists only with FIFO publishing (with fair dispatch the
    # record and its ready entry are written in one step, tests/integration/test_fairshare_lua.py).
    monkeypatch.setenv("FALQ_FAIR_DISPATCH", "false")
    reset_settings()
    env.settings = get_settings()
    objs = _lines(38)
    path = env.write("run.jsonl", jl(*objs))
    falq = env.falq()
    lines, _ = load_file(path, falq)
    enqueue(falq, lines[:15])  # interrupted after 15 lines...
    # ...and 5 more were written to Redis but their messages never sent (crash in between).
    falq.store.create_many([(JobRecord.new(endpoint=x.request.endpoint, input=x.request.input, lane=x.request.lane),
                             x.request.idempotency_key) for x in lines[15:20]])
    assert (env.llen(), env.jobs()) == (15, 20)
    code, out, _ = run(capsys, "bulk", str(path), "--no-wait", "--json")
    doc = json.loads(out)
    assert code == 0 and (doc["new"], doc["existing"]) == (20, 20)
    assert (env.llen(), env.jobs()) == (40, 40)
    code, out, _ = run(capsys, "bulk", str(path), "--no-wait", "--json")
    assert json.loads(out)["new"] == 0 and (env.llen(), env.jobs()) == (40, 40)
    # Lines added before and after (positions shift): only the new ones are enqueued.
    env.write("run.jsonl", jl({"input": {"prompt": "new first"}}, *objs, {"input": {"prompt": "new last"}}))
    code, out, _ = run(capsys, "bulk", str(path), "--no-wait", "--json")
    assert json.loads(out)["new"] == 2 and (env.llen(), env.jobs()) == (42, 42)
    # Another --run-id is another run.
    code, out, _ = run(capsys, "bulk", str(path), "--no-wait", "--json", "--run-id", "second")
    assert json.loads(out)["new"] == 42 and env.jobs() == 84


def test_killed_enqueue_then_rerun_never_duplicates_a_job(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    n = 6000
    path = env.write("kill.jsonl", jl(*({"input": {"prompt": f"p{i}"}} for i in range(n))))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from falq.cli.main import main; sys.exit(main())",
                             "bulk", str(path), "--no-wait"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**_os_env(), **env.vars})
    end = time.monotonic() + 60
    while env.jobs() < 1000 and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    partial = env.jobs()
    code, out, _ = run(capsys, "bulk", str(path), "--no-wait", "--json")
    doc = json.loads(out)
    print(f"killed after {partial} of {n} records; rerun created {doc['new']}")
    assert code == 0 and env.jobs() == n and doc["new"] == n - partial
    # Every job has a message or a ready entry; a kill between publish and its bookkeeping may
    # at most re-send one chunk's messages (the worker's lease makes a repeat message harmless).
    assert n <= env.handed() <= n + 500


def _os_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FALQ_")}


def test_csv_input(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [["prompt", "id", "seed", "image_size", "num_images", "negative_prompt", "output_format"],
            ["a fox, in snow", "fox", "7", "1280x720", "2", "blurry", "jpeg"],
            ["an owl", "", "", "landscape_4_3", "", "", ""],
            ["", "", "", "", "", "", ""],  # a blank row is skipped
            ["a \"quoted\" cat", "cat", "-0", "", "1", "", "webp"]]
    path = env.tmp / "p.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    code, out, err = run(capsys, "bulk", str(path), "--no-wait", "--json", "--endpoint",
                         "fal-ai/qwen-image-2/pro/text-to-image", "--run-id", "csv1")
    assert code == 0, err
    assert json.loads(out)["new"] == 3 and env.llen() == 3
    falq = env.falq()
    recs = {r.input["prompt"]: r for r in falq.jobs(limit=10)}
    fox = recs["a fox, in snow"]
    assert fox.endpoint == "fal-ai/qwen-image-2/pro/text-to-image" and fox.lane == "bulk"
    assert fox.input["seed"] == 7 and fox.input["num_images"] == 2
    assert fox.input["image_size"] == {"width": 1280, "height": 720} and fox.input["output_format"] == "jpeg"
    assert fox.idempotency_key == "bulk:csv1:id:fox"
    owl = recs["an owl"]
    assert "seed" not in owl.input and owl.input["image_size"] == "landscape_4_3"
    assert owl.idempotency_key is not None and owl.idempotency_key.startswith("bulk:csv1:sha:")
    assert recs['a "quoted" cat'].input["seed"] == 0


def test_file_key_defaults_to_the_path(env: Env) -> None:
    a = env.write("k.jsonl", jl(OK))
    assert file_key(a) == file_key(str(a)) == file_key(env.tmp / "." / "k.jsonl")
    assert file_key(a) != file_key(env.write("k2.jsonl", jl(OK)))
    assert file_key(a, "nightly") == "nightly"


def test_ten_thousand_lines_enqueue_quickly(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    n = 10_000
    path = env.write("big.jsonl", jl(*({"input": {"prompt": f"prompt number {i}", "seed": i},
                                        "metadata": {"row": i}} for i in range(n))))
    t0 = time.monotonic()
    code, out, err = run(capsys, "bulk", str(path), "--no-wait", "--json")
    total = time.monotonic() - t0
    doc = json.loads(out)
    assert code == 0, err
    enq = doc["enqueue_s"]
    with capsys.disabled():
        print(f"\n10k bulk: {total:.2f}s end to end ({n / total:.0f} lines/s); "
              f"enqueue {enq:.2f}s ({n / enq:.0f} jobs/s); validation+load {total - enq:.2f}s")
    assert env.handed() == n and env.jobs() == n
    assert total < 60


def _complete(rec: JobRecord, n: int = 1) -> None:
    rec.outputs = [StoredImage(index=i, bucket="bkt", key=f"falq/{rec.id}/{i}.png", size=10 + i, sha256="ab" * 32,
                               content_type="image/png", width=1024, height=768) for i in range(n)]
    rec.walk_to("completed")


class FakeStorage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def presign(self, key: str, expires_s: int | None = None) -> str:
        return f"https://s3.test/{key}?X-Amz-Signature=x"

    def get_bytes(self, key: str) -> bytes:
        return b""


def test_wait_writes_results_and_summary(env: Env, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("falq.shared.storage.s3.Storage", FakeStorage)
    path = env.write("res.jsonl", jl({"input": {"prompt": "a"}, "id": "a", "metadata": {"k": 1}},
                                     {"input": {"prompt": "b"}}, "not json", {"input": {"prompt": "c"}, "id": "c"},
                                     {"input": {"prompt": "d"}, "id": "d"}))
    code, out, _ = run(capsys, "bulk", str(path), "--no-wait", "--skip-invalid", "--json")
    assert code == 0
    falq = env.falq()
    lines, _ = load_file(path, falq)
    ids = enqueue(falq, lines)
    falq.store.update(ids[0], lambda r: _complete(r, 2))
    falq.store.update(ids[1], _complete)

    def fail(r: JobRecord) -> None:
        r.add_error(PermanentError("fal rejected the prompt"))
        r.move("failed")

    falq.store.update(ids[2], fail)
    falq.cancel(ids[3])
    code, out, err = run(capsys, "bulk", str(path), "--skip-invalid", "--timeout", "20")
    assert code == 1, err
    assert re.fullmatch(r"5 lines: 2 completed, 1 failed, 1 cancelled, 1 rejected in \d+\.\ds \(\d+\.\d jobs/s\)\n",
                        out), out
    rows = [json.loads(x) for x in Path(f"{path}.results.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["state"] for r in rows] == ["completed", "completed", "rejected", "failed", "cancelled"]
    first = rows[0]
    assert first["id"] == "a" and first["job_id"] == ids[0] and first["metadata"] == {"k": 1}
    assert first["error"] is None and len(first["outputs"]) == 2
    assert first["outputs"][1] == {"bucket": "bkt", "key": f"falq/{ids[0]}/1.png", "sha256": "ab" * 32, "size": 11,
                                   "content_type": "image/png", "width": 1024, "height": 768,
                                   "presigned_url": f"https://s3.test/falq/{ids[0]}/1.png?X-Amz-Signature=x"}
    assert rows[1]["id"] is None and rows[2]["job_id"] is None and rows[2]["error"]["type"] == "invalid_input"
    assert rows[3]["error"] == {"type": "permanent", "message": "fal rejected the prompt"}
    assert rows[4]["error"]["type"] == "cancelled" and rows[4]["outputs"] == []


def test_timeout_exits_4_and_still_writes_results(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write("slow.jsonl", jl(OK, {"input": {"prompt": "b"}}))
    results = env.tmp / "out" / "r.jsonl"
    results.parent.mkdir()
    t0 = time.monotonic()
    code, out, err = run(capsys, "bulk", str(path), "--timeout", "0.5", "--results", str(results))
    assert code == 4 and time.monotonic() - t0 < 15
    assert "timed out after 0.5s with 2 jobs not finished" in err and "2 not finished" in out
    assert [json.loads(x)["state"] for x in results.read_text().splitlines()] == ["queued", "queued"]


def test_ctrl_c_stops_waiting_without_cancelling(env: Env) -> None:
    path = env.write("cc.jsonl", jl(OK, {"input": {"prompt": "b"}}))
    falq = env.falq()
    lines, rejects = load_file(path, falq)
    ids = enqueue(falq, lines)
    seen = []

    def interrupt(snap: Any) -> None:
        seen.append(snap)
        raise KeyboardInterrupt

    report = wait_and_report(falq, lines, ids, rejects=rejects, results_path=env.tmp / "cc.out", on_progress=interrupt)
    assert report.interrupted and report.exit_code == 130 and seen[0].counts["queued"] == 2
    assert [r.state for r in falq.store.get_many(ids) if r] == ["queued", "queued"]
    assert len((env.tmp / "cc.out").read_text().splitlines()) == 2
    assert env.llen() == 2


def test_live_progress_display_renders(env: Env, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("falq.shared.storage.s3.Storage", FakeStorage)
    monkeypatch.setattr("falq.cli.bulk.live_ok", lambda as_json: True)
    monkeypatch.setattr("falq.cli.main.live_ok", lambda as_json: True)
    path = env.write("live.jsonl", jl(OK, {"input": {"prompt": "b"}}))
    falq = env.falq()
    lines, _ = load_file(path, falq)
    ids = enqueue(falq, lines)
    falq.store.update(ids[0], _complete)
    code, out, err = run(capsys, "bulk", str(path), "--timeout", "1.5")
    assert code == 4 and "1/2 finished" in err and "completed 1" in err
    code, out, err = run(capsys, "wait", ids[0])
    assert code == 0 and "completed" in out
