"""Worker hosts in their own network namespaces, for partition tests (needs root, iproute2, iptables).

The layout: one Linux bridge in the root namespace holding the gateway address
(``10.X.Y.1/24``), and per worker "host" a namespace whose veth pair has one end on the
bridge and the other inside the namespace (``10.X.Y.(10+n)``). Redis, moto's S3 server and
the fal emulator run in the root namespace bound to the gateway address, so a worker in a
namespace reaches each of them over a real, separate TCP path, and each can be cut alone:
:meth:`Host.cut` adds ``DROP`` rules for one destination port inside that namespace (both
directions: packets to the port and from it), :meth:`Host.heal` removes them. Nothing times
out faster than on a real partition: dropped packets are silence, not refusals.

The lab fails loudly (:class:`NetnsUnavailable`, naming what is missing) rather than letting
a test skip: a partition test that did not partition anything must not pass.

Example::

    with NetLab() as lab, PartitionStack(lab) as stack:
        a = lab.add_host("a")
        stack.start_worker(a)
        with a.cut(stack.redis_port):       # a cannot reach Redis ...
            time.sleep(60)
        # ... and can again
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from falq.testing.stack import ROOT, DevStack, RedisServer, S3Server


class NetnsUnavailable(RuntimeError):
    """This machine cannot build the lab (not root, no ``ip``/``iptables``, no netns or veth)."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return done


def require_netns() -> None:
    """Raise :class:`NetnsUnavailable` with the reason when namespaces cannot be used here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("partition tests need root (ip netns, veth pairs, iptables); run them as root")
    for tool, pkg in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"`{tool}` is not on PATH (Debian: apt-get install {pkg})")


@dataclass
class Host:
    """One worker host: a network namespace with one address on the lab's bridge."""

    lab: NetLab
    name: str
    ns: str
    ip: str
    outer: str = ""
    cuts: set[int] = field(default_factory=set)

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def _rules(self, port: int) -> list[list[str]]:
        gw = self.lab.gateway
        return [["OUTPUT", "-p", "tcp", "-d", gw, "--dport", str(port), "-j", "DROP"],
                ["INPUT", "-p", "tcp", "-s", gw, "--sport", str(port), "-j", "DROP"]]

    def block(self, port: int) -> None:
        """Cut this host off from the service on ``port`` (packets silently dropped both ways)."""
        if port in self.cuts:
            return
        for rule in self._rules(port):
            _run(*self.exec_argv(["iptables", "-w", "-A", *rule]))
        self.cuts.add(port)

    def unblock(self, port: int) -> None:
        if port not in self.cuts:
            return
        for rule in self._rules(port):
            _run(*self.exec_argv(["iptables", "-w", "-D", *rule]), check=False)
        self.cuts.discard(port)

    @contextlib.contextmanager
    def cut(self, *ports: int) -> Iterator[None]:
        """``with host.cut(port): ...`` -- the link is down inside the block, healed after it."""
        for p in ports:
            self.block(p)
        try:
            yield
        finally:
            for p in ports:
                self.unblock(p)

    def can_reach(self, port: int, timeout_s: float = 1.0) -> bool:
        """Whether a TCP connection from inside the namespace to the gateway's ``port`` opens."""
        code = (f"import socket;s=socket.socket();s.settimeout({timeout_s});"
                f"s.connect(('{self.lab.gateway}',{port}));print('ok')")
        done = subprocess.run(self.exec_argv([sys.executable, "-c", code]), capture_output=True, text=True,
                              timeout=timeout_s + 10)
        return done.stdout.strip() == "ok"


class NetLab:
    """The bridge and the namespaces of one test run; everything is removed on exit.

    Parameters:
        tag: a short unique tag for interface and namespace names (default: from the pid).
    """

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or f"fq{os.getpid() % 100000}"
        n = os.getpid() % 200 + 20
        self.subnet = f"10.211.{n}"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"{self.tag}br"[:15]
        self.hosts: list[Host] = []

    def __enter__(self) -> NetLab:
        require_netns()
        self.close()  # leftovers of a killed run with the same tag
        try:
            _run("ip", "link", "add", "name", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        except NetnsUnavailable as exc:
            self.close()
            raise NetnsUnavailable(f"cannot create the lab's bridge: {exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        """A new namespace ``{tag}-{name}`` with a veth pair onto the bridge."""
        n = len(self.hosts)
        ns = f"{self.tag}-{name}"
        outer, inner = f"{self.tag}h{n}"[:15], f"{self.tag}n{n}"[:15]
        ip = f"{self.subnet}.{10 + n}"
        try:
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", ns)
            _run("ip", "link", "set", outer, "master", self.bridge)
            _run("ip", "link", "set", outer, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", inner)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _run("ip", "netns", "exec", ns, "iptables", "-w", "-L", "OUTPUT", "-n")
        except NetnsUnavailable as exc:
            raise NetnsUnavailable(f"cannot create host namespace {ns} (netns + veth + iptables): {exc}") from None
        host = Host(self, name, ns, ip, outer)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        names = _run("ip", "netns", "list", check=False).stdout.split()
        for ns in {h.ns for h in self.hosts} | {x for x in names if x.startswith(f"{self.tag}-")}:
            _run("ip", "netns", "del", ns, check=False)  # takes its veth ends (and their peers) along
        links = _run("ip", "-o", "link", "show", check=False).stdout
        for line in links.splitlines():  # the peers may outlive their namespace for a moment
            name = line.split(":", 2)[1].strip().split("@", 1)[0] if line.count(":") >= 2 else ""
            if name.startswith(f"{self.tag}h"):
                _run("ip", "link", "del", name, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        self.hosts.clear()


class _BoundS3(S3Server):
    def __init__(self, host: str) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        self.url = ""


class PartitionStack(DevStack):
    """A :class:`~falq.testing.stack.DevStack` whose Redis, S3 and emulator listen on the lab's
    gateway address, with workers started inside the lab's host namespaces."""

    def __init__(self, lab: NetLab, *, emulator: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(emulator=emulator, env=env)
        self.lab = lab
        self.redis = RedisServer(self.workdir / "redis", host=lab.gateway)
        self.s3 = _BoundS3(lab.gateway)
        #: worker process -> the host it runs on
        self.host_of: dict[int, Host] = {}

    def start(self) -> PartitionStack:
        from falq.emulator.server import EmulatorServer

        self.redis.start()
        self.s3.start()
        self.emu = EmulatorServer(host=self.lab.gateway, **self.emulator_overrides).start()
        return self

    def __enter__(self) -> PartitionStack:
        return self.start()

    @property
    def redis_port(self) -> int:
        return self.redis.port

    @property
    def fal_port(self) -> int:
        return int(self.emu.url.rsplit(":", 1)[1])

    @property
    def s3_port(self) -> int:
        return int(self.s3.url.rsplit(":", 1)[1])

    def start_worker_on(self, host: Host, concurrency: int = 50, *, env: dict[str, str] | None = None,
                        loglevel: str = "WARNING") -> subprocess.Popen[bytes]:
        """Start ``falq worker`` inside ``host``'s namespace; its log is ``workdir/worker-{host}.log``."""
        log = open(self.workdir / f"worker-{host.name}.log", "ab")  # noqa: SIM115 - owned by the child
        full_env = {**os.environ, **self.env(**(env or {})), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            host.exec_argv([sys.executable, "-m", "falq.workers", "-c", str(concurrency), "-l", loglevel,
                            "-n", f"{host.name}-{os.getpid()}@%h"]),
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.workers.append(proc)
        self.host_of[proc.pid] = host
        return proc

    def stop(self) -> None:
        for proc in self.workers:  # a cut-off worker cannot shut down warmly: no waiting for it
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        super().stop()

    def host_log(self, host: Host) -> str:
        path = self.workdir / f"worker-{host.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
