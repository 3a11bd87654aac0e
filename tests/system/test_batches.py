"""Batches with real workers: every ``falq bulk`` run is a batch; ``falq batch ...`` and
``/v1/batches`` show, cancel, retry and export it; a dry run prices it; chained lines
(``falq:LINE_ID#N``) run parents first and cycles are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from falq.testing.stack import ROOT, DevStack
from tests.conftest import emulator_submissions, wait_for

T2I = "fal-ai/qwen-image-2/text-to-image"
EDIT = "fal-ai/qwen-image-2/edit"


def _cli(stack: DevStack, *args: str, timeout: float = 120, subprocess_: bool = False) -> tuple[int, str, str]:
    """Run ``falq ARGS`` on the stack: in this process (click's runner, the stack's environment),
    or with ``subprocess_`` as its own process (what a user runs)."""
    if subprocess_:
        env = {**os.environ, **stack.env()}
        proc = subprocess.run([sys.executable, "-m", "falq.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
        return proc.returncode, proc.stdout, proc.stderr
    from click.testing import CliRunner

    from falq.cli.main import main
    from falq.shared.settings import reset_settings

    reset_settings()
    with CliRunner().isolation(env=stack.env()) as streams:
        code = main(list(args))
        out, err = streams[0].getvalue().decode(), streams[1].getvalue().decode()
    reset_settings()
    assert "Traceback" not in err, err
    return code, out, err


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pipeline(n: int, tag: str) -> list[dict[str, Any]]:
    """n generates, each with two edits of its image (a real generate -> edit pipeline)."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        rows.append({"id": f"{tag}-shot-{i}", "endpoint": T2I, "input": {"prompt": f"product shot {i}", "seed": i}})
        for variant in ("winter", "beach"):
            rows.append({"id": f"{tag}-{variant}-{i}", "endpoint": EDIT,
                         "input": {"prompt": f"put it on a {variant} background",
                                   "image_urls": [f"falq:{tag}-shot-{i}#0"]}})
    return rows


def _batch(stack: DevStack, batch_id: str, *, cli: bool = False) -> dict[str, Any]:
    """``falq batch show ID --json`` (``cli``), or the same service in this process (faster)."""
    if cli:
        code, out, err = _cli(stack, "batch", "show", batch_id, "--json")
        assert code == 0, err
        return json.loads(out)  # type: ignore[no-any-return]
    from falq.producers import Falq
    from falq.producers.bulk.batches import Batches

    return Batches(Falq(stack.settings())).show(batch_id).as_json()


def test_chained_bulk_file_is_a_batch_with_progress_tree_results_and_rerun_joins(
        clean_stack: DevStack, tmp_path: Path) -> None:
    clean_stack.emu.configure(tiny_images=True, latency="fixed:0.2")
    clean_stack.start_worker(concurrency=50)
    src = _write(tmp_path / "pipeline.jsonl", _pipeline(4, "p"))
    code, out, err = _cli(clean_stack, "bulk", str(src), "--json", "--timeout", "90", subprocess_=True)
    assert code == 0, (out[-2000:], err[-2000:])
    doc = json.loads(out)
    bid = doc["batch_id"]
    b = _batch(clean_stack, bid, cli=True)
    assert b["total"] == 12 and b["counts"]["completed"] == 12 and b["done"] == 12
    assert b["status"] == "completed" and b["finished_at"] is not None
    assert b["source"]["file_name"] == "pipeline.jsonl" and len(b["source"]["sha256"]) == 64
    # at the account's price from the emulator's pricing API (0.03), not the list price (0.035)
    assert b["spend"]["estimated_usd"] == pytest.approx(12 * 0.03)
    assert b["spend"]["billed_usd"] == pytest.approx(12 * 0.03)
    assert [lv["total"] for lv in b["tree"]] == [4, 8]
    assert b["tree"][1]["counts"]["completed"] == 8
    # Results: an output file and an error file.
    res = tmp_path / "results.jsonl"
    code, out, err = _cli(clean_stack, "batch", "results", bid, "--out", str(res))
    assert code == 0, err
    rows = [json.loads(x) for x in res.read_text().splitlines()]
    assert len(rows) == 12 and all(r["state"] == "completed" and r["outputs"] for r in rows)
    by_id = {r["id"]: r for r in rows}
    assert by_id["p-winter-2"]["parents"] == [by_id["p-shot-2"]["job_id"]]
    assert (tmp_path / "results.errors.jsonl").read_text() == ""
    # Every edit ran on its own generate's S3 copy; every job went to fal once.
    subs = emulator_submissions(clean_stack)
    assert all(len(subs[r["job_id"]]) == 1 for r in rows)
    shot_key = by_id["p-shot-2"]["outputs"][0]["key"]
    assert shot_key.split("/")[-1] in subs[by_id["p-beach-2"]["job_id"]][0]["input"]["image_urls"][0]
    # Rerunning the same file joins the same batch: nothing new.
    code, out, err = _cli(clean_stack, "bulk", str(src), "--json", "--timeout", "30")
    assert code == 0, err
    again = json.loads(out)
    assert again["batch_id"] == bid and again["new"] == 0
    assert _batch(clean_stack, bid)["total"] == 12
    code, out, _ = _cli(clean_stack, "batches", "--json")
    assert [x["id"] for x in json.loads(out)] == [bid]


def test_dry_run_prices_by_endpoint_and_over_budget_needs_yes(clean_stack: DevStack, tmp_path: Path) -> None:
    rows = _pipeline(3, "d")
    rows.append({"id": "pro", "endpoint": "fal-ai/qwen-image-2/pro/text-to-image",
                 "input": {"prompt": "pro shot", "num_images": 2}})
    src = _write(tmp_path / "priced.jsonl", rows)
    code, out, err = _cli(clean_stack, "bulk", str(src), "--dry-run", "--json")
    assert code == 0, err
    p = json.loads(out)["price"]
    assert p["images"] == 3 + 6 + 2 and p["jobs"] == 10
    assert p["by_endpoint"][T2I]["images"] == 3 and p["by_endpoint"][EDIT]["images"] == 6
    # the account's prices (the emulator's pricing API: 0.03 and 0.065; list: 0.035 and 0.075)
    assert p["by_endpoint"]["fal-ai/qwen-image-2/pro/text-to-image"]["usd"] == pytest.approx(2 * 0.065)
    assert p["estimated_usd"] == pytest.approx(9 * 0.03 + 2 * 0.065)
    assert p["remaining_usd"] is None and p["exceeds_budget"] is False
    code, _, err = _cli(clean_stack, "bulk", str(src), "--dry-run")
    assert "estimated cost: $0.40 for 11 image(s) in 10 job(s)" in err
    # A budget smaller than the estimate: refused without --yes (no stdin here), nothing enqueued.
    code, _, err = _cli(clean_stack, "budget", "--set", "0.10")
    assert code == 0, err
    code, out, err = _cli(clean_stack, "bulk", str(src), "--no-wait")
    assert code == 2 and "exceeds what is left of the budget" in err and "--yes" in err
    code, out, _ = _cli(clean_stack, "batches", "--json")
    assert json.loads(out) == []
    code, out, err = _cli(clean_stack, "bulk", str(src), "--no-wait", "--yes", "--json")
    assert code == 0, err
    assert _batch(clean_stack, json.loads(out)["batch_id"])["total"] == 10


def test_batch_cancel_retry_and_exact_counts(clean_stack: DevStack, tmp_path: Path) -> None:
    clean_stack.emu.configure(tiny_images=True, latency="fixed:0.2")
    rows = [{"id": f"ok-{i}", "input": {"prompt": f"fine {i}"}} for i in range(3)]
    rows.append({"id": "bad", "input": {"prompt": "refused [[moderate]]"}})
    rows.append({"id": "bad-edit", "endpoint": EDIT, "input": {"prompt": "edit it", "image_urls": ["falq:bad#0"]}})
    src = _write(tmp_path / "mixed.jsonl", rows)
    clean_stack.start_worker(concurrency=20)
    code, out, err = _cli(clean_stack, "bulk", str(src), "--json", "--timeout", "60")
    assert code == 1, err  # some failed
    bid = json.loads(out)["batch_id"]
    b = _batch(clean_stack, bid)
    assert b["counts"]["completed"] == 3 and b["counts"]["failed"] == 2 and b["total"] == 5
    code, out, _ = _cli(clean_stack, "batch", "results", bid, "--out", str(tmp_path / "r.jsonl"))
    assert code == 1
    errs = {r["id"]: r for r in map(json.loads, (tmp_path / "r.errors.jsonl").read_text().splitlines())}
    assert errs["bad"]["moderated"] and errs["bad-edit"]["error"]["type"] == "parent_failed"
    # Retry the moderated one (the emulator still refuses it): its child waits again, then fails again.
    code, out, err = _cli(clean_stack, "batch", "retry", bid, "--moderated", "--json")
    assert code == 0, err
    assert json.loads(out)["count"] == 1
    wait_for(lambda: _batch(clean_stack, bid)["counts"]["failed"] == 2 and _batch(clean_stack, bid)["done"] == 5,
             timeout=60, what="retried jobs end")
    subs = emulator_submissions(clean_stack)
    bad = errs["bad"]["job_id"]
    assert len(subs[bad]) == 2
    # Cancel: a second batch enqueued while no worker runs.
    clean_stack.stop_workers(kill=True)
    src2 = _write(tmp_path / "later.jsonl", _pipeline(2, "c"))
    code, out, err = _cli(clean_stack, "bulk", str(src2), "--no-wait", "--json")
    bid2 = json.loads(out)["batch_id"]
    b2 = _batch(clean_stack, bid2)
    assert b2["counts"]["queued"] == 2 and b2["counts"]["waiting"] == 4
    code, out, err = _cli(clean_stack, "batch", "cancel", bid2, "--json")
    assert code == 0, err
    b2 = _batch(clean_stack, bid2)
    assert b2["counts"]["cancelled"] == 6 and b2["done"] == 6
    # The kept counts equal a recount from the records, for both batches.
    from falq.producers import Falq
    from falq.shared.batches.store import BatchStore

    falq = Falq(clean_stack.settings())
    store = BatchStore(falq.redis, prefix=falq.settings.key_prefix)
    for batch_id in (bid, bid2):
        kept = store.get(batch_id).counts
        assert kept == store.recount(batch_id, falq.store.get_many)


def test_cycle_and_bad_references_are_refused_and_nothing_enqueued(clean_stack: DevStack, tmp_path: Path) -> None:
    rows = [
        {"id": "a", "endpoint": EDIT, "input": {"prompt": "a", "image_urls": ["falq:b#0"]}},
        {"id": "b", "endpoint": EDIT, "input": {"prompt": "b", "image_urls": ["falq:a#0"]}},
        {"id": "c", "endpoint": EDIT, "input": {"prompt": "c", "image_urls": ["falq:nowhere#0"]}},
        {"id": "d", "input": {"prompt": "fine"}},
        {"id": "e", "endpoint": EDIT, "input": {"prompt": "e", "image_urls": ["falq:d#3"]}},
    ]
    src = _write(tmp_path / "cycle.jsonl", rows)
    code, out, err = _cli(clean_stack, "bulk", str(src), "--json")
    assert code == 2, err
    errors = json.loads(out)["errors"]
    by_line = {e["line"]: e for e in errors}
    assert "cycle" in by_line[1]["message"] and by_line[1]["field"] == "input.image_urls"
    assert "cycle" in by_line[2]["message"]
    assert by_line[3]["field"] == "input.image_urls[0]" and "nowhere" in by_line[3]["message"]
    assert by_line[5]["field"] == "input.image_urls[0]" and "N must be below 1" in by_line[5]["message"]
    import redis

    r = redis.Redis.from_url(clean_stack.redis.url)
    assert not r.keys("falq:job:*") and not r.keys("falq:batch*")


def test_gateway_batches_upload_progress_results_and_tenant_isolation(clean_stack: DevStack) -> None:
    from falq.gateway import GatewayServer

    clean_stack.emu.configure(tiny_images=True, latency="fixed:0.2")
    clean_stack.start_worker(concurrency=30)
    key = "falq-batches-key-0123456789"
    auth = {"Authorization": f"Key {key}"}
    body = "".join(json.dumps(r) + "\n" for r in _pipeline(2, "g")).encode()
    with GatewayServer(clean_stack.settings(), api_keys=[key]) as gw:
        bad = httpx.post(f"{gw.url}/v1/batches", content=b'{"input": {"prompt": ""}}\n', headers=auth, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == ["body", "line 1"]
        resp = httpx.post(f"{gw.url}/v1/batches?name=spring", content=body, headers=auth, timeout=30)
        assert resp.status_code == 201, resp.text
        b = resp.json()
        assert b["name"] == "spring" and b["total"] == 6 and b["jobs"] == 6
        again = httpx.post(f"{gw.url}/v1/batches?name=spring", content=body, headers=auth, timeout=30)
        assert again.status_code == 200 and again.json()["id"] == b["id"] and again.json()["total"] == 6
        done = wait_for(lambda: (x := httpx.get(f"{gw.url}/v1/batches/{b['id']}", headers=auth).json())["done"] == 6
                        and x, timeout=60, what="batch done")
        assert done["counts"]["completed"] == 6 and [lv["total"] for lv in done["tree"]] == [2, 4]
        res = httpx.get(f"{gw.url}/v1/batches/{b['id']}/results", headers=auth)
        assert len(res.text.splitlines()) == 6
        assert httpx.get(f"{gw.url}/v1/batches/{b['id']}/errors", headers=auth).text == ""
        listed = httpx.get(f"{gw.url}/v1/batches", headers=auth).json()["data"]
        assert [x["id"] for x in listed] == [b["id"]]
        assert httpx.get(f"{gw.url}/v1/batches/bnope", headers=auth).status_code == 404
    # Another tenant sees neither the batch nor it in its list (the service the routes use).
    from falq.producers import Falq
    from falq.producers.bulk.batches import Batches
    from falq.shared.errors import BatchNotFound

    other = Batches(Falq(clean_stack.settings()), tenant="other")
    with pytest.raises(BatchNotFound):
        other.show(b["id"])
    assert other.recent() == []
