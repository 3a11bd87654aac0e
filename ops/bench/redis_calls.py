"""``python -m falq.ops.bench.redis_calls [--jobs N]``: the Redis commands of one job, by caller.

Runs N text-to-image jobs on a local stack (one worker, every default on, emulator latency 0)
while Redis' ``MONITOR`` records every command, and prints per job: each top-level command,
each script (``EVALSHA``, named from ``shared/lua``) with the commands it ran inside, and the
total. The ``cost`` scenario of ``falq bench`` counts the same total from ``INFO``; this says
where it goes. ``MONITOR`` slows Redis down, so read counts here, never times.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import click
import redis

from falq.shared import scripts
from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command
from falq.shared.keys import Keys


@dataclass
class Calls:
    """Commands seen while ``jobs`` jobs ran."""

    jobs: int
    top: collections.Counter[str] = field(default_factory=collections.Counter)
    inside: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return sum(self.top.values()) + sum(self.inside.values())

    def table(self) -> str:
        lines = [f"{'per job':44s} {'calls':>7s} {'inside':>7s}"]
        for name, n in self.top.most_common():
            inner = self.inside.get(name.removeprefix("script "), 0) if name.startswith("script ") else 0
            lines.append(f"{name:44s} {n / self.jobs:7.2f} {inner / self.jobs:7.2f}")
        lines.append(f"{'total (commands inside scripts included)':44s} {self.total / self.jobs:7.2f}")
        return "\n".join(lines)


def classify(monitor_lines: list[dict[str, Any]], jobs: int) -> Calls:
    """Count ``MONITOR`` lines: a command a script runs follows its ``EVALSHA`` and is marked
    as coming from ``lua``."""
    names = {hashlib.sha1(scripts.source(n).encode()).hexdigest(): n for n in scripts.names()}
    calls = Calls(jobs)
    current = "?"
    for line in monitor_lines:
        words = str(line["command"]).split(" ")
        if line.get("client_type") == "lua" or line.get("client_address") == "lua":
            calls.inside[current] += 1
            continue
        if words[0].upper() == "EVALSHA" and len(words) > 1:
            current = _script(names, words)
            calls.top[f"script {current}"] += 1
        else:
            calls.top[words[0].upper()] += 1
    return calls


def _script(names: dict[str, str], words: list[str]) -> str:
    """``script.op`` of an ``EVALSHA`` line: the script from its SHA, the operation from the
    first ARGV (after the keys)."""
    name = names.get(words[1].strip('"'), words[1].strip('"')[:8])
    try:
        op = words[3 + int(words[2].strip('"'))].strip('"')
    except (IndexError, ValueError):
        return name
    return f"{name}.{op}"


def in_order(monitor_lines: list[dict[str, Any]]) -> list[str]:
    """The top-level commands in the order Redis ran them, one line each: the client's port
    (one per connection: producer, worker, its loops), the command and its first key, and for a
    script the commands it ran inside."""
    names = {hashlib.sha1(scripts.source(n).encode()).hexdigest(): n for n in scripts.names()}
    out: list[list[Any]] = []
    for line in monitor_lines:
        words = str(line["command"]).split(" ")
        if line.get("client_type") == "lua" or line.get("client_address") == "lua":
            if out and out[-1][2]:
                out[-1][3] += 1
            continue
        is_script = words[0].upper() == "EVALSHA" and len(words) > 1
        what = f"script {_script(names, words)}" if is_script else words[0].upper()
        first_key = words[3] if is_script and len(words) > 3 else (words[1] if len(words) > 1 else "")
        out.append([line.get("client_port", ""), what, is_script, 0, first_key])
    return [f"{port:>6} {what:28s} {('[' + str(n) + ']') if script else '':>5} {key[:60]}"
            for port, what, script, n, key in out]


def measure(jobs: int, latency_s: float = 0.0) -> Calls:
    """Run ``jobs`` jobs under ``MONITOR`` on a fresh local stack."""
    calls, _ = _monitored(jobs, latency_s)
    return calls


def _monitored(jobs: int, latency_s: float = 0.0) -> tuple[Calls, list[dict[str, Any]]]:
    from falq.ops.bench.harness import Harness
    from falq.testing.stack import DevStack

    with DevStack() as stack:
        h = Harness(stack, quick=True)
        h.reset(latency=f"fixed:{latency_s:g}" if latency_s else "0")
        h.start_falq_workers(1, 100)
        time.sleep(2.0)  # start-up traffic is not the job's
        seen: list[dict[str, Any]] = []
        stop = threading.Event()

        def listen() -> None:
            client = redis.Redis.from_url(stack.redis.url)
            with client.monitor() as m:
                for cmd in m.listen():
                    if stop.is_set():
                        return
                    seen.append(cmd)

        threading.Thread(target=listen, daemon=True, name="monitor").start()
        time.sleep(0.5)
        # Polled on a connection of its own, whose commands are left out: they are not the job's.
        poller = redis.Redis.from_url(stack.redis.url, single_connection_client=True)
        address = str(poller.client_info()["addr"]).rsplit(":", 1)
        completed = Keys(stack.settings().key_prefix).state("completed")
        h.enqueue(jobs, "calls")
        h.wait_until(lambda: int(poller.zcard(completed)) >= jobs, 300 + 2 * latency_s, 0.5, "jobs")
        stop.set()
        h.redis.ping()  # one more line so the listener sees the stop
        time.sleep(0.5)
        poller.close()
        h.stop_all()
    ours = (address[0], address[1])
    lines = [c for c in seen if (c.get("client_address"), c.get("client_port")) != ours]
    return classify(lines, jobs), lines


@click.command(name="redis-calls", context_settings=HELP_OPTIONS)
@click.option("--jobs", default=100, show_default=True, type=click.IntRange(1, 10_000), help="Jobs to run.")
@click.option("--trace", is_flag=True, help="Also print every command in the order Redis ran it (use with --jobs 1).")
@click.option("--latency", "latency_s", default=0.0, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds each request takes at the emulated fal: what a job costs while it waits there "
                   "(the background loops' commands of that time are counted too).")
def main_command(jobs: int, trace: bool, latency_s: float) -> int:
    """Print the Redis commands of one job on the default path, by caller."""
    flag = (" --trace" if trace else "") + (f" --latency {latency_s:g}" if latency_s else "")
    print(f"{jobs} jobs, one worker, every default on (python -m falq.ops.bench.redis_calls --jobs {jobs}{flag})")
    calls, lines = _monitored(jobs, latency_s)
    if trace:
        print("\n".join(in_order(lines)))
    print(calls.table())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(main_command, argv, prog_name="python -m falq.ops.bench.redis_calls")


if __name__ == "__main__":
    raise SystemExit(main())
