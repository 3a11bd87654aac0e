"""Global limits end to end: real Redis, the emulator, several worker processes sharing one key.

Rates are measured where fal would count them: the emulator's own log of arrivals.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from falq.ops.bench_limiter import max_in_window, mean_rate, wait_ready
from falq.producers.client import TEXT_TO_IMAGE, JobRequest
from falq.shared.limits.store import Limiter, spend_today, write_config
from falq.shared.settings import reset_settings
from falq.testing.stack import TEST_FAL_KEY, DevStack
from tests.conftest import emulator_submissions, wait_for

FAST = {"latency": "fixed:0.05", "concurrency": 0, "tiny_images": True, "log_steps": 0}
LEASE = {"FALQ_SLOT_LEASE_S": "3", "FALQ_PAUSE_POLL_S": "1"}


def limits(falq: Any, **fields: Any) -> None:
    write_config(falq.redis, falq.settings.key_prefix, {k: str(v) for k, v in fields.items()})


def backlog(falq: Any, n: int, tag: str, lane: str = "bulk") -> list[str]:
    reqs = [JobRequest(TEXT_TO_IMAGE["standard"], {"prompt": f"{tag} {i}", "seed": i}, lane) for i in range(n)]  # type: ignore[arg-type]
    return [job_id for job_id, _ in falq.submit_many(reqs)]


def finished(falq: Any, ids: list[str]) -> list[Any] | None:
    recs = falq.store.get_many(ids)
    return recs if all(r is not None and r.terminal for r in recs) else None


def run_cli(stack: DevStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *argv: str) -> tuple[int, str]:
    from falq.cli.main import main

    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)
    reset_settings()
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.timeout(150)
def test_four_workers_never_exceed_the_shared_rate_and_use_it(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(**FAST)
    limits(falq, rate=10, burst=1, max_outstanding=0)
    for _ in range(4):
        clean_stack.start_worker(concurrency=50, env=LEASE)
    wait_ready(falq, 4)
    ids = backlog(falq, 150, "rate")
    recs = wait_for(lambda: finished(falq, ids), 90, 0.5, "150 jobs")
    assert all(r.state == "completed" for r in recs)
    times = [r["submitted_at"] for r in clean_stack.emu.requests()["requests"]]
    assert len(times) == 150
    print(f"rate 10/s, 4 workers: max in any 1 s window {max_in_window(times)}, mean {mean_rate(times):.2f}/s")
    assert max_in_window(times) <= 10
    assert mean_rate(times) >= 9.5


@pytest.mark.timeout(120)
def test_outstanding_requests_never_exceed_the_cap(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(**{**FAST, "latency": "uniform:1,3"})
    limits(falq, rate=50, max_outstanding=5)
    clean_stack.start_worker(concurrency=30, env=LEASE)
    clean_stack.start_worker(concurrency=30, env=LEASE)
    ids = backlog(falq, 30, "cap", lane="interactive")
    recs = wait_for(lambda: finished(falq, ids), 90, 0.5, "30 jobs")
    assert all(r.state == "completed" for r in recs)
    peak = clean_stack.emu.requests()["peak_in_flight"]["overall"]
    assert peak == 5, peak
    assert Limiter(falq.redis, falq.settings).live_slots() == []  # every slot was released


@pytest.mark.timeout(120)
def test_a_sigkilled_workers_slots_come_back_within_the_lease(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(**{**FAST, "latency": "fixed:40"})
    limits(falq, rate=0, max_outstanding=3)
    victim = clean_stack.start_worker(concurrency=10, env=LEASE)
    backlog(falq, 4, "held")
    lim = Limiter(falq.redis, falq.settings)
    wait_for(lambda: len(lim.live_slots()) == 3, 40, what="3 slots held")
    clean_stack.kill_worker(victim)
    killed_at = time.monotonic()
    wait_for(lambda: lim.live_slots() == [], 10, 0.05, "slots freed")
    freed_after = time.monotonic() - killed_at
    assert freed_after <= 3 + 0.5, freed_after  # FALQ_SLOT_LEASE_S (renewal every second)
    # a new worker submits at once, long before the dead worker's messages come back
    clean_stack.emu.configure(latency="fixed:0.1")
    clean_stack.start_worker(concurrency=10, env=LEASE)
    rec = falq.generate("after the kill").wait(40)
    assert rec.state == "completed"


@pytest.mark.timeout(120)
def test_budget_stops_at_the_budget_and_resumes_when_raised(
        clean_stack: DevStack, falq: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_stack.emu.configure(**FAST)
    limits(falq, rate=50, max_outstanding=0, budget_daily=0.30)  # 10 jobs at $0.03, the account's price
    clean_stack.start_worker(concurrency=30, env=LEASE)
    ids = backlog(falq, 20, "budget")

    def stopped() -> bool:
        recs = falq.store.get_many(ids)
        done = [r for r in recs if r.state == "completed"]
        waiting = [r for r in recs if r.state == "queued" and r.paused == "budget"]
        return len(done) == 10 and len(waiting) == 10

    wait_for(stopped, 60, 0.3, "10 completed, 10 paused for budget")
    time.sleep(2)
    assert len(emulator_submissions(clean_stack)) == 10
    assert spend_today(falq.redis, "falq")[1] == pytest.approx(0.30)
    code, out = run_cli(clean_stack, monkeypatch, capsys, "budget", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["spent_usd"] == pytest.approx(0.30) and doc["budget_usd"] == 0.30
    assert doc["jobs_paused"] == 10
    code, _ = run_cli(clean_stack, monkeypatch, capsys, "budget", "--set", "1")
    assert code == 0
    recs = wait_for(lambda: finished(falq, ids), 60, 0.5, "all 20 jobs")
    assert all(r.state == "completed" and r.paused is None for r in recs)
    assert len(emulator_submissions(clean_stack)) == 20
    assert spend_today(falq.redis, "falq")[1] == pytest.approx(0.60)


@pytest.mark.timeout(120)
def test_locked_account_pauses_the_key_and_nothing_fails(
        clean_stack: DevStack, falq: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_stack.emu.configure(**{**FAST, "locked_keys": [TEST_FAL_KEY]})
    limits(falq, rate=50, max_outstanding=0)
    clean_stack.start_worker(concurrency=20, env={**LEASE, "FALQ_LOCKED_PAUSE_S": "120"})
    ids = backlog(falq, 6, "locked")
    wait_for(lambda: all(r.paused == "account_locked" for r in falq.store.get_many(ids)), 40, 0.3, "paused")
    recs = falq.store.get_many(ids)
    assert all(r.state == "queued" and r.attempts == 0 for r in recs)  # a locked answer is not an attempt
    assert 1 <= clean_stack.emu.requests()["rejected_submits"]["locked"] <= 6
    code, out = run_cli(clean_stack, monkeypatch, capsys, "limits", "show", "--json")
    key = json.loads(out)["keys"][0]
    assert key["paused_for_s"] > 60 and "locked" in key["paused_reason"] and key["suffix"] == "...3333"
    assert TEST_FAL_KEY not in out
    assert "FAL ACCOUNT LOCKED" in clean_stack.worker_logs() and TEST_FAL_KEY not in clean_stack.worker_logs()
    clean_stack.emu.configure(locked_keys=[])
    code, out = run_cli(clean_stack, monkeypatch, capsys, "limits", "set", "--resume")
    assert code == 0 and "...3333" in out
    recs = wait_for(lambda: finished(falq, ids), 40, 0.3, "all jobs after resume")
    assert all(r.state == "completed" and r.attempts == 1 for r in recs)
    assert any(e.type == "fal_account_locked" for r in recs for e in r.errors)


@pytest.mark.timeout(150)
def test_injected_5xx_and_429_every_job_completes_none_twice(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(**{**FAST, "latency": "uniform:0.1,0.5", "fail_5xx": 0.2, "fail_429": 0.1,
                                 "fault_seed": 11})
    limits(falq, rate=20, max_outstanding=8)
    clean_stack.start_worker(concurrency=30, env=LEASE)
    clean_stack.start_worker(concurrency=30, env=LEASE)
    ids = backlog(falq, 40, "faults", lane="interactive")
    recs = wait_for(lambda: finished(falq, ids), 120, 0.5, "40 jobs")
    assert all(r.state == "completed" for r in recs), [(r.state, r.errors) for r in recs if r.state != "completed"]
    subs = emulator_submissions(clean_stack)
    assert all(1 <= len(subs.get(r.id, [])) <= r.attempts for r in recs)
    assert all(len({s.request_id for s in r.submissions}) == len(r.submissions) for r in recs)
    data = clean_stack.emu.requests()
    assert sum(data["rejected"].values()) > 0
    assert data["peak_in_flight"]["overall"] <= 8
    assert max_in_window([r["submitted_at"] for r in data["requests"]]) <= 20
    assert Limiter(falq.redis, falq.settings).live_slots() == []


@pytest.mark.timeout(120)
def test_failed_jobs_are_listed_with_their_history_and_retried(
        clean_stack: DevStack, falq: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_stack.emu.configure(**{**FAST, "accepted_keys": ["some-other-key-entirely"]})
    clean_stack.start_worker(concurrency=5, env=LEASE)
    jobs = [falq.generate(f"dead letter {i}", seed=i) for i in range(3)]
    recs = [j.wait(30) for j in jobs]
    assert all(r.state == "failed" and r.error.type == "fal_auth" for r in recs)
    code, out = run_cli(clean_stack, monkeypatch, capsys, "jobs", "--state", "failed", "--json")
    listed = {d["id"]: d for d in json.loads(out)}
    assert code == 0 and set(listed) == {r.id for r in recs}
    assert all(d["errors"] and d["errors"][-1]["type"] == "fal_auth" for d in listed.values())
    code, out = run_cli(clean_stack, monkeypatch, capsys, "jobs", "--state", "failed", "--errors")
    assert code == 0 and "fal_auth" in out and TEST_FAL_KEY not in out
    clean_stack.emu.configure(accepted_keys=None)  # the operator fixed the key
    code, out = run_cli(clean_stack, monkeypatch, capsys, "retry", jobs[0].id)
    assert code == 0 and "queued again" in out
    code, out = run_cli(clean_stack, monkeypatch, capsys, "retry", "--failed", "--since", "10m")
    assert code == 0 and out.count("queued again") == 2
    for job in jobs:
        rec = job.wait(30)
        assert rec.state == "completed" and rec.id == job.id
        assert rec.attempts == 2 and rec.retry_from == 1 and len(rec.submissions) == 1
        # The history is kept: the refusal stays first. A transient note the retry met on a loaded
        # machine (a dropped status stream) may follow; it must be a retryable one.
        assert rec.errors[0].type == "fal_auth", rec.errors
        assert all(e.retryable for e in rec.errors[1:]), rec.errors
    code, _ = run_cli(clean_stack, monkeypatch, capsys, "retry", jobs[0].id)
    assert code == 1  # completed jobs are not retried
