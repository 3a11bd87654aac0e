"""``make soak``: many jobs through two workers; do memory, Redis keys and connections stay bounded?

Starts a DevStack (Redis, moto S3, the fal emulator with low fault rates: 1% 5xx, 1% 429,
0.5% COMPLETED-with-error, 1 KB images: the soak is about what stays bounded, and rendering
realistic images in the same process as the emulator and moto starves them on 2 cores) and
``--workers`` ``falq worker`` processes,
enqueues ``--jobs`` bulk jobs with ``Falq.submit_many`` and, while they run, samples every
``--sample-s`` seconds: each worker's RSS (the process and its children, from /proc), its
open file descriptors and TCP connections (its sockets in /proc/net/tcp{,6}), Redis
``used_memory`` and how many jobs finished.

At the end it prints the RSS over time, whether RSS after warm-up stayed flat (within
``--rss-tolerance``), Redis memory per finished job and after the run, the keys left in
Redis by kind (leases, limiter slots, holders, the ledger, waiting sets, queues, streams:
none may be left beyond the records and what expires with them) and each worker's fds and
connections at the end against the start. Exit status 1 if any bound is broken.

Example::

    python -m falq.ops.soak --jobs 3000 --workers 2
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import click

from falq.shared.commands import HELP_OPTIONS
from falq.shared.commands import run as run_command
from falq.shared.keys import Keys
from falq.testing.stack import DevStack

#: How long the audit waits at most for acks and the end-of-job streams to drain (seconds).
SETTLE_S = 120.0
EMULATOR = {"latency": "uniform:0.3,1.5", "concurrency": 100_000, "fail_5xx": 0.01, "fail_429": 0.01,
            "completed_error": 0.005, "tiny_images": True, "drop": 0.0, "slow": 0.0}
QUEUES = ("falq.interactive", "falq.bulk")
_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_KID = re.compile(r"(?<=:limits:)[0-9a-f]{8,16}(?=:|$)")
_NUM = re.compile(r"\d{4}-\d{2}-\d{2}|\d{6,}")


# --- /proc --------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _socket_inodes(pid: int) -> tuple[int, set[str]]:
    """(open fds, inodes of its sockets)."""
    fds, inodes = 0, set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0, set()
    for n in names:
        fds += 1
        try:
            target = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return fds, inodes


def _tcp_inodes(pid: int) -> set[str]:
    found: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9:
                        found.add(cols[9])
        except (OSError, StopIteration):
            continue
    return found


@dataclass
class ProcSample:
    rss_kb: int
    fds: int
    tcp: int


def sample_process(pid: int) -> ProcSample:
    """RSS, fds and TCP connections of ``pid`` with its children."""
    rss = fds = 0
    sockets: set[str] = set()
    for p in _descendants(pid):
        rss += _rss_kb(p)
        n, inodes = _socket_inodes(p)
        fds += n
        sockets |= inodes
    return ProcSample(rss, fds, len(sockets & _tcp_inodes(pid)))


@dataclass
class Sample:
    t: float
    done: int
    redis_used: int
    workers: list[ProcSample] = field(default_factory=list)


# --- Redis audit -------------------------------------------------------------------------------
def kind_of(key: str) -> str:
    """The key with job ids, limiter key ids and numbers (days, minutes) replaced."""
    return _NUM.sub("{n}", _KID.sub("{kid}", _ID.sub("{id}", key)))


def tally_ttl(info: dict[str, Any], kind: str, ttl: int) -> None:
    """Count one sampled key's ``TYPE`` and ``TTL`` answers into its kind's ``info``.

    ``TTL`` answers -1 for a key without a TTL and -2 for a key that no longer exists: a key that
    expired between the ``SCAN`` that found it and the ``TTL`` (the point of a TTL) is not counted
    at all, and never as a key without one. Only -1 is a missing TTL."""
    if ttl == -2:
        info["count"] -= 1  # gone: it is not left in Redis
        return
    info["type"] = kind
    if ttl >= 0:
        info["ttl"] += 1
        info["max_ttl"] = max(info["max_ttl"], ttl)
    else:
        info["no_ttl"] += 1


def _drained(r: Any, keys: Keys) -> bool:
    """Celery acked every message and the end-of-job streams hold nothing."""
    pipe = r.pipeline(transaction=False)
    pipe.hlen("unacked")
    pipe.zcard("unacked_index")
    pipe.xlen(keys.ended)
    pipe.xlen(keys.archive)
    pipe.xlen(keys.chain_done)
    return not any(int(n) for n in pipe.execute())


def audit_keys(r: Any, prefix: str, record_ttl_s: int) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every key by kind (count, type, how many have a TTL, the longest TTL) and the problems found."""
    kinds: dict[str, dict[str, Any]] = {}
    for raw in r.scan_iter(count=2000):
        key = raw.decode(errors="replace")
        k = kinds.setdefault(kind_of(key), {"count": 0, "type": "", "ttl": 0, "no_ttl": 0, "max_ttl": 0, "keys": []})
        k["count"] += 1
        if len(k["keys"]) < 50:
            k["keys"].append(key)
    pipe = r.pipeline(transaction=False)
    for info in kinds.values():
        for key in info["keys"]:
            pipe.type(key)
            pipe.ttl(key)
    answers = iter(pipe.execute())
    for info in kinds.values():
        for _ in info["keys"]:
            tally_ttl(info, next(answers).decode(), int(next(answers)))

    problems: list[str] = []

    def members(pattern: str, cmd: str) -> int:
        total = 0
        for raw in r.scan_iter(match=pattern, count=2000):
            total += int(r.execute_command(cmd, raw))
        return total

    p = prefix
    checks = {
        "leases ({p}:lease:*)": sum(1 for _ in r.scan_iter(match=f"{p}:lease:*", count=2000)),
        "limiter slots ({p}:limits:*:slots)": members(f"{p}:limits:*:slots", "ZCARD"),
        "endpoint slots ({p}:limits:*:slots:ep:*)": members(f"{p}:limits:*:slots:ep:*", "ZCARD"),
        "tenant slots ({p}:limits:*:slots:t:*)": members(f"{p}:limits:*:slots:t:*", "ZCARD"),
        "ledger entries ({p}:ledger)": int(r.hlen(f"{p}:ledger")),
        "dispatch room ({p}:inflight)": int(r.zcard(f"{p}:inflight")),
        "holders ({p}:holders)": int(r.zcard(f"{p}:holders")),
        "waiting sets ({p}:limits:*:waiting:*)": members(f"{p}:limits:*:waiting:*", "ZCARD"),
        "callback outbox ({p}:outbox)": int(r.zcard(f"{p}:outbox")),
        "queued messages (falq.interactive/bulk)": sum(int(r.llen(q)) for q in QUEUES),
        "unacked messages (kombu unacked)": int(r.hlen("unacked")) + int(r.zcard("unacked_index")),
        "stream entries (XLEN)": sum(int(r.xlen(key)) for v in kinds.values() if v["type"] == "stream"
                                     for key in v["keys"]),
    }
    for name, n in checks.items():
        if n:
            problems.append(f"{n} {name} left")
    records = int(kinds.get(f"{p}:job:{{id}}", {}).get("count", 0))
    active = ("waiting", "queued", "submitting", "in_queue", "in_progress", "mirroring")
    for index in [f"{p}:created"] + [f"{p}:state:{s}" for s in (*active, "completed", "failed", "cancelled")]:
        n = int(r.zcard(index))
        if index.rsplit(":", 1)[1] in active and n:
            problems.append(f"{n} job(s) still in {index}")
        elif n > records:
            problems.append(f"{index} lists {n} ids for {records} records (ids outlive their records)")
    tenant_ids = sum(int(r.zcard(k)) for k in r.scan_iter(match=f"{p}:created:t:*", count=2000))
    if tenant_ids > records:
        problems.append(f"{p}:created:t:* list {tenant_ids} ids for {records} records (ids outlive their records)")
    for kind, info in kinds.items():
        per_job = "{id}" in kind and not kind.startswith("_kombu")
        if per_job and info["no_ttl"]:
            problems.append(f"{info['no_ttl']} sampled {kind} keys (of {info['count']}) have no TTL")
        if per_job and info["max_ttl"] > record_ttl_s:
            problems.append(f"{kind} keys outlive the records (TTL {info['max_ttl']} s > {record_ttl_s} s)")
    return {"checks": checks, "kinds": kinds}, problems  # type: ignore[return-value]


# --- the run ----------------------------------------------------------------------------------
def _enqueue(falq: Any, n: int, batch: int, out: dict[str, Any]) -> None:
    from falq.producers.client import JobRequest
    from falq.shared.fal.endpoints import TEXT_TO_IMAGE

    t0 = time.monotonic()
    try:
        for start in range(0, n, batch):
            reqs = [JobRequest(TEXT_TO_IMAGE["standard"], {"prompt": f"soak job {i}", "seed": i}, "bulk")
                    for i in range(start, min(n, start + batch))]
            falq.submit_many(reqs)
            out["enqueued"] = min(n, start + batch)
    except Exception as exc:  # reported, and the run fails
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["seconds"] = time.monotonic() - t0


def soak(jobs: int, workers: int, concurrency: int, sample_s: float, warmup: float, tolerance: float,
         batch: int, timeout_s: float, record_ttl_s: int | None = None) -> int:
    import redis

    from falq.producers import Falq
    from falq.shared.jobs.records import TERMINAL

    print(f"falq soak: {jobs} jobs, {workers} workers x {concurrency}, sampling every {sample_s:g}s", flush=True)
    env = {"FALQ_RECORD_TTL_S": str(record_ttl_s)} if record_ttl_s else {}
    with DevStack(emulator=EMULATOR, env=env) as stack:
        procs = [stack.start_worker(concurrency=concurrency) for _ in range(workers)]
        settings = stack.settings()
        r = redis.Redis.from_url(stack.redis.url)
        p = settings.key_prefix
        falq = Falq(settings)
        falq.app.connection_for_write().ensure_connection(max_retries=3)
        time.sleep(4)  # workers up, connected, idle
        idle = [sample_process(w.pid) for w in procs]
        mem0 = r.info("memory")
        used0, clients0 = int(mem0["used_memory"]), int(mem0.get("mem_clients_normal", 0))

        enq: dict[str, Any] = {"enqueued": 0}
        feeder = threading.Thread(target=_enqueue, args=(falq, jobs, batch, enq), daemon=True)
        t0 = time.monotonic()
        feeder.start()
        samples: list[Sample] = []

        def done_count() -> int:
            pipe = r.pipeline(transaction=False)
            for s in TERMINAL:
                pipe.zcard(f"{p}:state:{s}")
            return int(sum(pipe.execute()))

        def take() -> Sample:
            s = Sample(time.monotonic() - t0, done_count(), int(r.info("memory")["used_memory"]),
                       [sample_process(w.pid) for w in procs])
            samples.append(s)
            return s

        while True:
            time.sleep(sample_s)
            s = take()
            print(f"  t={s.t:6.0f}s  enqueued {enq['enqueued']:>6}  finished {s.done:>6}  "
                  f"rss {' '.join(f'{w.rss_kb / 1024:.0f}' for w in s.workers)} MB  "
                  f"redis {s.redis_used / 2**20:.1f} MB", flush=True)
            if "error" in enq or (s.done >= jobs) or s.t > timeout_s or any(w.poll() is not None for w in procs):
                break
        feeder.join(30)
        time.sleep(max(3.0, settings.lease_ttl_s))  # let the last steps release what they hold
        # Acks and the end-of-job stream drain behind the last job (the archiver commits in
        # batches; the maintenance pass trims what every group acknowledged): what must be empty
        # is audited once they drained, or after SETTLE_S.
        settle_t0 = time.monotonic()
        while time.monotonic() - settle_t0 < SETTLE_S and not _drained(r, falq.store.keys):
            time.sleep(1.0)
        print(f"  bookkeeping drained {time.monotonic() - settle_t0:.0f}s after the wait for leases", flush=True)
        if record_ttl_s:  # see what is left once the records themselves expired
            print(f"  waiting {record_ttl_s + 5}s for the records to expire (--record-ttl)", flush=True)
            time.sleep(record_ttl_s + 5)
        final = take()
        counts = falq.store.counts()
        audit, problems = audit_keys(r, p, settings.record_ttl_s)
        mem_end = r.info("memory")
        used_end, clients_end = int(mem_end["used_memory"]), int(mem_end.get("mem_clients_normal", 0))
        dead = [i for i, w in enumerate(procs) if w.poll() is not None]
        logs_tail = stack.worker_logs()[-2000:] if dead else ""

    # --- report --------------------------------------------------------------------------------
    ok = True
    print("\nRSS over time (MB, worker process + children):")
    step = max(1, len(samples) // 20)
    shown = samples[::step] + ([samples[-1]] if samples[-1] not in samples[::step] else [])
    print("   time  finished  " + "  ".join(f"w{i} rss  fds  tcp" for i in range(workers)) + "   redis MB")
    for s in shown:
        cols = "  ".join(f"{w.rss_kb / 1024:6.1f} {w.fds:4d} {w.tcp:4d}" for w in s.workers)
        print(f"  {s.t:5.0f}s  {s.done:8d}  {cols}   {s.redis_used / 2**20:8.1f}")

    finished = final.done
    print(f"\njobs: {counts}  (enqueue of {enq.get('enqueued', 0)} took {enq.get('seconds', 0):.1f}s"
          f"{'; enqueue failed: ' + enq['error'] if 'error' in enq else ''})")
    if finished < jobs or "error" in enq:
        ok = False
        print(f"FAIL: only {finished} of {jobs} jobs finished")
    if dead:
        ok = False
        print(f"FAIL: worker(s) {dead} died\n{logs_tail}")

    after = [s for s in samples if s.done >= warmup * jobs] or samples[-2:]
    print(f"\nRSS after warm-up (the first {warmup:.0%} of jobs), {len(after)} samples:")
    for i in range(workers):
        vals = [s.workers[i].rss_kb for s in after]
        lo, hi = min(vals), max(vals)
        growth = hi / lo - 1 if lo else 0.0
        flat = growth <= tolerance
        ok &= flat
        print(f"  worker {i}: {lo / 1024:.1f} .. {hi / 1024:.1f} MB (spread {growth:+.1%}) "
              f"{'PASS' if flat else 'FAIL'} (flat within {tolerance:.0%})")

    # Client connections' buffers count in used_memory (16 KB and more each): a worker that opens a
    # few more connections at a burst would read as more memory per job. The data is the rest.
    data0, data_end = used0 - clients0, used_end - clients_end
    print(f"\nRedis used_memory: {used0 / 2**20:.1f} MB before, {used_end / 2**20:.1f} MB after the run; "
          f"{(data_end - data0) / max(1, finished):.0f} bytes of data per finished job, client buffers "
          f"({clients0 / 2**10:.0f} KB before, {clients_end / 2**10:.0f} KB after) left out; "
          f"{(used_end - used0) / max(1, finished):.0f} with them "
          f"(records kept FALQ_RECORD_TTL_S={settings.record_ttl_s} s)")

    print("\nkeys left in Redis by kind (count, type, TTL set/unset among up to 50 sampled, longest TTL):")
    for kind, info in sorted(audit["kinds"].items(), key=lambda kv: -kv[1]["count"]):
        print(f"  {kind:50s} {info['count']:7d}  {info['type']:6s} ttl {info['ttl']}/{info['no_ttl']}"
              f" max {info['max_ttl']}s")
    print("bookkeeping that must be empty once every job finished:")
    for name, n in audit["checks"].items():
        print(f"  {name:50s} {n}")
    for prob in problems:
        ok = False
        print(f"FAIL: {prob}")
    if not problems:
        print("PASS: nothing left beyond the records and keys that expire with them")

    # With hundreds of jobs in flight the pools' size swings by half from one sample to the next,
    # so one sample is no bound: a leak is an end above the peak of the first half after warm-up.
    first_half = after[: max(1, len(after) // 2)]
    print("\nfile descriptors / TCP connections per worker: idle before jobs, peak in the first half after "
          "warm-up, end:")
    for i in range(workers):
        a, c = idle[i], final.workers[i]
        peak_fds = max(smp.workers[i].fds for smp in first_half)
        peak_tcp = max(smp.workers[i].tcp for smp in first_half)
        fd_ok = c.fds <= peak_fds + max(16, peak_fds // 10)
        tcp_ok = c.tcp <= peak_tcp + max(16, peak_tcp // 10)
        ok &= fd_ok and tcp_ok
        print(f"  worker {i}: fds {a.fds} / {peak_fds} / {c.fds} {'PASS' if fd_ok else 'FAIL'};  "
              f"tcp {a.tcp} / {peak_tcp} / {c.tcp} {'PASS' if tcp_ok else 'FAIL'}  (end <= that peak + 10%)")
    print("\nSOAK", "PASS" if ok else "FAIL")
    return 0 if ok else 1


@click.command(name="soak", help=(__doc__ or "").split("\n\n")[0], context_settings=HELP_OPTIONS)
@click.option("--jobs", type=int, default=50_000, show_default=True, help="bulk jobs to run")
@click.option("--workers", type=int, default=2, show_default=True, help="falq worker processes")
@click.option("--concurrency", type=int, default=200, show_default=True, help="jobs in flight per worker")
@click.option("--sample-s", type=float, default=5.0, show_default=True, help="seconds between samples")
@click.option("--warmup", type=float, default=0.2, show_default=True,
              help="share of the jobs to finish before RSS must stay flat")
@click.option("--rss-tolerance", type=float, default=0.10, show_default=True, help="allowed RSS spread after warm-up")
@click.option("--batch", type=int, default=1000, show_default=True, help="jobs per submit_many call")
@click.option("--timeout", "timeout_s", type=float, default=4 * 3600, show_default=True, help="give up after (s)")
@click.option("--record-ttl", type=int, default=None,
              help="FALQ_RECORD_TTL_S for the run; then wait that long and audit what outlives the records")
def command(jobs: int, workers: int, concurrency: int, sample_s: float, warmup: float, rss_tolerance: float,
            batch: int, timeout_s: float, record_ttl: int | None) -> int:
    return soak(jobs, workers, concurrency, sample_s, warmup, rss_tolerance, batch, timeout_s, record_ttl)


def main(argv: list[str] | None = None) -> int:
    """``make soak`` / ``python -m falq.ops.soak``: exit code 0 if every bound held, 1 if not."""
    return run_command(command, argv, prog_name="python -m falq.ops.soak")


if __name__ == "__main__":
    sys.exit(main())
