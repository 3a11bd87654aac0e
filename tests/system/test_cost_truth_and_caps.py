"""Cost truth, quotes, spend caps and priority with real workers against the emulator over HTTP,
with falq's default settings (issue 23 points 3, 6 and 7).

The emulator's platform API answers an ACCOUNT price unlike the list price (0.03 vs 0.035 per
standard image), bills ``x-fal-billable-units`` x that price for every result it hands out, and
shows its billed total at ``/_emulator/billing``: falq's spend must equal it to the micro-dollar.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from falq.producers.client import JobRequest
from falq.testing.stack import DevStack
from tests.conftest import emulator_submissions, wait_for
from tests.system.test_batches import _cli, _write

T2I = "fal-ai/qwen-image-2/text-to-image"
EDIT = "fal-ai/qwen-image-2/edit"
PRO = "fal-ai/qwen-image-2/pro/text-to-image"
ACCOUNT, LIST = 0.03, 0.035
ADMIN = "falq-emulator-admin"
FAST = {"tiny_images": True, "latency": "fixed:0.2", "log_steps": 2}


def billed(stack: DevStack) -> dict[str, Any]:
    return httpx.get(f"{stack.emu.url}/_emulator/billing", timeout=10).json()  # type: ignore[no-any-return]


def records(falq: Any, ids: list[str]) -> list[Any] | None:
    recs = falq.store.get_many(ids)
    return recs if all(r is not None and r.terminal for r in recs) else None


def priorities(stack: DevStack) -> dict[str, str]:
    """falq job id -> the X-Fal-Queue-Priority its submission carried at the emulator."""
    out = {}
    for job, reqs in emulator_submissions(stack).items():
        headers = {k.lower(): v for k, v in (reqs[-1].get("headers") or {}).items()}
        out[job] = headers.get("x-fal-queue-priority", "")
    return out


@pytest.mark.timeout(120)
def test_jobs_are_billed_at_the_accounts_price_from_fals_pricing_api_to_the_cent(
        clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(**FAST)
    clean_stack.start_worker()
    reqs = [JobRequest(T2I, {"prompt": f"fox {i}", "seed": i, "num_images": 1 + i % 3}, "bulk") for i in range(5)]
    reqs.append(JobRequest(PRO, {"prompt": "pro fox", "seed": 9, "num_images": 2}, "interactive"))
    ids = [j for j, _ in falq.submit_many(reqs)]
    recs = wait_for(lambda: records(falq, ids), 90, 0.3, "6 jobs")
    assert [r.state for r in recs] == ["completed"] * 6
    for rec, req in zip(recs, reqs, strict=True):
        n = req.input["num_images"]
        price = 0.065 if req.endpoint == PRO else ACCOUNT
        assert rec.price_source == "fal_pricing_api" and rec.unit_price == price
        assert rec.billable_units == n and rec.cost_source == "fal_billable_units"
        assert rec.cost_billed == round(n * price, 6) and rec.cost_estimate == round(n * price, 6)
    fal = billed(clean_stack)
    assert fal["requests_billed"] == 6
    assert round(sum(r.cost_billed for r in recs) * 1e6) == fal["billed_total_micro"]
    assert fal["billed_total_usd"] != round(sum(r.input["num_images"] for r in recs[:5]) * LIST + 2 * 0.075, 6)


@pytest.mark.timeout(120)
def test_an_unreachable_pricing_api_falls_back_to_list_prices_with_a_warning_and_says_so(
        clean_stack: DevStack, falq: Any, caplog: pytest.LogCaptureFixture) -> None:
    clean_stack.emu.configure(**FAST, platform_down=True)
    clean_stack.start_worker()
    job = falq.submit(T2I, {"prompt": "fallback fox", "num_images": 2}, lane="bulk").id
    rec = wait_for(lambda: (x := falq.store.get(job)) is not None and x.terminal and x, 60, 0.3, "job")
    assert rec.state == "completed"
    assert (rec.price_source, rec.unit_price, rec.cost_billed) == ("list_price_fallback", LIST, 2 * LIST)
    # The process that asked fal (the producer here, or a worker) warned, without the key.
    log = "".join(p.read_text(errors="replace") for p in clean_stack.workdir.glob("worker-*.log")) + caplog.text
    assert "pricing API answered HTTP 503" in log and "list prices" in log
    from falq.testing.stack import TEST_FAL_KEY

    assert TEST_FAL_KEY not in log


def _bulk_rows(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(n):
        rows.append({"id": f"shot-{i}", "endpoint": T2I, "input": {"prompt": f"shot {i}", "seed": i,
                                                                   "num_images": 2}})
        rows.append({"id": f"edit-{i}", "endpoint": EDIT,
                     "input": {"prompt": "at night", "image_urls": [f"falq:shot-{i}#1"], "num_images": 3}})
    return rows


@pytest.mark.timeout(240)
def test_bulk_spend_equals_the_emulators_bill_report_spend_and_reconcile(
        clean_stack: DevStack, tmp_path: Path) -> None:
    clean_stack.emu.configure(**FAST)
    clean_stack.start_worker()
    src = _write(tmp_path / "run.jsonl", _bulk_rows(3))
    code, out, err = _cli(clean_stack, "bulk", str(src), "--json", "--timeout", "120", subprocess_=True)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["price"]["price_source"] == "fal_pricing_api"
    assert doc["price"]["estimated_usd"] == round(3 * (2 + 3) * ACCOUNT, 6)
    fal = billed(clean_stack)
    assert fal["requests_billed"] == 6 and fal["billed_total_micro"] == round(15 * ACCOUNT * 1e6)
    # report spend: billed and estimated side by side, from the catalogue (once every job is archived)
    from falq.producers import Falq

    falq = Falq(clean_stack.settings())
    wait_for(lambda: falq.catalogue is not None and falq.catalogue.count() == 6, 60, 0.5, "6 jobs archived")
    code, out, err = _cli(clean_stack, "report", "spend", "--by", "batch", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 1 and rows[0]["batch"] == doc["batch_id"]
    assert round(rows[0]["billed"] * 1e6) == fal["billed_total_micro"] == round(rows[0]["estimate"] * 1e6)
    code, out, _ = _cli(clean_stack, "report", "spend", "--by", "day")
    assert "estimate" in out and "billed" in out and f"{fal['billed_total_usd']:,.4f}" in out
    # reconcile: needs the admin key, says so plainly without it
    code, out, err = _cli(clean_stack, "report", "reconcile", "--since", "1d")
    assert code == 2 and "FAL_ADMIN_KEY" in err
    clean_stack.extra_env["FAL_ADMIN_KEY"] = ADMIN
    code, out, err = _cli(clean_stack, "report", "reconcile", "--since", "1d")
    assert code == 0, out + err
    assert "arrive with a delay" in out and "no differences" in out and ADMIN not in out + err
    # A tampered record is a difference, named by its request id
    from falq.shared.catalogue.schema import jobs

    victim = falq.catalogue.search_rows(__import__("falq.shared.catalogue.store", fromlist=["x"]).CatalogueQuery(
        limit=1))[0]
    with falq.catalogue.engine.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.id == victim["id"]).values(cost_billed=victim["cost_billed"] + 0.01))
    falq.redis.delete(falq.store.keys.job(victim["id"]))  # the catalogue's copy is the one left
    code, out, err = _cli(clean_stack, "report", "reconcile", "--since", "1d", "--format", "json")
    assert code == 1, err
    rep = json.loads(out)
    assert [d["request_id"] for d in rep["differences"]] == [victim["request_id"]]
    assert rep["differences"][0]["kind"] == "cost" and "delay" in rep["note"]
    clean_stack.extra_env.pop("FAL_ADMIN_KEY")


@pytest.mark.timeout(120)
def test_dry_run_quotes_num_images_and_chained_edits_at_account_prices_and_enqueues_nothing(
        clean_stack: DevStack, tmp_path: Path) -> None:
    import redis

    src = _write(tmp_path / "quote.jsonl", _bulk_rows(4))
    code, out, err = _cli(clean_stack, "bulk", str(src), "--dry-run", "--json", "--max-spend", "0.5")
    assert code == 0, err
    price = json.loads(out)["price"]
    assert price["images"] == 4 * 5 and price["jobs"] == 8 and price["chained_jobs"] == 4
    assert price["estimated_usd"] == round(20 * ACCOUNT, 6) and price["price_source"] == "fal_pricing_api"
    assert price["max_spend_usd"] == 0.5 and price["over_max_spend"] is True
    code, _, err = _cli(clean_stack, "bulk", str(src), "--dry-run")
    assert code == 0 and "$0.60" in err and "4 of them chained edits" in err
    r = redis.Redis.from_url(clean_stack.redis.url)
    assert not list(r.scan_iter("falq:job:*")) and not list(r.scan_iter("falq:batch:*"))
    assert clean_stack.emu.requests()["requests"] == []
    # The gateway quotes the same upload the same way, and refuses a bad cap naming the field.
    from falq.gateway import GatewayServer

    key = "falq-quote-key-0123456789"
    auth = {"Authorization": f"Key {key}"}
    with GatewayServer(clean_stack.settings(), api_keys=[key]) as gw:
        resp = httpx.post(f"{gw.url}/v1/batches?dry_run=true", content=src.read_bytes(), headers=auth, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["dry_run"] is True and resp.json()["price"]["estimated_usd"] == price["estimated_usd"]
        for bad in ("-1", "nan", "inf", "abc"):
            resp = httpx.post(f"{gw.url}/v1/batches?max_spend={bad}", content=src.read_bytes(), headers=auth,
                              timeout=30)
            assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "max_spend"]
    assert not list(r.scan_iter("falq:job:*"))
    code, _, err = _cli(clean_stack, "bulk", str(src), "--max-spend", "-3")
    assert code == 2 and "--max-spend" in err


@pytest.mark.timeout(240)
def test_a_batch_spend_cap_pauses_the_rest_nothing_past_it_is_submitted_and_raising_it_resumes(
        clean_stack: DevStack, tmp_path: Path) -> None:
    clean_stack.emu.configure(**FAST)
    clean_stack.start_worker()
    rows = [{"endpoint": T2I, "input": {"prompt": f"capped {i}", "seed": i, "num_images": 1}} for i in range(6)]
    src = _write(tmp_path / "capped.jsonl", rows)
    code, out, err = _cli(clean_stack, "bulk", str(src), "--max-spend", "0.09", "--no-wait", "--json")
    assert code == 0, err
    bid = json.loads(out)["batch_id"]
    from falq.producers import Falq
    from falq.producers.bulk.batches import Batches

    svc = Batches(Falq(clean_stack.settings()))

    def capped() -> dict[str, Any] | None:
        b = svc.show(bid).as_json()
        return b if b["counts"]["completed"] == 3 and b["spend_cap"]["waiting"] == 3 else None

    b = wait_for(capped, 90, 0.5, "3 done, 3 paused at the cap")
    assert b["status"] == "paused" and b["paused_reason"].startswith("batch_spend_cap")
    assert b["spend_cap"]["max_spend_usd"] == 0.09 and b["spend_cap"]["billed_usd"] == 0.09
    recs = [r for _, _, r in svc.records(bid)]
    assert sorted(str(r.paused) for r in recs if not r.terminal) == ["batch_spend_cap"] * 3
    # Jobs waiting at the cap hold no dispatch room: with room for 2 at fal, other work still runs.
    from falq.shared.limits.store import write_config

    falq = Falq(clean_stack.settings())
    write_config(falq.redis, "falq", {"max_outstanding": "2"})
    others = [falq.submit(T2I, {"prompt": f"other {lane}"}, lane=lane).id for lane in ("interactive", "bulk")]
    assert [r.state for r in wait_for(lambda: records(falq, others), 60, 0.3, "other work")] == ["completed"] * 2
    write_config(falq.redis, "falq", {"max_outstanding": "100000"})
    time.sleep(12)  # more than a pause poll: still nothing of the batch past the cap
    subs = emulator_submissions(clean_stack)
    assert len([j for j in subs if j not in others]) == 3 and billed(clean_stack)["billed_total_micro"] == 150_000
    code, out, err = _cli(clean_stack, "batch", "set-cap", bid, "none-such")
    assert code == 2 and "max_spend" in err
    # Raised over the gateway (PATCH) by one job's worth: exactly one more goes.
    from falq.gateway import GatewayServer

    key = "falq-cap-key-0123456789"
    with GatewayServer(clean_stack.settings(), api_keys=[key]) as gw:
        url, auth = f"{gw.url}/v1/batches/{bid}", {"Authorization": f"Key {key}"}
        for bad in (-1, "nan", "1e99", True):
            resp = httpx.patch(url, json={"max_spend": bad}, headers=auth, timeout=30)
            assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "max_spend"], resp.text
        resp = httpx.patch(url, json={"max_spend": 0.12}, headers=auth, timeout=30)
        assert resp.status_code == 200 and resp.json()["spend_cap"]["max_spend_usd"] == 0.12, resp.text
    wait_for(lambda: svc.show(bid).as_json()["counts"]["completed"] == 4, 60, 0.5, "one more after PATCH")
    time.sleep(12)
    assert len(emulator_submissions(clean_stack)) == 4 + 2
    code, out, err = _cli(clean_stack, "batches", "set-cap", bid, "0.18", "--json")
    assert code == 0, err
    done = wait_for(lambda: (x := svc.show(bid).as_json())["counts"]["completed"] == 6 and x, 90, 0.5, "resumed")
    assert done["status"] == "completed" and done["spend_cap"]["billed_usd"] == 0.18
    assert len(emulator_submissions(clean_stack)) == 6 + 2 and billed(clean_stack)["billed_total_micro"] == 240_000
    code, out, err = _cli(clean_stack, "batches", "--json")
    assert code == 0 and [b["id"] for b in json.loads(out)] == [bid]


@pytest.mark.timeout(180)
def test_priority_is_normal_for_both_lanes_and_low_only_when_chosen(
        clean_stack: DevStack, falq: Any, tmp_path: Path) -> None:
    clean_stack.emu.configure(**FAST)
    clean_stack.start_worker()
    a = falq.submit(T2I, {"prompt": "interactive"}, lane="interactive").id
    b = falq.submit(T2I, {"prompt": "bulk"}, lane="bulk").id
    code, _, err = _cli(clean_stack, "tenants", "add", "slow", "--priority", "low")
    assert code == 0, err
    code, _, err = _cli(clean_stack, "tenants", "add", "wrong", "--priority", "lowest")
    assert code == 2 and "priority" in err
    c = falq.submit(T2I, {"prompt": "tenant low"}, lane="interactive", tenant="slow").id
    src = _write(tmp_path / "low.jsonl", [{"input": {"prompt": "batch low"}}])
    code, out, err = _cli(clean_stack, "bulk", str(src), "--priority", "low", "--json", "--timeout", "60",
                          subprocess_=True)
    assert code == 0, err
    wait_for(lambda: records(falq, [a, b, c]), 60, 0.3, "3 jobs")
    seen = priorities(clean_stack)
    assert seen[a] == "normal" and seen[b] == "normal" and seen[c] == "low"
    batch_job = json.loads(out)
    d = next(j for j in seen if j not in (a, b, c))
    assert seen[d] == "low", batch_job
    # Per lane, in settings: FALQ_FAL_PRIORITY_BULK=low
    clean_stack.stop_workers(kill=True)
    clean_stack.start_worker(env={"FALQ_FAL_PRIORITY_BULK": "low"})
    e = falq.submit(T2I, {"prompt": "lane low"}, lane="bulk").id
    f = falq.submit(T2I, {"prompt": "lane normal"}, lane="interactive").id
    wait_for(lambda: records(falq, [e, f]), 60, 0.3, "2 jobs")
    seen = priorities(clean_stack)
    assert seen[e] == "low" and seen[f] == "normal"


@pytest.mark.timeout(300)
def test_the_spend_truth_scenario_prints_falq_spend_beside_the_emulators_bill(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from falq.testing.stack import ROOT

    proc = subprocess.run([sys.executable, "-m", "falq.ops.spend_truth", "--jobs", "15", "--cancel", "2",
                           "--workers", "1", "--json"], cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["equal"] is True and out["falq_spend_usd"] == out["fal_billed_usd"] > 0
    assert out["price_sources"] == ["fal_pricing_api"] and sum(out["states"].values()) == 15
