"""falq's own metrics: recorded by real workers into Redis, served by `falq metrics`, shown by `falq top`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from falq.shared.metrics import BUCKETS, Histogram, _histograms, read_snapshot
from falq.shared.settings import Settings, reset_settings
from falq.testing.stack import ROOT, TEST_FAL_KEY, DevStack, free_port
from falq.workers.metrics import FLUSH_S
from tests.conftest import wait_for

TOKEN = "metrics-token-for-tests-0123456789"
#: The `falq` command as a fresh process (the console script may not be installed in a dev venv).
FALQ = [sys.executable, "-c", "import sys; from falq.cli.main import main; sys.exit(main())"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(data: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in data.items() if n == name and set(labels.items()) <= set(lbl))


@pytest.fixture
def exporter(clean_stack: DevStack) -> Iterator[str]:
    """`falq metrics` as a real process on a free port, with a token; yields its base URL."""
    port = free_port()
    env = {**os.environ, **clean_stack.env(), "FALQ_METRICS_TOKEN": TOKEN}
    proc = subprocess.Popen([*FALQ, "metrics", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=20, what="falq metrics to listen")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    resp = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text, samples(resp.text)


@pytest.mark.timeout(120)
def test_a_batch_shows_up_in_the_exporter(clean_stack: DevStack, falq: Any, exporter: str) -> None:
    clean_stack.start_worker(concurrency=10)
    jobs = [falq.generate(f"metrics {i}", seed=i, pro=i == 0) for i in range(5)]
    recs = [j.wait(60) for j in jobs]
    assert all(r.state == "completed" for r in recs), [r.errors for r in recs]

    # Auth: nothing without the token, or with a wrong one; basic auth with the token works.
    assert httpx.get(f"{exporter}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{exporter}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert httpx.get(f"{exporter}/metrics", auth=("prometheus", TOKEN), timeout=10).status_code == 200

    # Workers write their counts at most FLUSH_S after a job ends (workers.metrics).
    wait_for(lambda: total(scrape(exporter)[1], "falq_jobs_finished_total", state="completed") == 5,
             timeout=2 + 3 * FLUSH_S, interval=0.1, what="the workers' counts to be written")
    text, data = scrape(exporter)
    assert total(data, "falq_redis_up") == 1
    assert total(data, "falq_jobs", state="completed") == 5
    assert total(data, "falq_jobs", state="queued") == 0
    assert total(data, "falq_jobs_finished_total", state="completed") == 5
    assert total(data, "falq_jobs_finished_total", state="completed",
                  endpoint="fal-ai/qwen-image-2/pro/text-to-image") == 1
    assert total(data, "falq_transitions_total", to="completed") == 5
    for hist in ("falq_fal_inference_seconds", "falq_mirror_seconds", "falq_job_duration_seconds"):
        assert total(data, f"{hist}_count") == 5, hist
        assert total(data, f"{hist}_bucket", le="+Inf") == 5, hist
        assert total(data, f"{hist}_sum") > 0, hist
    # A queue wait is recorded when the worker sees IN_PROGRESS: at most once per attempt
    # (a loaded machine can miss the short IN_PROGRESS phase while polling).
    assert 0 < total(data, "falq_fal_queue_wait_seconds_count") <= sum(r.attempts for r in recs)
    # Inference time is fal's own figure (the emulator's 0.3 s latency plus rendering).
    assert total(data, "falq_fal_inference_seconds_sum") >= 5 * 0.25
    assert total(data, "falq_spend_dollars_total") == pytest.approx(sum(r.cost_estimate for r in recs))
    # The budget's reservations when the limiter runs, else falq's estimate: the same sum here.
    assert total(data, "falq_spend_today_dollars") == pytest.approx(sum(r.cost_estimate for r in recs))
    assert total(data, "falq_fal_outstanding") == 0
    assert total(data, "falq_queue_depth") == 0
    # Secrets never appear.
    for secret in (TEST_FAL_KEY, clean_stack.env()["AWS_SECRET_ACCESS_KEY"], TOKEN):
        assert secret not in text

    # falq top shows the same figures.
    out = subprocess.run([*FALQ, "top", "--once"], cwd=ROOT, env={**os.environ, **clean_stack.env()},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    cap = read_snapshot(redis.Redis.from_url(clean_stack.redis.url), clean_stack.settings()).outstanding_cap
    for needle in ("jobs / min", "completed", "fal inference", "p99", "outstanding at fal",
                   f"0 / {cap}" if cap else "0 (no cap)",
                   "spend today (", "$0.1"):  # 4 x 0.03 + 1 x 0.065 (the emulator's account prices)
        assert needle in out.stdout, (needle, out.stdout)
    rate_row = re.search(r"^completed\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d)", out.stdout, re.M)
    assert rate_row and float(rate_row[3]) > 0, out.stdout  # jobs/min over 1, 5, 15 minutes
    assert re.search(r"^completed\s+5\b", out.stdout, re.M), out.stdout  # jobs by state
    assert TEST_FAL_KEY not in out.stdout


@pytest.mark.timeout(60)
def test_queue_depth_per_lane_with_a_bulk_backlog_and_no_worker(clean_stack: DevStack, falq: Any) -> None:
    for i in range(7):
        falq.generate(f"backlog {i}", lane="bulk")
    for i in range(2):
        falq.generate(f"urgent {i}")
    settings = clean_stack.settings()
    snap = read_snapshot(redis.Redis.from_url(settings.redis_url), settings)
    assert snap.queue_depth == {"interactive": 2, "bulk": 7}
    assert snap.states["queued"] == 9 and snap.outstanding == 0

    from prometheus_client import CollectorRegistry, generate_latest

    from falq.ops.exporter import FalqCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FalqCollector(settings))
    data = samples(generate_latest(registry).decode())
    assert total(data, "falq_queue_depth", lane="bulk") == 7
    assert total(data, "falq_queue_depth", lane="interactive") == 2
    assert total(data, "falq_jobs", state="queued") == 9


@pytest.mark.timeout(180)
def test_retries_by_reason_after_emulator_faults(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="uniform:0.1,0.4", fail_5xx=0.25, fail_429=0.1, completed_error=0.15,
                              fault_seed=11)
    clean_stack.start_worker(concurrency=20, env={"FALQ_MAX_ATTEMPTS": "12"})
    jobs = [falq.generate(f"faulty {i}", seed=i) for i in range(15)]
    recs = [j.wait(150) for j in jobs]
    assert all(r.state == "completed" for r in recs), [(r.state, r.errors[-1:]) for r in recs]
    settings = clean_stack.settings()
    # The counters agree exactly with the error histories the records keep.
    expected: dict[str, int] = {}
    for r in recs:
        for e in r.errors:
            if e.retryable:
                expected[e.type] = expected.get(e.type, 0) + 1

    def retries_now() -> dict[str, int]:
        snap = read_snapshot(redis.Redis.from_url(settings.redis_url), settings)
        return {k[0]: v for k, v in snap.labelled("retry").items()}

    def finished_now() -> float:
        return read_snapshot(redis.Redis.from_url(settings.redis_url), settings).finished_in(5)

    # Workers write their counts at most FLUSH_S after the hook (workers.metrics).
    wait_for(lambda: retries_now() == expected and finished_now() == 15, timeout=2 + 3 * FLUSH_S, interval=0.1,
             what="the retry and finished counts")
    snap = read_snapshot(redis.Redis.from_url(settings.redis_url), settings)
    retries = {k[0]: v for k, v in snap.labelled("retry").items()}
    assert expected and retries == expected
    assert "fal_transient" in retries or "fal_rate_limited" in retries
    waits = snap.labelled("waits")
    assert waits[("retry",)] >= 1 and snap.labelled("wait_s")[("retry",)] > 0
    assert snap.finished_in(5) == 15 and snap.jobs_per_minute(1) > 0
    # Failures are counted by reason too (none here), and spend counts every billed attempt.
    assert not snap.labelled("failure")


@pytest.mark.timeout(60)
def test_failed_jobs_are_counted_by_reason(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(accepted_keys=["some-other-key-entirely"])
    clean_stack.start_worker(concurrency=2)
    rec = falq.generate("unauthorised").wait(30)
    assert rec.state == "failed"
    settings = clean_stack.settings()
    wait_for(lambda: read_snapshot(redis.Redis.from_url(settings.redis_url), settings).labelled("failure"),
             timeout=2 + 3 * FLUSH_S, interval=0.1, what="the failure count")
    snap = read_snapshot(redis.Redis.from_url(settings.redis_url), settings)
    assert snap.labelled("failure") == {("fal_auth",): 1}
    # A five-minute window: the job ended seconds ago, so it is inside the window's whole
    # minutes even when the snapshot is taken just after a clock minute turned.
    assert snap.finished_in(5, "failed") == 1


@pytest.mark.timeout(30)
def test_the_limiters_keys_are_read_when_present(clean_stack: DevStack) -> None:
    """Outstanding slots, the budget's spend and the runtime cap come from the limiter's keys."""
    from falq.shared.metrics import utc_day

    settings = clean_stack.settings()
    r = redis.Redis.from_url(settings.redis_url)
    now_ms = int(time.time() * 1000)
    r.zadd("falq:limits:abc123:slots", {"live-1": now_ms + 60_000, "live-2": now_ms + 60_000,
                                        "dead-worker-job": now_ms - 1_000})
    r.zadd("falq:limits:abc123:slots:ep:fal-ai/qwen-image-2/edit", {"live-1": now_ms + 60_000})
    r.set(f"falq:spend:{utc_day()}", 1_234_567)  # micro-dollars
    r.hset("falq:limits:config", "max_outstanding", "7")
    snap = read_snapshot(r, settings)
    assert snap.limiter_slots == {"abc123": 2} and snap.outstanding == 2
    assert snap.outstanding_cap == 7
    assert snap.spend_today == pytest.approx(1.234567) and snap.spend_source == "budget"
    r.hset("falq:limits:config", "max_outstanding", "0")  # 0 means no cap
    assert read_snapshot(r, settings).outstanding_cap is None


def test_exporter_refuses_to_start_open(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from falq.ops.exporter import main

    monkeypatch.delenv("FALQ_METRICS_TOKEN", raising=False)
    monkeypatch.chdir(ROOT / "tests")  # no .env here
    reset_settings()
    try:
        assert main(["--port", "0"]) == 2
    finally:
        reset_settings()
    assert "refusing to start without authentication" in capsys.readouterr().err


def test_histogram_quantiles_interpolate_within_buckets() -> None:
    h = Histogram()
    h.buckets[BUCKETS.index(1)] = 50  # 50 observations in (0.5, 1]
    h.buckets[BUCKETS.index(10)] = 50  # 50 observations in (5, 10]
    assert h.quantile(0.5) == pytest.approx(1.0)
    assert h.quantile(0.99) == pytest.approx(5 + 5 * 49 / 50)
    assert Histogram().quantile(0.5) is None
    h.buckets[-1] = 1000  # beyond the last bound: report that bound
    assert h.quantile(0.99) == BUCKETS[-1]
    assert h.cumulative()[-1] == ("+Inf", 1100)


def test_histogram_count_is_the_bucket_total_for_old_and_new_hashes() -> None:
    # Older workers also wrote `{endpoint}|count`; it is ignored (a rolling upgrade mixes both
    # writers in one hash), and the count is the total of the buckets either way.
    old = {b"t2i|3": b"2", b"t2i|sum": b"1.5", b"t2i|count": b"2"}
    mixed = {b"t2i|3": b"5", b"t2i|%d" % len(BUCKETS): b"1", b"t2i|sum": b"9.0", b"t2i|count": b"2"}
    assert _histograms(old)["t2i"].count == 2 and _histograms(old)["t2i"].sum == 1.5
    assert _histograms(mixed)["t2i"].count == 6
    assert _histograms({b"t2i|0": b"4", b"t2i|sum": b"0.01"})["t2i"].count == 4


def test_settings_carry_the_metrics_token_as_a_secret() -> None:
    s = Settings(_env_file=None, metrics_token="abc")  # type: ignore[call-arg]
    assert "abc" not in repr(s) and "abc" not in str(s.redacted())
