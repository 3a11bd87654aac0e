"""Redis Sentinel failover: job records, leases, limits and the broker all follow the new master.

A real primary, one replica and three sentinels (``redis-server`` / ``redis-sentinel``) on
free loopback ports; workers and the producer get only the sentinels' addresses
(``redis+sentinel://...``). The primary is SIGKILLed while a batch runs: a replica is
promoted, every client reconnects by itself, every job completes, and fal never saw more
submissions of a job than its record counts attempts (the attempt count and the request id
were acknowledged by the replica before the worker acted on them).
"""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from falq.shared.redisconn import parse_sentinel_url, redis_client, replicas_to_wait_for, wait_for_replicas
from falq.shared.settings import Settings
from falq.testing.stack import DevStack, free_port
from tests.conftest import BASELINE_EMULATOR, emulator_submissions, wait_for

SERVICE = "mymaster"


def _commandstats_calls(r: redis.Redis, command: str) -> int:
    stats = r.info("commandstats").get(f"cmdstat_{command.lower()}")
    return int(stats["calls"]) if stats else 0


class SentinelSet:
    """A primary, one replica and three sentinels, each with its config file in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _spawn(self, name: str, conf: str, *, sentinel: bool = False) -> None:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        path = d / ("sentinel.conf" if sentinel else "redis.conf")
        path.write_text(conf + f"dir {d}\nlogfile {d / 'log.txt'}\n")
        exe = shutil.which("redis-sentinel") if sentinel else None
        args = [exe, str(path)] if exe else [shutil.which("redis-server") or "redis-server", str(path)]
        if sentinel and not exe:
            args.append("--sentinel")
        self.procs[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> SentinelSet:
        common = "bind 127.0.0.1\nprotected-mode no\nsave \"\"\nappendonly no\nmaxmemory-policy noeviction\n"
        self._spawn("primary", f"port {self.ports['primary']}\n{common}")
        self._spawn("replica", f"port {self.ports['replica']}\n{common}replicaof 127.0.0.1 {self.ports['primary']}\n")
        for n, port in enumerate(self.sentinel_ports):
            self._spawn(f"sentinel-{n}", (
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['primary']} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            ), sentinel=True)
        wait_for(lambda: self.server("replica").info("replication").get("master_link_status") == "up",
                 timeout=20, what="the replica to sync")
        # The primary counts the replica online only after its first acknowledgement, a moment later.
        wait_for(lambda: (self.server("primary").info("replication").get("slave0") or {}).get("state") == "online",
                 timeout=20, what="the primary to see the replica online")
        wait_for(self._agreed, timeout=30, interval=0.2, what="the sentinels to agree")
        return self

    def server(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], socket_timeout=2, socket_connect_timeout=1)

    def sentinels(self) -> list[redis.Redis]:
        return [redis.Redis(port=p, socket_timeout=2, socket_connect_timeout=1) for p in self.sentinel_ports]

    def masters(self) -> list[int | None]:
        """The master's port as each sentinel reports it."""
        out: list[int | None] = []
        for s in self.sentinels():
            try:
                out.append(int(s.sentinel_get_master_addr_by_name(SERVICE)[1]))
            except (redis.RedisError, TypeError):
                out.append(None)
        return out

    def _agreed(self) -> bool:
        try:
            for s in self.sentinels():
                m = s.sentinel_master(SERVICE)
                if m["num-other-sentinels"] != 2 or m["num-slaves"] != 1 or int(m["port"]) != self.ports["primary"]:
                    return False
        except redis.RedisError:
            return False
        return True

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not on PATH")
    s = SentinelSet(tmp_path / "redis").start()
    try:
        yield s
    finally:
        s.stop()


# --- units --------------------------------------------------------------------------------
def test_sentinel_url_forms() -> None:
    u = parse_sentinel_url("redis+sentinel://:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/mymaster/3")
    assert u.sentinels == [("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381)]
    assert (u.service, u.db, u.username, u.password, u.tls) == ("mymaster", 3, None, "s@cret", False)
    u = parse_sentinel_url("rediss+sentinel://app:pw@h1/svc?sentinel_password=sp&sentinel_username=su")
    assert (u.sentinels, u.service, u.db, u.username, u.password) == ([("h1", 26379)], "svc", 0, "app", "pw")
    assert (u.sentinel_username, u.sentinel_password, u.tls) == ("su", "sp", True)
    for bad in ("redis+sentinel://h1", "redis+sentinel:///svc", "redis+sentinel://h1/svc/x",
                "redis+sentinel://h1:port/svc", "redis+sentinel://h1/svc?other=1", "redis://h1/0"):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


def test_broker_url_follows_a_sentinel_redis_url() -> None:
    from falq.shared.engine.celery_app import broker_url_and_options, make_app

    s = Settings(redis_url="redis+sentinel://:pw@h1:26380,h2/mymaster/2?sentinel_password=sp", fal_key="k")
    url, options = broker_url_and_options(s)
    assert url == "sentinel://:pw@h1:26380/2;sentinel://:pw@h2:26379/2"
    assert options == {"master_name": "mymaster", "sentinel_kwargs": {"password": "sp"}}
    app = make_app(s)
    assert app.conf.broker_transport == "falq.shared.engine.broker:SentinelTransport"
    from falq.shared.engine.broker import SentinelTransport
    from falq.shared.redisconn import SentinelConnection

    assert SentinelTransport.Channel.connection_class is SentinelConnection
    assert app.conf.broker_transport_options["master_name"] == "mymaster"
    assert app.conf.broker_transport_options["visibility_timeout"] == s.visibility_timeout_s
    native = Settings(broker_url="sentinel://h1:26379;sentinel://h2:26379", redis_sentinel_master="other", fal_key="k")
    assert broker_url_and_options(native) == ("sentinel://h1:26379;sentinel://h2:26379", {"master_name": "other"})
    with pytest.raises(ValueError, match="FALQ_REDIS_SENTINEL_MASTER"):
        broker_url_and_options(Settings(broker_url="sentinel://h1:26379", fal_key="k"))
    plain = Settings(redis_url="redis://127.0.0.1:6399/0", fal_key="k")
    assert broker_url_and_options(plain) == ("redis://127.0.0.1:6399/0", {})
    assert make_app(plain).conf.broker_transport == "falq.shared.engine.broker:Transport"
    shown = s.redacted()
    assert shown["redis_url"] == "redis+sentinel://:****@h1:26380,h2/mymaster/2?sentinel_password=****"


def test_wait_is_issued_through_sentinel_and_covers_other_connections(sentinels: SentinelSet) -> None:
    from falq.shared.jobs.records import JobRecord
    from falq.shared.jobs.store import JobStore

    primary, replica = sentinels.server("primary"), sentinels.server("replica")
    client = redis_client(sentinels.url, settings=Settings(fal_key="k", redis_url=sentinels.url))
    assert client.ping() and client.info("server")["tcp_port"] == sentinels.ports["primary"]
    assert replicas_to_wait_for(client) == 1  # auto: one replica online
    # A read cut short closes the connection (redis-py's Sentinel connection would keep it,
    # answer unread, and hand that answer to the next command).
    conn = client.connection_pool.get_connection()
    conn.send_command("BLPOP", "t:never", "0.3")
    with pytest.raises(redis.TimeoutError):
        conn.read_response(timeout=0.05)
    assert conn._sock is None
    client.connection_pool.release(conn)
    assert client.ping() is True
    store = JobStore(client, prefix="t")
    before = _commandstats_calls(primary, "WAIT")
    rec = JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image", input={"prompt": "x"}, lane="interactive")
    _, created = store.create(rec, "idem-1")
    ids = store.create_many([(JobRecord.new(endpoint=rec.endpoint, input={"prompt": str(i)}, lane="bulk"), None)
                             for i in range(5)])
    assert created and len(ids) == 5
    assert _commandstats_calls(primary, "WAIT") == before + 2
    assert replica.hget(f"t:job:{rec.id}", "version") == b"1"  # acknowledged, so already there

    # WAIT covers a write made on another connection (the marker moves this one's offset):
    # with the replica stopped it times out -- a warning, not an error -- after the timeout.
    sentinels.procs["replica"].send_signal(signal.SIGSTOP)
    try:
        redis.Redis(port=sentinels.ports["primary"]).set("t:other-connection", "1")
        start = time.monotonic()
        assert wait_for_replicas(client, Settings(fal_key="k", redis_wait_timeout_ms=300)) == []
        assert 0.25 < time.monotonic() - start < 3
    finally:
        sentinels.procs["replica"].send_signal(signal.SIGCONT)
    off = Settings(fal_key="k", redis_wait_replicas=0)
    calls = _commandstats_calls(primary, "WAIT")
    assert replicas_to_wait_for(client, off) == 0 and wait_for_replicas(client, off) == []
    assert _commandstats_calls(primary, "WAIT") == calls


def test_no_replicas_no_wait(redis_server: str) -> None:
    client = redis_client(redis_server, settings=Settings(fal_key="k"))
    before = _commandstats_calls(client, "WAIT")
    assert replicas_to_wait_for(client) == 0
    pipe = client.pipeline(transaction=False)
    pipe.set("t:x", "1")
    assert wait_for_replicas(client, pipe=pipe) == [True]
    assert _commandstats_calls(client, "WAIT") == before


# --- the failover ------------------------------------------------------------------------------
def _run_failover(sentinels: SentinelSet, tmp_path: Path, jobs: int, *, latency: str, fal_concurrency: int) -> None:
    from falq.producers import Falq
    from falq.producers.client import TEXT_TO_IMAGE, JobRequest

    env = {"FALQ_REDIS_URL": sentinels.url, "FALQ_LEASE_TTL_S": "6"}
    emulator = {**BASELINE_EMULATOR, "latency": latency, "concurrency": fal_concurrency, "small_images": True}
    with DevStack(tmp_path / "stack", emulator=emulator, env=env) as stack:
        settings = stack.settings()
        assert settings.broker == sentinels.url  # the broker follows the Sentinel URL
        for _ in range(2):
            stack.start_worker(concurrency=100)
        falq = Falq(settings)
        first = jobs * 4 // 5
        reqs = [JobRequest(TEXT_TO_IMAGE["standard"], {"prompt": f"failover {i}", "seed": i}, "bulk")  # type: ignore[arg-type]
                for i in range(jobs)]
        ids = [job_id for job_id, _ in falq.submit_many(reqs[:first])]
        started, started_wall = time.monotonic(), time.time()

        def completed() -> int:
            return sum(1 for r in falq.store.get_many(ids) if r is not None and r.state == "completed")

        wait_for(lambda: completed() >= first // 3, timeout=120, interval=0.2, what="a third of the jobs")
        sentinels.kill("primary")
        killed = time.monotonic()
        # The producer enqueues the rest while the master is gone: it must ride out the failover.
        late: list[str] = []
        producer = threading.Thread(target=lambda: late.extend(j for j, _ in falq.submit_many(reqs[first:])))
        producer.start()
        new_port = sentinels.ports["replica"]
        wait_for(lambda: sentinels.masters().count(new_port) >= 2, timeout=30, interval=0.1,
                 what="the sentinels to promote the replica")
        promoted = time.monotonic()
        producer.join(90)
        assert not producer.is_alive() and len(late) == jobs - first
        ids += late
        stuck = wait_for(lambda: (lambda rs: rs if all(r is not None and r.terminal for r in rs) else None)(
            falq.store.get_many(ids)), timeout=150, interval=0.5, what=f"all {jobs} jobs to finish")
        recs = {r.id: r for r in stuck}
        subs = emulator_submissions(stack)
        states: dict[str, int] = {}
        for r in recs.values():
            states[r.state] = states.get(r.state, 0) + 1
        over = [j for j, r in recs.items() if len(subs.get(j, [])) > r.attempts]
        resubmissions = sum(max(0, len(subs.get(j, [])) - 1) for j in recs)
        done = sorted(r.timestamps.get("completed", r.updated_at) for r in recs.values())
        gaps = [(b - a, a) for a, b in itertools.pairwise(done)]
        pause, pause_at = max(gaps) if gaps else (0.0, 0.0)
        logs = stack.worker_logs()
        warnings, lost_saves = logs.count("replica(s) within"), logs.count("was lost in a Redis failover")
        print(f"\nfailover: {jobs} jobs, primary killed at +{killed - started:.1f}s, replica promoted "
              f"{promoted - killed:.1f}s later; states {states}; lost {jobs - len(recs)}; "
              f"resubmissions {resubmissions}; over-attempts {len(over)}; longest gap between completions "
              f"{pause:.2f}s (at +{pause_at - started_wall:.1f}s); WAIT timeouts logged by workers {warnings}, "
              f"saves found lost after a WAIT {lost_saves}; last job done "
              f"{done[-1] - started_wall - (killed - started):.1f}s after the kill; "
              f"total {time.monotonic() - started:.1f}s")
        assert len(recs) == jobs and states == {"completed": jobs}, states
        assert over == [], [(j, len(subs[j]), recs[j].attempts) for j in over[:10]]
        assert all(p.poll() is None for p in stack.workers), "a worker died:\n" + stack.worker_logs()[-3000:]
        # The new master is the old replica, and job records live there.
        assert redis_client(sentinels.url).info("server")["tcp_port"] == new_port


@pytest.mark.timeout(300)
def test_failover_mid_batch_loses_nothing(sentinels: SentinelSet, tmp_path: Path) -> None:
    # About half a minute: 300 jobs, the primary SIGKILLed once a third of the first 240 completed.
    _run_failover(sentinels, tmp_path, 300, latency="fixed:0.5", fal_concurrency=40)
