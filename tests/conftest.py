"""Shared fixtures: one real stack per test session (Redis, S3 over HTTP, the fal emulator).

Each test gets a clean slate: Redis flushed, the emulator reset to a fast, fault-free
configuration, and any worker processes it started stopped afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from falq.shared.settings import Settings, reset_settings
from falq.testing.stack import DevStack

BASELINE_EMULATOR = {
    "latency": "fixed:0.3",
    "concurrency": 40,
    "fail_5xx": 0.0,
    "fail_429": 0.0,
    "drop": 0.0,
    "slow": 0.0,
    "completed_error": 0.0,
    "tiny_images": False,
    "small_images": False,  # realistic 1-2 MB images, as fal's
    "accepted_keys": None,
    "locked_keys": [],
    "locked_status": 403,
    "log_steps": 12,
    "fault_calls": ["submit", "status", "stream", "result", "cancel", "file"],
    "fault_seed": None,
    "moderation_rate": 0.0,
    "moderation_marker": "[[moderate]]",  # a test may change it; the next must not inherit that
    "submit_500_created": 0.0,
    "stream_mode": "live",
    "stream_heartbeat_s": 15.0,
    "status_logs_window": 10,
    "result_retention_s": 3600.0,
    "result_retention_large_s": 360.0,
    "payload_retention_s": 30 * 24 * 3600.0,
    # fal's platform API (falq.emulator.platform): account prices unlike the list prices, no outage
    "account_prices": {"fal-ai/qwen-image-2/text-to-image": 0.03, "fal-ai/qwen-image-2/edit": 0.03,
                       "fal-ai/qwen-image-2/pro/text-to-image": 0.065, "fal-ai/qwen-image-2/pro/edit": 0.065},
    "admin_keys": ["falq-emulator-admin"],
    "billing_delay_s": 0.0,
    "platform_down": False,
    # What the live service always does stays on (the emulator's defaults): half of the cancels
    # of running requests are ignored (deterministically: the first one in a test is honoured)
    # and a start-timed-out request answers 504 on status as on its result. Rare faults off.
    "cancel_ignored_share": 0.5,
    "start_timeout_status": "504",
    "result_5xx_with_id": 0.0,
    "result_5xx_first": 0,
    "submit_outage_s": 0.0,
    "upload_cdn_outage": False,
    "file_access": "allow",
}


@pytest.fixture(scope="session", autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session's own ``FALQ_DATA_DIR`` (the embedded catalogue's SQLite file), unless one is set.

    The default (``~/.local/share/falq``) is the user's: a test that reaches the catalogue through
    default settings must neither read nor migrate a database another checkout left there.
    """
    if os.environ.get("FALQ_DATA_DIR"):
        yield
        return
    os.environ["FALQ_DATA_DIR"] = str(tmp_path_factory.mktemp("falq-data"))
    reset_settings()
    try:
        yield
    finally:
        os.environ.pop("FALQ_DATA_DIR", None)
        reset_settings()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bare redis-server of this module's own (no S3, no emulator); yields its URL."""
    from falq.testing.stack import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    """A client of this module's own redis-server, emptied for the test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    with DevStack() as st:
        yield st


@pytest.fixture
def clean_stack(stack: DevStack) -> Iterator[DevStack]:
    """The session stack, emptied and reset for this test; stops workers afterwards."""
    r = redis.Redis.from_url(stack.redis.url)
    r.flushall()
    r.close()
    stack.emu.reset()
    stack.emu.configure(**BASELINE_EMULATOR)
    stack.extra_env.clear()
    # A fresh catalogue too (its SQLite file), as Redis was flushed: no history of earlier tests.
    stack.extra_env["FALQ_DATA_DIR"] = str(stack.workdir / f"data-{uuid.uuid4().hex[:8]}")
    reset_settings()
    yield stack
    stack.stop_workers(kill=True)  # the next test flushes Redis: no need for a warm shutdown
    reset_settings()
    from falq.shared.catalogue.store import reset_catalogues

    reset_catalogues()


@pytest.fixture
def settings(clean_stack: DevStack) -> Settings:
    return clean_stack.settings()  # type: ignore[no-any-return]


@pytest.fixture
def falq(clean_stack: DevStack) -> Any:
    from falq.producers import Falq

    return Falq(clean_stack.settings())


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def emulator_submissions(stack: DevStack) -> dict[str, list[dict[str, Any]]]:
    """Accepted submissions at the emulator, grouped by falq job id (X-Falq-Job-Id)."""
    data = stack.emu.requests()
    out: dict[str, list[dict[str, Any]]] = {}
    for req in data["requests"]:
        headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
        job = headers.get("x-falq-job-id")
        if job:
            out.setdefault(job, []).append(req)
    return out


def fetch_fal_result(stack: DevStack, request_id: str) -> dict[str, Any]:
    from falq.testing.stack import TEST_FAL_KEY

    resp = httpx.get(f"{stack.emu.url}/fal-ai/qwen-image-2/requests/{request_id}",
                     headers={"Authorization": f"Key {TEST_FAL_KEY}"}, timeout=30)
    resp.raise_for_status()
    return resp.json()  # type: ignore[no-any-return]
