"""The bench's local deployment and its measuring tools.

One :class:`Harness` wraps one :class:`falq.testing.stack.DevStack` for the whole run (Redis, moto
S3 over HTTP, the fal emulator in this process) and resets it between scenarios, so every
scenario and every reference meets the same Redis, the same S3 and the same emulator.
Processes are measured from ``/proc``: CPU (utime + stime) and resident memory of a
process and its children (a prefork pool), and Redis' own command counter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis

from falq.ops.bench.model import T2I
from falq.ops.bench_limiter import wait_ready
from falq.testing.stack import ROOT, DevStack

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: falq's production defaults where the DevStack (a test bed) shortens them. A step is capped
#: at half the visibility timeout; the test bed's 30 s would end steps following a 5-15 s
#: request at fal and re-publish them, which is not how falq runs in production.
PRODUCTION_ENV = {"FALQ_VISIBILITY_TIMEOUT_S": "600", "FALQ_LEASE_TTL_S": "20"}

#: A fast, fault-free emulator; scenarios override what they measure.
BASELINE_EMULATOR: dict[str, Any] = {
    "latency": "0", "concurrency": 0, "log_steps": 0, "tiny_images": True, "fail_5xx": 0.0, "fail_429": 0.0,
    "drop": 0.0, "slow": 0.0, "completed_error": 0.0, "stream_interval_s": 1.0,
}


def children(pid: int) -> list[int]:
    """``pid`` and all its descendants (a prefork pool's children), from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by ``pids`` (gone processes count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mb(pids: Iterable[int]) -> float:
    """Resident memory of ``pids`` together, in MB (``VmRSS``)."""
    total = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


class Harness:
    """The stack plus everything the scenarios start on it.

    Parameters:
        stack: a started :class:`DevStack`.
        quick: scale scenarios down (the whole run: about eight minutes on 2 cores).
        sizes: overrides of scenario sizes by name (see :meth:`size`), e.g. for tests.
    """

    def __init__(self, stack: DevStack, *, quick: bool, sizes: dict[str, int] | None = None) -> None:
        self.stack = stack
        self.quick = quick
        self.sizes = dict(sizes or {})
        self.production = dict(PRODUCTION_ENV)
        self.redis = redis.Redis.from_url(stack.redis.url)
        self.others: list[subprocess.Popen[bytes]] = []
        self._falq: Any = None

    def size(self, name: str, quick: int, full: int) -> int:
        """A scenario's size: an override from ``sizes``, else the quick or the full value."""
        return self.sizes.get(name, quick if self.quick else full)

    # --- lifecycle -------------------------------------------------------------------------------
    def reset(self, **emulator: Any) -> None:
        """Stop every worker, empty Redis, reset the emulator to the baseline plus ``emulator``."""
        self.stop_all()
        self.redis.flushall()
        self.stack.emu.reset()
        self.stack.emu.configure(**{**BASELINE_EMULATOR, **emulator})
        self._falq = None

    def stop_all(self) -> None:
        """Kill every worker and reference process this harness started (their process groups)."""
        procs = [*self.stack.workers, *self.others]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(10)
        self.stack.workers.clear()
        self.others.clear()

    # --- falq --------------------------------------------------------------------------------------
    def falq(self) -> Any:
        """A producer (:class:`producers.Falq`) on the stack, reused within one scenario."""
        if self._falq is None:
            from falq.producers import Falq

            self._falq = Falq(self.stack.settings(**self.production))
        return self._falq

    def env(self, **extra: str) -> dict[str, str]:
        """The full environment of a child process on this stack."""
        return {**os.environ, **self.stack.env(**{**self.production, **extra}), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def start_falq_workers(self, n: int, concurrency: int, env: dict[str, str] | None = None,
                           wait: bool = True) -> list[int]:
        """Start ``n`` ``falq worker`` processes in their own process groups; wait until they answer."""
        pids = []
        for i in range(n):
            log = open(self.stack.workdir / f"worker-{len(self.stack.workers)}.log", "ab")  # noqa: SIM115
            proc = subprocess.Popen(
                [sys.executable, "-m", "falq.workers", "-c", str(concurrency), "-l", "WARNING",
                 "-n", f"bench{i}-{os.getpid()}-{time.monotonic_ns()}@%h"],
                cwd=ROOT, env=self.env(**(env or {})), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()
            self.stack.workers.append(proc)
            pids.append(proc.pid)
        if wait:
            wait_ready(self.falq(), n)
        return pids

    def start_celery(self, module: str, pool: str, concurrency: int, queue: str,
                     env: dict[str, str] | None = None, events: bool = False, wait: bool = True) -> int:
        """Start a reference Celery worker (``celery -A module worker``); wait until it answers."""
        log = open(self.stack.workdir / f"{module.rsplit('.', 1)[-1]}-{len(self.others)}.log", "ab")  # noqa: SIM115
        argv = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", pool, "-c", str(concurrency),
                "-Q", queue, "-l", "WARNING", "--without-mingle", "--without-gossip",
                "-n", f"ref{len(self.others)}-{os.getpid()}-{time.monotonic_ns()}@%h"]
        proc = subprocess.Popen(argv + (["-E"] if events else []), cwd=ROOT, env=self.env(**(env or {})),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.others.append(proc)
        if wait:
            wait_ready(self.falq(), len([p for p in [*self.stack.workers, *self.others] if p.poll() is None]))
        return proc.pid

    # --- measuring ---------------------------------------------------------------------------------
    def redis_commands(self) -> int:
        """Redis' ``total_commands_processed`` (the INFO call itself counts one). In Redis 7 it
        counts the commands a Lua script runs too, as ``INFO commandstats`` does (an EVALSHA that
        runs 10 commands counts 11), so falq's scripts are not undercounted."""
        return int(self.redis.info("stats")["total_commands_processed"])

    def wait_until(self, done: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "") -> float:
        """Poll ``done`` until true; returns the monotonic time it became true. Raises on timeout."""
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise TimeoutError(f"bench: timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)
        return time.monotonic()

    def enqueue(self, n: int, tag: str, payload: dict[str, Any] | None = None, lane: str = "bulk") -> list[str]:
        """Enqueue ``n`` falq text-to-image jobs through :meth:`Falq.submit_many`; returns their ids."""
        from falq.producers.client import JobRequest

        reqs = [JobRequest(T2I, {**(payload or {}), "prompt": f"{tag} {i}", "seed": i}, lane)  # type: ignore[arg-type]
                for i in range(n)]
        return [job_id for job_id, _ in self.falq().submit_many(reqs)]

    def completed(self) -> int:
        """Jobs in ``completed`` (one pipelined round of ZCARDs)."""
        return int(self.falq().store.counts()["completed"])

    def emulator_requests(self, since: float) -> list[dict[str, Any]]:
        """The emulator's view of every request submitted since ``since`` (epoch seconds)."""
        reqs: list[dict[str, Any]] = self.stack.emu.requests(since=since)["requests"]
        return reqs
