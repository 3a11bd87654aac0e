"""A job cancelled while fal ran it, whose request fal completed anyway (billed): its images are
its result everywhere a result is served, live and once only the catalogue holds it.

Real parts: workers, the fal emulator over HTTP ignoring cancels of running requests (as fal's
own e2e test_app_cancellation shows a "normal app" does), Redis, S3 (moto), the gateway over HTTP
(REST, fal's queue protocol, the console) and the catalogue on PostgreSQL and SQLite.

Checked: ``JobHandle.result()`` returns the images marked ``job_state == "cancelled"``; the REST
record carries ``result`` with ``state`` still ``cancelled`` and ``fal_outcome == "finished"``;
fal's status route says COMPLETED without an error and its result route answers 200 with the
images (live fal answers a request it completed that way); a job cancelled before fal ran it
still raises / answers 499. The catalogue row keeps ``fal_outcome``, and every reader of the
archived job (``Falq``, ``falq jobs``, REST listing and record, fal's result route, the console's
job page) serves or shows the same.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from falq.shared.catalogue.store import get_catalogue
from falq.shared.errors import JobNotFound
from falq.shared.storage.s3 import Storage
from falq.testing.stack import DevStack
from tests.conftest import wait_for
from tests.system.test_catalogue import Db, db  # noqa: F401 - the fixture, per dialect
from tests.system.test_catalogue_end_to_end import env  # noqa: F401 - the stack's env with this test's database
from tests.system.test_money_safety_round2 import DEFAULTS, _fal_request

APP = "fal-ai/qwen-image-2"
KEY = "falq-cancelled-kept-key-0123456789abcdef"
AUTH = {"Authorization": f"Key {KEY}"}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from falq.cli.main import main

    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().out


def _signed_in(base: str) -> httpx.Client:
    c = httpx.Client(base_url=base, timeout=10)  # plain http: cookies without Secure
    form = c.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None, form.text[:300]
    assert c.post("/ui/login", data={"key": KEY, "csrf": token.group(1)}).status_code == 303
    return c


def _gateway_serves_it(base: str, storage: Storage, kept: Any, plain: Any) -> None:
    """REST and fal's protocol answer the kept output of ``kept`` and fal's 499 for ``plain``."""
    rest = httpx.get(f"{base}/v1/jobs/{kept.id}", headers=AUTH, timeout=10).json()
    assert rest["state"] == "cancelled" and rest["fal_outcome"] == "finished" and "error_type" not in rest
    assert [i["s3"]["key"] for i in rest["result"]["images"]] == [o.key for o in kept.outputs]
    status = httpx.get(f"{base}/{APP}/requests/{kept.id}/status", headers=AUTH, timeout=10)
    assert status.status_code == 200 and status.json()["status"] == "COMPLETED" and "error" not in status.json()
    result = httpx.get(f"{base}/{APP}/requests/{kept.id}", headers=AUTH, timeout=10)
    assert result.status_code == 200, result.text
    assert [i["s3"]["sha256"] for i in result.json()["images"]] == [o.sha256 for o in kept.outputs]
    assert httpx.get(result.json()["images"][0]["url"], timeout=10).content == \
        storage.get_bytes(kept.outputs[0].key)
    rest_plain = httpx.get(f"{base}/v1/jobs/{plain.id}", headers=AUTH, timeout=10).json()
    assert rest_plain["state"] == "cancelled" and "result" not in rest_plain
    assert rest_plain["error_type"] == "client_cancelled"
    refused = httpx.get(f"{base}/{APP}/requests/{plain.id}", headers=AUTH, timeout=10)
    assert refused.status_code == 499 and refused.headers["x-fal-error-type"] == "client_cancelled"


@pytest.mark.timeout(240)
def test_the_output_of_a_cancel_fal_finished_is_served_live_and_archived(
        clean_stack: DevStack, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from falq.gateway.server import GatewayServer
    from falq.producers.client import Falq

    settings = clean_stack.settings()
    storage = Storage(settings)
    storage.ensure_bucket()
    falq = Falq(settings)
    # Cancelled before any worker ran it: no request at fal, nothing kept.
    plain = falq.generate("never sent to fal", seed=1)
    falq.cancel(plain.id)
    clean_stack.emu.configure(latency="fixed:10", cancel_ignored_share=1.0, tiny_images=True)
    clean_stack.start_worker(concurrency=4, env=DEFAULTS)
    job = falq.generate("cancelled too late", seed=3, metadata={"case": "kept"})
    wait_for(lambda: job.status() == "in_progress", 30, what="in progress")
    job.cancel()
    wait_for(lambda: _fal_request(clean_stack, job.record().request_id)["cancelled"], 12, what="the cancel at fal")
    rec = job.wait(60)
    assert rec.state == "cancelled" and rec.fal_outcome == "finished" and rec.outputs, (rec.state, rec.errors)
    assert _fal_request(clean_stack, rec.request_id)["cancel_ignored"]  # it reached fal, which finished it
    assert rec.cost_billed is not None and rec.cost_billed > 0

    # The producer API: the images, marked as the kept output of a cancel.
    images = job.result()
    assert [(i["key"], i["job_state"], i["fal_outcome"]) for i in images] == \
        [(o.key, "cancelled", "finished") for o in rec.outputs]
    assert httpx.get(images[0]["presigned_url"], timeout=10).content == storage.get_bytes(images[0]["key"])
    with pytest.raises(JobNotFound, match="has no result: it is cancelled"):
        plain.result()

    with GatewayServer(settings, api_keys=[KEY]) as gw:
        _gateway_serves_it(gw.url, storage, rec, plain.record())

        # Archived: the row keeps fal_outcome, Redis forgets the record, every reader still serves it.
        cat = get_catalogue(settings)
        wait_for(lambda: all(cat.get_row(i) is not None for i in (rec.id, plain.id)), 30, what="archived")
        wait_for(lambda: not any(falq.store.exists(i) for i in (rec.id, plain.id)), 15, what="Redis forgot them")
        row = cat.get_row(rec.id)
        assert row is not None and row["fal_outcome"] == "finished" and row["state"] == "cancelled"
        assert (cat.get_row(plain.id) or {}).get("fal_outcome", "x") is None
        archived = falq.job(rec.id).record()
        assert archived.kept_after_cancel and archived.outputs == rec.outputs
        assert [i["job_state"] for i in falq.job(rec.id).result()] == ["cancelled"]
        with pytest.raises(JobNotFound):
            falq.job(plain.id).result()

        code, out = _cli(["jobs", "--state", "cancelled", "--json"], capsys)
        assert code == 0 and {(j["id"], j["fal_outcome"]) for j in json.loads(out)} == \
            {(rec.id, "finished"), (plain.id, None)}
        code, out = _cli(["jobs", "--state", "cancelled"], capsys)
        assert code == 0 and "cancelled (fal finished)" in out and out.count("(fal ") == 1

        listing = httpx.get(f"{gw.url}/v1/jobs", params={"state": "cancelled"}, headers=AUTH, timeout=10).json()
        assert listing["history"] == "included"
        assert {(j["id"], j["fal_outcome"]) for j in listing["jobs"]} == {(rec.id, "finished"), (plain.id, None)}
        _gateway_serves_it(gw.url, storage, rec, cat.get(plain.id))

        ui = _signed_in(gw.url)
        page = ui.get(f"/ui/jobs/{rec.id}")
        assert page.status_code == 200 and 'id="fal-outcome"' in page.text and "fal finished" in page.text
        assert f"/ui/jobs/{rec.id}/image/{rec.outputs[0].index}" in page.text  # its images are listed
        assert ui.get(f"/ui/jobs/{rec.id}/image/{rec.outputs[0].index}").content == \
            storage.get_bytes(rec.outputs[0].key)
        grid = ui.get("/ui/gallery/grid", params={"state": "cancelled"})
        assert grid.status_code == 200 and "cancelled · fal finished" in grid.text
        ui.close()
