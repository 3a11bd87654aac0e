"""The ``falq`` CLI in-process against a private redis-server (no workers, no fal, no S3).

Every way a producer can get a job wrong must give ``error: <field>: <rule>``, a non-zero
exit, and leave Redis -- keys, values' existence and the broker queues -- exactly as it was.
"""

from __future__ import annotations

import io
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from falq.cli.main import main
from falq.shared.errors import PermanentError
from falq.shared.jobs.records import JobRecord, StoredImage
from falq.shared.settings import Settings, get_settings, reset_settings
from falq.testing.stack import free_port

SECRET = "fal-secret-key-never-printed-0123456789"


@dataclass
class Env:
    settings: Settings
    r: redis.Redis
    tmp: Path

    @property
    def queues(self) -> tuple[str, str]:
        return self.settings.queue_interactive, self.settings.queue_bulk

    def snapshot(self) -> tuple[int, list[bytes], dict[str, int]]:
        return self.r.dbsize(), sorted(self.r.keys("*")), {q: self.r.llen(q) for q in self.queues}

    def falq(self) -> Any:
        from falq.producers import Falq

        return Falq(self.settings)


@pytest.fixture
def env(redis_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    tag = f"t{uuid.uuid4().hex[:10]}"
    for name, value in {"FALQ_REDIS_URL": redis_server, "FALQ_KEY_PREFIX": tag,
                        "FALQ_QUEUE_INTERACTIVE": f"{tag}.interactive", "FALQ_QUEUE_BULK": f"{tag}.bulk",
                        "FALQ_INPUT_UPLOAD": "data-uri", "FAL_KEY": SECRET}.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    r = redis.Redis.from_url(redis_server)
    yield Env(get_settings(), r, tmp_path)
    r.close()
    reset_settings()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    return code, out, err


def _png(path: Path, size: tuple[int, int] = (512, 512), mode: str = "RGB") -> str:
    color: Any = (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)
    Image.new(mode, size, color).save(path, format="PNG")
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    big = tmp_path / "big.png"
    with big.open("wb") as fh:
        fh.truncate(11 * 1024 * 1024)  # sparse: the size check must not read it
    (tmp_path / "notes.png").write_text("not an image at all")
    (tmp_path / "folder").mkdir()
    locked = tmp_path / "locked.png"
    _png(locked)
    locked.chmod(0)
    buf = io.BytesIO()
    Image.new("RGBA", (400, 400), (1, 2, 3, 4)).save(buf, format="PNG")
    return {
        "good": _png(tmp_path / "good.png"),
        "alpha": _png(tmp_path / "alpha.png", mode="RGBA"),
        "tiny": _png(tmp_path / "tiny.png", (100, 100)),
        "big": str(big),
        "text": str(tmp_path / "notes.png"),
        "dir": str(tmp_path / "folder"),
        "missing": str(tmp_path / "missing.png"),
        # root reads any file whatever its mode; /proc/self/mem is a regular file that even
        # root cannot read() from the start, so the "cannot be read" path is exercised for real.
        "locked": "/proc/self/mem" if os.geteuid() == 0 else str(locked),
    }


URL = "https://example.com/a.png"
# (id, argv, expected "field: rule" fragments). argv may name {images} from the fixture.
INVALID: list[tuple[str, list[str], list[str]]] = [
    ("empty-prompt", ["generate", ""], ["prompt: must not be empty"]),
    ("blank-prompt", ["generate", "  \n "], ["prompt: must not be empty"]),
    ("pro-empty-prompt", ["generate", "", "--pro"], ["prompt: must not be empty"]),
    ("seed-negative", ["generate", "x", "--seed", "-1"], ["seed: must be greater than or equal to 0"]),
    ("seed-too-big", ["generate", "x", "--seed", "2147483648"], ["seed: must be less than or equal to 2147483647"]),
    ("seed-not-int", ["generate", "x", "--seed", "abc"], ["seed: must be an integer (got 'abc')"]),
    ("seed-float", ["generate", "x", "--seed", "1.5"], ["seed: must be an integer"]),
    ("num-images-zero", ["generate", "x", "--num-images", "0"], ["num_images: must be greater than or equal to 1"]),
    ("num-images-ceiling", ["generate", "x", "--num-images", "5"], ["num_images: must be at most 4"]),
    ("num-images-text", ["generate", "x", "--num-images", "two"], ["num_images: must be an integer"]),
    ("size-preset", ["generate", "x", "--image-size", "huge"], ["image_size: must be one of 'square_hd'"]),
    ("size-small", ["generate", "x", "--image-size", "100x100"], ["image_size: width x height is 10000 pixels"]),
    ("size-big", ["generate", "x", "--image-size", "4096x4096"], ["image_size: width x height is 16777216"]),
    ("size-zero", ["generate", "x", "--image-size", "0x600"], ["image_size.width: must be greater than 0"]),
    ("format", ["generate", "x", "--output-format", "gif"], ["output_format: must be one of 'jpeg', 'png'"]),
    ("negative-long", ["generate", "x", "--negative-prompt", "n" * 501],
     ["negative_prompt: must have at most 500 characters"]),
    ("lane", ["generate", "x", "--lane", "fast"], ["lane: must be 'interactive' or 'bulk', not 'fast'"]),
    ("callback-scheme", ["generate", "x", "--callback-url", "ftp://hooks.example.com/x"],
     ["callback_url: must be an http(s) URL"]),
    ("key-space", ["generate", "x", "--idempotency-key", "a b"], ["idempotency_key: must be 1-200 characters"]),
    ("key-long", ["generate", "x", "--idempotency-key", "k" * 201], ["idempotency_key: must be 1-200 characters"]),
    ("metadata", ["generate", "x", "--metadata", "novalue"], ["metadata: must be KEY=VALUE, got 'novalue'"]),
    ("all-at-once", ["generate", "", "--seed", "-5", "--lane", "x", "--output-format", "bmp"],
     ["prompt: must not be empty", "seed: must be greater", "lane: must be", "output_format: must be one of"]),
    ("edit-no-image", ["edit", "x"], ["image_urls: must have at least 1 item"]),
    ("edit-seven", ["edit", "x", *[a for _ in range(7) for a in ("--image", URL)]],
     ["image_urls: must have at most 6 items"]),
    ("edit-prompt-long", ["edit", "p" * 801, "--image", URL], ["prompt: must have at most 800 characters"]),
    ("edit-missing", ["edit", "x", "--image", "{missing}"], ["image_urls.0: local file", "does not exist"]),
    ("edit-dir", ["edit", "x", "--image", "{dir}"], ["image_urls.0: local file", "is not a file"]),
    ("edit-oversized", ["edit", "x", "--image", "{big}"], ["image_urls.0: local file is 11534336 bytes",
                                                           "at most 10 MB"]),
    ("edit-not-image", ["edit", "x", "--image", "{text}"], ["image_urls.0: image"]),
    ("edit-tiny", ["edit", "x", "--image", "{tiny}"], ["image_urls.0: image width is 100 px; fal accepts 384-5000"]),
    ("edit-alpha", ["edit", "x", "--image", "{alpha}"], ["image_urls.0: image is a PNG with an alpha channel"]),
    ("edit-ftp", ["edit", "x", "--image", "ftp://files.example.com/a.png"],
     ["image_urls.0: has scheme 'ftp:'; only http(s) URLs and data URIs are accepted"]),
    ("edit-file-url", ["edit", "x", "--image", "file:///etc/passwd"], ["image_urls.0: has scheme 'file:'"]),
    ("edit-javascript", ["edit", "x", "--image", "javascript:alert(1)"], ["image_urls.0: has scheme 'javascript:'"]),
    ("edit-s3", ["edit", "x", "--image", "s3://bucket/key.png"], ["image_urls.0: has scheme 's3:'"]),
    ("edit-data-text", ["edit", "x", "--image", "data:text/plain;base64,aGVsbG8="], ["image_urls.0: "]),
    ("edit-second-bad", ["edit", "x", "--image", "{good}", "--image", "{missing}"], ["image_urls.1: local file"]),
    ("edit-mixed", ["edit", "", "--image", "{missing}", "--seed", "-1", "--lane", "z"],
     ["prompt: must not be empty", "image_urls.0: local file", "seed: must be greater", "lane: must be"]),
    ("edit-locked", ["edit", "x", "--image", "{locked}"], ["image_urls.0: local file cannot be read"]),
]


@pytest.mark.parametrize(("argv", "expected"), [(a, e) for _, a, e in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_input_is_rejected_and_redis_untouched(
    env: Env, images: dict[str, str], argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(**images) if "{" in a and len(a) < 200 else a for a in argv]
    before = env.snapshot()
    code, out, err = run(capsys, *args)
    assert code == 2, (out, err)
    lines = err.splitlines()
    for fragment in expected:
        assert any(line.startswith("error: ") and fragment in line for line in lines), (fragment, err)
    assert "Traceback" not in err
    assert env.snapshot() == before
    # The same with --json: a JSON error document naming each field.
    code, out, err = run(capsys, *args, "--json")
    assert code == 2
    doc = json.loads(out)
    assert doc["error"]["type"] == "invalid_input"
    flat = [f"{e['field']}: {e['message']}" for e in doc["error"]["errors"]]
    for fragment in expected:
        assert any(fragment in f for f in flat), (fragment, flat)
    assert env.snapshot() == before


def test_help_shows_schema_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for text in ("[default: png]", "[default: square_hd]", "[default: random]", "[default: interactive]",
                 "[default: 1]", "--no-prompt-expansion", "--no-safety-checker", "--sync-mode", "--idempotency-key",
                 "--metadata KEY=VALUE", "--callback-url", "--wait", "--timeout", "--out", "--json"):
        assert text in flat, text
    code, out, _ = run(capsys, "edit", "--help")
    assert "--flatten-alpha" in out and "size of the last input image" in " ".join(out.split())


def test_generate_passes_only_the_fields_set(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "generate", "a red fox", "--seed", "7", "--image-size", "1280x720",
                       "--no-prompt-expansion", "--metadata", "team=ml", "--metadata", "k=a=b", "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["state"] == "queued" and rec["endpoint"] == "fal-ai/qwen-image-2/text-to-image"
    assert rec["input"]["seed"] == 7 and rec["input"]["image_size"] == {"width": 1280, "height": 720}
    assert rec["input"]["enable_prompt_expansion"] is False
    assert rec["input"]["output_format"] == "png"  # schema default, not a CLI default
    assert "seed" in rec["input"] and rec["metadata"] == {"team": "ml", "k": "a=b"}
    assert env.r.llen(env.settings.queue_interactive) == 1
    code, out, err = run(capsys, "generate", "a lighthouse", "--pro", "--lane", "bulk")
    assert code == 0 and len(out.strip()) == 32 and "falq wait" in err
    assert env.r.llen(env.settings.queue_bulk) == 1
    rec2 = env.falq().job(out.strip()).record()
    assert rec2.endpoint == "fal-ai/qwen-image-2/pro/text-to-image" and "seed" not in rec2.input


def test_idempotency_key_never_enqueues_twice(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ids = {run(capsys, "generate", "same", "--idempotency-key", "order-42")[1].strip() for _ in range(3)}
    assert len(ids) == 1
    assert env.r.llen(env.settings.queue_interactive) == 1


def test_edit_local_images_become_data_uris(env: Env, images: dict[str, str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "edit", "make it night", "--image", images["good"], "--image", URL,
                         "--image", images["alpha"], "--flatten-alpha", "--json")
    assert code == 0, err
    urls = json.loads(out)["input"]["image_urls"]
    assert urls[0].startswith("data:image/png;base64,") and urls[1] == URL and urls[2].startswith("data:image/png")
    assert json.loads(out)["endpoint"] == "fal-ai/qwen-image-2/edit"


def _complete(rec: JobRecord) -> None:
    rec.outputs = [StoredImage(index=0, bucket="bkt", key=f"falq/x/{rec.id}/0.png", size=7, sha256="ab",
                               content_type="image/png", width=1024, height=1024)]
    rec.walk_to("completed")


def _fail(rec: JobRecord) -> None:
    rec.add_error(PermanentError("fal said no"))
    rec.move("failed")


class FakeStorage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get_bytes(self, key: str) -> bytes:
        return b"bytes of " + key.encode()

    def presign(self, key: str, expires_s: int | None = None) -> str:
        return f"https://s3.test/{key}?sig=x"


def test_wait_status_and_out(env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("falq.shared.storage.s3.Storage", FakeStorage)
    job_id = run(capsys, "generate", "x", "--idempotency-key", "w1")[1].strip()
    code, out, err = run(capsys, "wait", job_id, "--timeout", "0.3")
    assert code == 4 and "still queued" in err
    code, out, _ = run(capsys, "wait", job_id, "--timeout", "0.2", "--json")
    assert code == 4 and json.loads(out)["job"]["state"] == "queued"
    env.falq().store.update(job_id, _complete)
    # Same key again with --wait --out: the existing (completed) job, its image saved.
    out_dir = env.tmp / "out"
    code, out, err = run(capsys, "generate", "x", "--idempotency-key", "w1", "--wait", "--out", str(out_dir))
    assert code == 0, err
    saved = out_dir / f"{job_id}_0.png"
    assert saved.read_bytes() == f"bytes of falq/x/{job_id}/0.png".encode()
    code, out, _ = run(capsys, "status", job_id, "--json")
    assert code == 0 and json.loads(out)["state"] == "completed" and json.loads(out)["outputs"][0]["index"] == 0
    code, out, _ = run(capsys, "status", job_id)
    assert code == 0 and "completed" in out and job_id in out


def test_wait_on_failed_job_exits_1(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = run(capsys, "generate", "x")[1].strip()
    env.falq().store.update(job_id, _fail)
    code, out, err = run(capsys, "wait", job_id)
    assert code == 1 and "fal said no" in out and "ended failed" in err
    code, out, _ = run(capsys, "wait", job_id, "--json")
    assert code == 1 and json.loads(out)["error"]["message"] == "fal said no"


def test_not_found_exits_3(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("status", "wait", "cancel"):
        code, out, err = run(capsys, cmd, "no-such-job")
        assert code == 3 and err.startswith("error: no job with id 'no-such-job'"), (cmd, err)
        assert "Traceback" not in err
    code, out, _ = run(capsys, "status", "nope", "--json")
    assert code == 3 and json.loads(out)["error"]["type"] == "job_not_found"


def test_cancel_and_jobs(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    a = run(capsys, "generate", "first")[1].strip()
    b = run(capsys, "generate", "second")[1].strip()
    code, out, _ = run(capsys, "cancel", a)
    assert code == 0 and "cancelled" in out
    code, out, _ = run(capsys, "jobs", "--json")
    assert [r["id"] for r in json.loads(out)] == [b, a]
    code, out, _ = run(capsys, "jobs", "--state", "cancelled", "--since", "1h", "--json")
    assert [r["id"] for r in json.loads(out)] == [a]
    code, out, _ = run(capsys, "jobs", "--state", "queued")
    assert code == 0 and b in out and a not in out
    assert run(capsys, "jobs", "--since", "2099-01-01", "--json")[1].strip() == "[]"
    code, _, err = run(capsys, "jobs", "--state", "bogus")
    assert code == 2 and "error: state: must be one of" in err
    code, _, err = run(capsys, "jobs", "--since", "yesterday-ish")
    assert code == 2 and "error: since: must be a duration" in err
    code, _, err = run(capsys, "jobs", "--limit", "0")
    assert code == 2


def test_service_commands_delegate(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execvp", lambda file, args: calls.append((file, list(args))))
    flower_env: list[dict[str, str]] = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: (calls.append((file, list(args))),
                                                              flower_env.append(env)))
    # `falq worker` checks its options itself, then execs a fresh (gevent-patched) interpreter.
    assert main(["worker", "--lanes", "bulk,nope"]) == 2 and calls == []
    assert "unknown lane(s) nope" in capsys.readouterr().err
    main(["worker", "-c", "5", "--lanes", "bulk", "-n", "w1@%h"])
    assert calls[0] == (sys.executable, [sys.executable, "-m", "falq.workers", "--lanes", "bulk", "--loglevel", "INFO",
                                         "--concurrency", "5", "--hostname", "w1@%h"])
    # Flower refuses to start open unless told to ...
    monkeypatch.delenv("FALQ_FLOWER_PASSWORD", raising=False)
    reset_settings()
    assert main(["flower", "--port", "5555"]) == 2
    assert "refusing to start without authentication" in capsys.readouterr().err
    main(["flower", "--port", "5555", "--unauthenticated", "--url_prefix", "flower", "--persistent=True"])
    assert calls[1][1][:6] == [sys.executable, "-m", "celery", "-A", "falq.workers.app", "flower"]
    assert "--port=5555" in calls[1][1] and "FLOWER_BASIC_AUTH" not in flower_env[0]
    # Options falq does not define go on to `celery flower`, in order, after falq's own.
    assert calls[1][1][-3:] == ["--url_prefix", "flower", "--persistent=True"]
    # ... and with a password, basic auth goes through the environment, never argv.
    monkeypatch.setenv("FALQ_FLOWER_PASSWORD", "flower-pass-xyz")
    reset_settings()
    main(["flower"])
    assert flower_env[1]["FLOWER_BASIC_AUTH"] == "falq:flower-pass-xyz"
    assert not any("flower-pass-xyz" in a for a in calls[2][1])
    # `falq emulator` is the emulator's own command: its options reach the server as parsed.
    import falq.emulator.server

    seen: list[tuple[str, int, Any, str]] = []
    monkeypatch.setattr(falq.emulator.server, "run", lambda *a: seen.append(a))
    assert main(["emulator", "--port", "0", "--locked-status", "402", "--fail-429", "0.5"]) == 0
    host, port, config, log_level = seen[0]
    assert (host, port, log_level) == ("127.0.0.1", 0, "warning")
    assert config.locked_status == 402 and config.fail_429 == 0.5 and config.latency == "fixed:1"
    assert main(["emulator", "--locked-status", "401"]) == 2 and len(seen) == 1


def test_unreachable_redis_is_reported_without_credentials(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FALQ_REDIS_URL", f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("FAL_KEY", SECRET)
    reset_settings()
    try:
        code, out, err = run(capsys, "status", "abc")
    finally:
        reset_settings()
    assert code == 5 and "cannot reach Redis at 127.0.0.1:" in err
    assert "hunter2" not in out + err and "Traceback" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "generate")[0] == 2
    assert run(capsys, "no-such-command")[0] == 2
    assert run(capsys, "wait", "x", "--timeout", "soon")[0] == 2
