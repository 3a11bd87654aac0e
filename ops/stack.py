"""A complete falq deployment on one machine, started for real: Redis, S3, fal, workers.

Used by ``make demo``, the test suite and the benchmarks, so all three run the same
parts the same way: a ``redis-server`` process on a free port (optionally with AOF, as
in production), moto's S3 server over HTTP, the fal emulator over HTTP, and ``falq
worker`` processes (Celery on the gevent pool).

Example::

    with DevStack(workdir=tmp) as stack:
        stack.start_worker(concurrency=100)
        falq = Falq(stack.settings())
        falq.generate("a red fox").wait(60)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
TEST_FAL_KEY = "falq-test-key-0000-1111-2222-3333"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process.

    Parameters:
        workdir: where its data (and AOF) lives.
        aof: append-only persistence with ``appendfsync always`` (survives restarts).
        port: 0 picks a free port; a restart keeps the port.
    """

    def __init__(self, workdir: Path, *, aof: bool = False, port: int = 0, host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.aof = aof
        self.port = port or free_port()
        #: The address clients use; the server also listens on loopback (tests/netns.py binds
        #: a network-namespace lab's gateway address).
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        bind = "127.0.0.1" if self.host == "127.0.0.1" else f"{self.host} 127.0.0.1"
        args = [exe, "--port", str(self.port), "--bind", bind, "--dir", str(self.workdir),
                "--save", "", "--maxmemory-policy", "noeviction", "--protected-mode", "no"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.host}:{self.port}") from None
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop(kill=True)
        self.start()


class S3Server:
    """moto's S3 server over real HTTP, in a thread of this process."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> S3Server:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self.server.stop()


class DevStack:
    """Redis + S3 + the fal emulator + any number of worker processes.

    Parameters:
        workdir: scratch directory (logs, Redis data); a temporary one by default.
        aof: run Redis with append-only persistence.
        emulator: overrides for the emulator's config (e.g. ``latency="fixed:0.5"``).
        env: extra ``FALQ_*`` settings for workers and :meth:`settings`.
    """

    def __init__(self, workdir: Path | None = None, *, aof: bool = False,
                 emulator: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="falq-stack-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.redis = RedisServer(self.workdir / "redis", aof=aof)
        self.s3 = S3Server()
        self.emulator_overrides = {"latency": "fixed:0.3", **(emulator or {})}
        self.extra_env = dict(env or {})
        self.workers: list[subprocess.Popen[bytes]] = []
        self.emu: Any = None
        self.bucket = "falq-" + os.urandom(4).hex()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> DevStack:
        from falq.emulator.server import EmulatorServer

        self.redis.start()
        self.s3.start()
        self.emu = EmulatorServer(**self.emulator_overrides).start()
        return self

    def stop(self) -> None:
        self.stop_workers()
        if self.emu is not None:
            self.emu.stop()
        self.s3.stop()
        self.redis.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- configuration -------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """The environment a falq process needs to use this stack."""
        emu_host = self.emu.url.split("://", 1)[1]
        env = {
            "FAL_KEY": TEST_FAL_KEY,
            "FALQ_FAL_QUEUE_URL": self.emu.url,
            "FALQ_FAL_REST_URL": self.emu.url,
            # fal's platform API (account prices, billing events) on the emulator
            "FALQ_FAL_PLATFORM_URL": f"{self.emu.url}/v1",
            "FALQ_REDIS_URL": self.redis.url,
            "FALQ_S3_ENDPOINT_URL": self.s3.url,
            "FALQ_S3_BUCKET": self.bucket,
            "FALQ_S3_PREFIX": "falq",
            # The catalogue's embedded SQLite file lives with the stack (FALQ_DATABASE_URL overrides).
            "FALQ_DATA_DIR": str(self.workdir / "data"),
            "AWS_ACCESS_KEY_ID": "falq-test-access",
            "AWS_SECRET_ACCESS_KEY": "falq-test-secret-0123456789",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FALQ_MEDIA_HOSTS": emu_host,
            "FALQ_ALLOW_PRIVATE_MEDIA": "true",
            "FALQ_CALLBACK_ALLOW_PRIVATE": "true",
            "FALQ_VISIBILITY_TIMEOUT_S": "30",
            "FALQ_LEASE_TTL_S": "6",
            "FALQ_RETRY_BASE_S": "0.2",
            "FALQ_RETRY_MAX_S": "3",
            # The stack is a test bed: limits are opted into by the tests that measure them.
            "FALQ_RATE_PER_S": "100000",
            "FALQ_MAX_OUTSTANDING": "100000",
        }
        env.update(self.extra_env)
        env.update(extra)
        return env

    def settings(self, **extra: str) -> Any:
        """A :class:`~falq.shared.settings.Settings` for in-process producers of this stack."""
        from falq.shared.settings import Settings

        fields = {k: v for k, v in self.env(**extra).items()}
        old = {k: os.environ.get(k) for k in fields}
        os.environ.update(fields)
        try:
            return Settings(_env_file=None)  # type: ignore[call-arg]
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # --- workers -------------------------------------------------------------------------------
    def start_worker(self, concurrency: int = 50, *, lanes: str = "interactive,bulk",
                     env: dict[str, str] | None = None, loglevel: str = "WARNING") -> subprocess.Popen[bytes]:
        """Start one ``falq worker`` process; its log goes to ``workdir/worker-N.log``."""
        n = len(self.workers)
        log = open(self.workdir / f"worker-{n}.log", "ab")  # noqa: SIM115 - owned by the child
        full_env = {**os.environ, **self.env(**(env or {})), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "falq.workers", "-c", str(concurrency), "--lanes", lanes, "-l", loglevel,
             "-n", f"w{n}-{os.getpid()}@%h"],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_workers(self, *, kill: bool = False) -> None:
        """Stop every worker: a warm shutdown (SIGTERM), or at once with ``kill`` (tests that
        throw the whole state away anyway)."""
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.workers:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.workers.clear()

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("worker-*.log")))
