"""Workers let fal push completions (through the gateway's webhook receiver) instead of following."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from falq.gateway.server import GatewayServer
from falq.testing.stack import DevStack


@pytest.fixture
def gw(clean_stack: DevStack) -> Iterator[GatewayServer]:
    with GatewayServer(clean_stack.settings(), api_keys=["gw-key-0123456789"],
                       fal_jwks_url=f"{clean_stack.emu.url}/.well-known/jwks.json") as server:
        yield server


def _calls(stack: DevStack, request_id: str) -> dict[str, Any]:
    return {r["request_id"]: r for r in stack.emu.requests()["requests"]}[request_id]


@pytest.mark.timeout(120)
def test_worker_waits_for_fal_webhook_and_does_not_follow(clean_stack: DevStack, gw: GatewayServer,
                                                          falq: Any) -> None:
    clean_stack.emu.configure(latency="fixed:1")
    env = {"FALQ_FAL_WEBHOOK_URL": f"{gw.url}/_falq/fal-webhook", "FALQ_FAL_WEBHOOK_WAIT_S": "60"}
    clean_stack.start_worker(concurrency=5, env=env)
    before = clean_stack.emu.requests()["counts"]
    t0 = time.monotonic()
    jobs = [falq.generate(f"pushed {i}", seed=i) for i in range(3)]
    recs = [j.wait(60) for j in jobs]
    assert all(r.state == "completed" for r in recs), [r.errors for r in recs]
    assert time.monotonic() - t0 < 30
    after = clean_stack.emu.requests()["counts"]
    # completions arrived by webhook: no status polls and no status streams for these jobs
    assert after.get("status", 0) == before.get("status", 0)
    assert after.get("stream", 0) == before.get("stream", 0)
    assert all(r.outputs and r.fal_completed_at for r in recs)


@pytest.mark.timeout(120)
def test_missing_webhook_falls_back_to_following(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="fixed:0.5")
    # The webhook points at a dead address: fal's delivery fails, the worker follows after the wait.
    env = {"FALQ_FAL_WEBHOOK_URL": "http://127.0.0.1:9/_falq/fal-webhook", "FALQ_FAL_WEBHOOK_WAIT_S": "2"}
    clean_stack.start_worker(concurrency=2, env=env)
    rec = falq.generate("no webhook arrives").wait(60)
    assert rec.state == "completed"
    counts = clean_stack.emu.requests()["counts"]
    assert counts.get("stream", 0) + counts.get("status", 0) >= 1
