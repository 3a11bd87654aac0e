"""Retry and cancel of jobs only the catalogue still holds (their Redis record expired after
archiving), through the real parts: workers, the fal emulator over HTTP, Redis, S3 (moto), the
CLI, the gateway over HTTP and PostgreSQL or SQLite (each test its own database).

A job is made "archived only" as in tests/system/test_catalogue_end_to_end.py: workers archive it, and
``FALQ_ARCHIVED_TTL_S=2`` lets its Redis copy expire. A moderated job (the emulator's
``[[moderate]]`` marker) is a real fal failure; switching the marker off afterwards lets the
retried job complete at the emulator, so every retry below is a real new attempt at fal.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from falq.shared.catalogue.revive import refs_from_parents
from falq.shared.catalogue.rows import lost_in, scrub_value
from falq.shared.catalogue.store import Catalogue, get_catalogue
from falq.shared.jobs.records import JobRecord, StoredImage
from falq.testing.stack import DevStack
from tests.conftest import emulator_submissions, wait_for
from tests.system.test_catalogue import Db, db  # noqa: F401 - the fixture, per dialect
from tests.system.test_catalogue_end_to_end import env  # noqa: F401 - the stack's env with this test's database

EDIT = "fal-ai/qwen-image-2/edit"
APP = "fal-ai/qwen-image-2"
PLACEHOLDER = "J" * 32


@pytest.fixture
def unmoderate(clean_stack: DevStack) -> Iterator[Callable[[], None]]:
    """Switch the emulator's moderation marker off (so a retried moderated prompt completes);
    the session's emulator gets its marker back afterwards, for the tests that follow."""
    marker = clean_stack.emu.configure()["moderation_marker"]
    yield lambda: clean_stack.emu.configure(moderation_marker="[[nothing moderates now]]") and None
    clean_stack.emu.configure(moderation_marker=marker)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from falq.cli.main import main

    capsys.readouterr()
    code = main(argv)
    got = capsys.readouterr()
    return code, got.out, got.err


def _archived_only(falq: Any, cat: Catalogue, ids: set[str]) -> None:
    """Wait until every job of ``ids`` is in the catalogue and no longer in Redis."""
    wait_for(lambda: all(cat.get_row(i) is not None for i in ids), 30, what="the workers archived the jobs")
    wait_for(lambda: not any(falq.store.exists(i) for i in ids), 15, what="the Redis copies to expire")


def _start(stack: DevStack) -> Any:
    """The stack's settings, its bucket made (as in a deployment: a job.json of a job without
    images is the bucket's first object here), and one worker."""
    from falq.shared.storage.s3 import Storage

    settings = stack.settings()
    Storage(settings).ensure_bucket()
    stack.start_worker(concurrency=10)
    return settings


def _moderated(falq: Any, prompt: str = "a fox [[moderate]]", **kw: Any) -> JobRecord:
    rec: JobRecord = falq.generate(prompt, **kw).wait(60)
    assert rec.state == "failed" and rec.moderation is not None, rec.errors
    return rec


# --- end to end: the CLI ------------------------------------------------------------------------------


def test_archived_failed_job_runs_again_and_its_row_follows(
        unmoderate: Callable[[], None], clean_stack: DevStack, env: dict[str, str],  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    from falq.producers.client import Falq

    settings = _start(clean_stack)
    falq = Falq(settings)
    failed = _moderated(falq, metadata={"project": "moon"}, seed=3)
    done = falq.generate("a lighthouse at dusk", seed=4).wait(60)
    assert done.state == "completed"
    cancelled = falq.generate("a cancelled fox", seed=5)
    falq.cancel(cancelled.id)
    cat = get_catalogue(settings)
    _archived_only(falq, cat, {failed.id, done.id, cancelled.id})
    before = cat.get_row(failed.id)
    assert before is not None and before["state"] == "failed" and before["attempts"] == 1
    unmoderate()

    # The archived failed (moderated) job runs again: a new attempt of the same job.
    code, out, err = _cli(["retry", failed.id], capsys)
    assert code == 0, err
    assert out.strip() == f"{failed.id}: queued again (attempt 2)"
    after = falq.job(failed.id).wait(60)
    assert after.state == "completed" and after.attempts == 2 and after.retry_from == 1
    # Everything the job was, as the row kept it: endpoint, input, tenant, lane, metadata, history.
    assert (after.endpoint, after.input, after.tenant, after.lane, after.metadata) == \
        (failed.endpoint, failed.input, failed.tenant, failed.lane, failed.metadata)
    assert [e.type for e in after.errors] == [e.type for e in failed.errors]  # the failure stays in the history
    assert [s.attempt for s in after.submissions] == [1, 2]
    assert len(emulator_submissions(clean_stack)[failed.id]) == 2  # the one new fal submission
    # Its second end is archived over the same row (upsert by id, a newer version).
    wait_for(lambda: (cat.get_row(failed.id) or {}).get("state") == "completed", 30, what="the row to follow")
    row = cat.get_row(failed.id)
    assert row is not None and row["version"] > before["version"] and row["attempts"] == 2
    assert row["outputs"] and row["metadata"] == {"project": "moon"}

    # An archived completed job is never run again (fal made and billed its images).
    code, out, err = _cli(["retry", done.id], capsys)
    assert code == 1, err
    assert out.strip() == (f"{done.id}: not retried: it completed: a completed job is not run again "
                           "(fal made and billed its images; submit a new job for new ones)")
    code, out, _ = _cli(["retry", cancelled.id], capsys)
    assert code == 1 and out.strip() == f"{cancelled.id}: not retried: it is cancelled: only failed jobs are run again"
    assert not falq.store.exists(done.id) and not falq.store.exists(cancelled.id)  # nothing written for them
    assert len(emulator_submissions(clean_stack)[done.id]) == 1

    # Cancel answers as for a live job that already ended, not "no such job".
    for job_id, state in ((done.id, "completed"), (cancelled.id, "cancelled")):
        code, out, err = _cli(["cancel", job_id], capsys)
        assert code == 0, err
        assert out.strip() == f"{job_id}: already {state}; nothing to cancel"
    code, out, err = _cli(["retry", uuid.uuid4().hex], capsys)
    assert code != 0 and "no job with id" in err
    code, out, err = _cli(["cancel", uuid.uuid4().hex], capsys)
    assert code != 0 and "no job with id" in err


# --- the gateway: answers, tenant isolation ------------------------------------------------------------


def _normalised(resp: httpx.Response, job_id: str) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers with the job id (and a fresh correlation id) replaced."""
    headers = []
    for k, v in resp.headers.multi_items():
        if k in ("date", "server"):
            continue
        v = v.replace(job_id, PLACEHOLDER)
        if k == "x-fal-request-id" and v != PLACEHOLDER:
            v = "<fresh correlation id>"
        headers.append((k, v))
    return resp.status_code, resp.content.replace(job_id.encode(), PLACEHOLDER.encode()), headers


def test_gateway_retries_and_cancels_archived_jobs_of_its_tenant_only(
        unmoderate: Callable[[], None], clean_stack: DevStack, env: dict[str, str]) -> None:  # noqa: F811
    from falq.gateway import GatewayServer
    from falq.producers.admin import Admin
    from falq.producers.client import Falq

    settings = _start(clean_stack)
    admin = Admin(Falq(settings))
    admin.tenant_add("shop")
    admin.tenant_add("other")
    shop_key = admin.key_create("shop", ["submit", "read"])[0]
    other_key = admin.key_create("other", ["submit", "read", "admin"])[0]
    shop = Falq(settings, tenant="shop")
    with _receiver() as hook:  # its callback is delivered once; the row keeps only the URL's host
        failed = _moderated(shop, callback_url=hook)
        wait_for(lambda: shop.lookup(failed.id).metadata.get("callback"), 30, what="the callback delivered")
    done = shop.generate("a completed lighthouse", seed=1).wait(60)
    assert done.state == "completed"
    cat = get_catalogue(settings)
    _archived_only(shop, cat, {failed.id, done.id})
    unmoderate()
    with GatewayServer(settings, api_keys=["operator-key-0123456789abcdef"]) as gw:
        def call(method: str, path: str, key: str) -> httpx.Response:
            return httpx.request(method, f"{gw.url}{path}", headers={"Authorization": f"Key {key}"}, timeout=30)

        # Another tenant's archived id answers byte for byte like an id that never existed.
        nowhere = uuid.uuid4().hex
        for method, path in (("POST", "/v1/jobs/{id}/retry"), ("POST", "/v1/jobs/{id}/cancel"),
                             ("GET", "/v1/jobs/{id}"), ("PUT", f"/{APP}/requests/{{id}}/cancel")):
            theirs = call(method, path.format(id=failed.id), other_key)
            missing = call(method, path.format(id=nowhere), other_key)
            assert theirs.status_code == 404, (path, theirs.text)
            assert _normalised(theirs, failed.id) == _normalised(missing, nowhere), path
        assert not shop.store.exists(failed.id)  # the refused retry wrote nothing

        # Cancel of an archived job: the answers of a live job that already ended.
        cancel = call("POST", f"/v1/jobs/{done.id}/cancel", shop_key)
        assert cancel.status_code == 200 and cancel.json()["state"] == "completed"
        fal_cancel = call("PUT", f"/{APP}/requests/{done.id}/cancel", shop_key)
        assert fal_cancel.status_code == 400 and fal_cancel.json() == {"status": "ALREADY_COMPLETED"}
        # Retry: a completed one is refused, saying why; the failed one runs again and completes.
        refused = call("POST", f"/v1/jobs/{done.id}/retry", shop_key)
        assert refused.status_code == 409 and refused.json()["retried"] is False
        assert refused.json()["reason"].startswith("it completed: a completed job is not run again")
        retried = call("POST", f"/v1/jobs/{failed.id}/retry", shop_key)
        assert retried.status_code == 200, retried.text
        assert retried.json()["retried"] is True and retried.json()["state"] == "queued"
        assert retried.json()["tenant"] == "shop"
        assert retried.json()["warning"] == ("its callback URL is not kept in the catalogue (only its host, "
                                             "127.0.0.1): this run sends no callback")
        wait_for(lambda: call("GET", f"/v1/jobs/{failed.id}", shop_key).json()["state"] == "completed", 60,
                 what="the retried job to complete")
        again = call("POST", f"/v1/jobs/{failed.id}/retry", shop_key)
        assert again.status_code == 409 and again.json()["reason"].startswith("it completed")
    assert len(emulator_submissions(clean_stack)[failed.id]) == 2


@contextlib.contextmanager
def _receiver() -> Iterator[str]:
    """A callback receiver that answers 200 to every POST."""
    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook?token=secret"
    finally:
        server.shutdown()
        server.server_close()


# --- two retries at once --------------------------------------------------------------------------------


def test_concurrent_retries_of_an_archived_job_make_one(
        unmoderate: Callable[[], None], clean_stack: DevStack, env: dict[str, str]) -> None:  # noqa: F811
    from falq.producers.admin import Admin
    from falq.producers.client import Falq

    settings = _start(clean_stack)
    falq = Falq(settings)
    failed = _moderated(falq)
    cat = get_catalogue(settings)
    _archived_only(falq, cat, {failed.id})
    unmoderate()
    n = 6
    barrier = threading.Barrier(n)
    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def go() -> None:
        admin = Admin(Falq(settings))  # each its own connections, as separate CLIs or gateways would have
        barrier.wait()
        try:
            outcomes.extend(admin.retry([failed.id]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(outcomes) == n and any(o.retried for o in outcomes)
    after = falq.job(failed.id).wait(60)
    assert after.state == "completed" and after.attempts == 2
    wait_for(lambda: (cat.get_row(failed.id) or {}).get("state") == "completed", 30, what="the row to follow")
    subs = emulator_submissions(clean_stack)[failed.id]
    assert len(subs) == 2, subs  # the first attempt and exactly one retry


# --- a batch: archived members included, a chained child after its parent --------------------------------


def test_batch_retry_includes_archived_members(
        unmoderate: Callable[[], None], clean_stack: DevStack, env: dict[str, str],  # noqa: F811
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from falq.producers.bulk.batches import Batches
    from falq.producers.client import Falq

    settings = _start(clean_stack)
    lines = [{"id": "ok", "input": {"prompt": "fine"}},
             {"id": "bad", "input": {"prompt": "refused [[moderate]]"}},
             {"id": "bad-edit", "endpoint": EDIT, "input": {"prompt": "edit it", "image_urls": ["falq:bad#0"]}}]
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, out, err = _cli(["bulk", str(src), "--json", "--timeout", "60"], capsys)
    assert code == 1, err
    bid = json.loads(out)["batch_id"]
    falq = Falq(settings)
    svc = Batches(falq)
    cat = get_catalogue(settings)
    members = {job_id for _, job_id, _rec in svc.records(bid)}
    assert len(members) == 3
    _archived_only(falq, cat, members)
    rows = {i: cat.get_row(i) or {} for i in members}
    by_line = {str(r["idempotency_key"]).rsplit(":", 1)[-1]: i for i, r in rows.items()}
    assert {line: rows[i]["state"] for line, i in by_line.items()} == \
        {"ok": "completed", "bad": "failed", "bad-edit": "failed"}
    unmoderate()
    code, out, err = _cli(["batch", "retry", bid, "--failed", "--json"], capsys)
    assert code == 0, err
    assert sorted(json.loads(out)["retried"]) == sorted([by_line["bad"], by_line["bad-edit"]])
    wait_for(lambda: svc.show(bid, tree=False).batch.counts.get("completed") == 3, 60,
             what="the parent, then its child, to complete")
    child = falq.lookup(by_line["bad-edit"])
    assert child.state == "completed" and child.input_refs == [f"falq:{by_line['bad']}#0"]
    counts = svc.show(bid, tree=False).batch.counts
    assert counts.get("failed", 0) == 0 and counts["completed"] == 3


# --- the row's losses, unit by unit ----------------------------------------------------------------------


def test_lost_in_names_what_the_row_did_not_keep() -> None:
    data = "data:image/png;base64," + "A" * 100
    scrubbed = scrub_value({"prompt": "p", "image_urls": ["https://h.example/a.png?X-Amz-Signature=s", data,
                                                          "https://h.example/b.png"]})
    assert lost_in(scrubbed) == [
        ("input.image_urls[0]", "a URL whose query string (a signature) is not kept"),
        ("input.image_urls[1]", "a data URI, of which only its sha256 is kept"),
    ]
    assert lost_in({"prompt": "a fox?\u2026 not a URL", "image_urls": ["https://h.example/b.png"]}) == []


def test_refs_are_rebuilt_from_the_parents_outputs() -> None:
    img = StoredImage(index=1, bucket="b", key="falq/ep/2026/12/01/p1/1.png", size=1, sha256="0" * 64,
                      content_type="image/png", width=1, height=1)
    parent = JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image", input={"prompt": "p"}, job_id="p1")
    parent.outputs = [img]
    cut = scrub_value("http://s3.local:9000/b/falq/ep/2026/12/01/p1/1.png?X-Amz-Signature=abc")
    assert refs_from_parents([cut, "https://other.example/x.png"], {"p1": parent}) == \
        ["falq:p1#1", "https://other.example/x.png"]
    assert refs_from_parents(["falq:p1#0"], {"p1": parent}) == ["falq:p1#0"]
    assert refs_from_parents([scrub_value("http://s3.local/b/elsewhere.png?sig=1")], {"p1": parent}) is None



# --- a released chained job: its references rebuilt from its parent's outputs ----------------------------


def test_archived_chained_child_runs_again_from_its_parents_outputs(
        unmoderate: Callable[[], None], clean_stack: DevStack, env: dict[str, str],  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    from falq.producers.client import Falq

    settings = _start(clean_stack)
    falq = Falq(settings)
    parent = falq.generate("a red fox", seed=1).wait(60)
    assert parent.state == "completed"
    # The child is released (its reference became a presigned URL of the parent's S3 copy), then
    # refused by fal's content checker: the catalogue keeps that URL without its signature.
    child = falq.submit(EDIT, {"prompt": "paint it blue [[moderate]]", "image_urls": [f"falq:{parent.id}#0"]}).wait(60)
    assert child.state == "failed" and child.input_refs == [f"falq:{parent.id}#0"]
    cat = get_catalogue(settings)
    _archived_only(falq, cat, {parent.id, child.id})
    row = cat.get_row(child.id)
    assert row is not None and str(row["input"]["image_urls"][0]).endswith("?\u2026")
    unmoderate()
    code, out, err = _cli(["retry", child.id], capsys)
    assert code == 0, err  # retried: waiting for its parent's release again, or released already
    assert out.strip() == f"{child.id}: queued again (attempt 2)"
    after = falq.job(child.id).wait(60)
    assert after.state == "completed" and after.input_refs == [f"falq:{parent.id}#0"], after.errors
    assert str(after.input["image_urls"][0]).startswith("http") and "?" in after.input["image_urls"][0]
    # The parent was only read (brought back for the release), never run again.
    assert len(emulator_submissions(clean_stack)[parent.id]) == 1
    assert (cat.get_row(parent.id) or {}).get("state") == "completed"


def test_archived_job_whose_input_was_not_kept_whole_is_refused(clean_stack: DevStack, env: dict[str, str],  # noqa: F811
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from falq.producers.client import Falq

    settings = _start(clean_stack)
    falq = Falq(settings)
    png = "data:image/png;base64," + base64.b64encode(_tiny_png()).decode()
    rec = falq.submit(EDIT, {"prompt": "refused [[moderate]]", "image_urls": [png]}).wait(60)
    assert rec.state == "failed"
    cat = get_catalogue(settings)
    _archived_only(falq, cat, {rec.id})
    code, out, err = _cli(["retry", rec.id], capsys)
    assert code == 1, err
    assert out.strip() == (f"{rec.id}: not retried: its input is not kept whole in the catalogue "
                           "(input.image_urls[0]: a data URI, of which only its sha256 is kept); "
                           "submit it again as a new job with its full input")
    assert not falq.store.exists(rec.id) and len(emulator_submissions(clean_stack)[rec.id]) == 1


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (384, 384), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()
