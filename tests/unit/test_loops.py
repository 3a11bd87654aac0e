"""falq.workers.loops: a named loop survives every exception and stops on its Event."""

from __future__ import annotations

import threading
import time

import pytest

from falq.workers.loops import every, forever


def test_every_survives_exceptions_and_stops() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) % 2:
            raise ValueError("boom")  # not a RedisError: the loop must still go on

    thread = every("falq-test-every", 0.01, flaky, stop, jitter=0.5)
    assert thread.name == "falq-test-every" and thread.daemon
    deadline = time.monotonic() + 5
    while len(calls) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 6 and thread.is_alive()
    stop.set()
    thread.join(2)
    assert not thread.is_alive()


def test_forever_restarts_after_a_crash() -> None:
    stop = threading.Event()
    runs: list[int] = []

    def consumer(ev: threading.Event) -> None:
        runs.append(1)
        raise RuntimeError("crash")

    thread = forever("falq-test-forever", consumer, stop, retry_s=0.01)
    deadline = time.monotonic() + 5
    while len(runs) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runs) >= 3 and thread.is_alive()
    stop.set()
    thread.join(2)
    assert not thread.is_alive()


def test_every_rejects_bad_jitter() -> None:
    with pytest.raises(ValueError, match="jitter"):
        every("falq-test-bad", 1.0, lambda: None, jitter=1.5)


def test_consumers_rest_a_failing_part_and_run_the_others() -> None:
    from falq.workers.consumers import Consumers, Part

    calls = {"ok": 0, "bad": 0, "slow": 0}

    def ok() -> int:
        calls["ok"] += 1
        return 1

    def bad() -> int:
        calls["bad"] += 1
        raise ConnectionError("down")

    def slow() -> int:
        calls["slow"] += 1
        return 0

    c = Consumers()
    for p in (Part("bad", bad, max_backoff_s=60.0), Part("ok", ok), Part("slow", slow, every_s=60.0)):
        c.add(p)
    assert [c.round() for _ in range(3)] == [1, 1, 1]
    assert calls == {"ok": 3, "bad": 1, "slow": 1}  # bad rests (backoff), slow waits its 60 s
