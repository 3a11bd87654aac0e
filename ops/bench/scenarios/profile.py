"""Where one worker's time goes on a job's path: the worker under pyinstrument.

One falq worker (``python -m falq.ops.bench.profile_worker``: the worker with a sampling
profiler started after it is idle), every default on, emulator latency 0 and 1 KB images,
a few hundred jobs through ``Falq.submit_many``. Writes ``docs/bench/profile.md``: the
command, date, CPU per job, the top functions by own time (idle gevent hub excluded) and
falq's own functions by inclusive time (the flat form of a flame graph: pyinstrument's HTML
call tree of a few hundred jobs is over 100 MB, too big to commit). No reference rows: the
output is the tables, for whoever cuts the cost of a job.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from falq.ops.bench.harness import Harness, children, cpu_s
from falq.ops.bench.model import Row
from falq.ops.bench_limiter import wait_ready
from falq.testing.stack import ROOT

NAME = "profile"
#: Where the table and the HTML call tree go (committed beside the bench's other figures).
OUT_DIR = ROOT / "docs" / "bench"
#: Functions where a gevent worker waits for I/O: the hub's loop and its poll; not job work.
IDLE = {("run", "gevent/hub.py"), ("[idle]", "")}
TOP = 40
#: Path parts that make a frame falq's own code (the top-level packages ``falq/`` links to).
FALQ_DIRS = ("workers/", "shared/", "producers/", "gateway/", "ops/", "falq/")


@dataclass
class Fn:
    """One function's share of the profile."""

    name: str
    where: str
    own_s: float = 0.0


def _walk(frame: Any, acc: dict[tuple[str, str], Fn]) -> None:
    kids = [c for c in frame.children if not c.is_synthetic]
    own = frame.time - sum(c.time for c in kids)
    where = f"{frame.file_path_short or ''}:{frame.line_no or ''}"
    key = (frame.function or "?", where)
    acc.setdefault(key, Fn(key[0], where)).own_s += max(own, 0.0)
    for c in kids:
        _walk(c, acc)


def _inclusive(frame: Any, acc: dict[tuple[str, str], Fn], above: frozenset[tuple[str, str]]) -> None:
    """Inclusive time of falq's functions; a recursive call is counted once, at its outermost frame."""
    path = frame.file_path_short or ""
    key = (frame.function or "?", f"{path}:{frame.line_no or ''}")
    ours = "site-packages" not in (frame.file_path or "") and any(d in path for d in FALQ_DIRS)
    if ours and key not in above:
        acc.setdefault(key, Fn(*key)).own_s += frame.time
        above = above | {key}
    for c in frame.children:
        if not c.is_synthetic:
            _inclusive(c, acc, above)


#: Libraries a sample is given to (the innermost of them on its stack), by top-level package.
LIBRARIES = {
    "httpx": "HTTP (httpx, httpcore, h11)", "httpcore": "HTTP (httpx, httpcore, h11)",
    "h11": "HTTP (httpx, httpcore, h11)", "httpx_sse": "HTTP (httpx, httpcore, h11)",
    "botocore": "S3 (boto3, botocore, urllib3)", "boto3": "S3 (boto3, botocore, urllib3)",
    "urllib3": "S3 (boto3, botocore, urllib3)", "redis": "Redis (redis-py)",
    "kombu": "Celery (celery, kombu)", "celery": "Celery (celery, kombu)", "billiard": "Celery (celery, kombu)",
    "vine": "Celery (celery, kombu)", "pydantic": "pydantic", "pydantic_core": "pydantic",
    "sqlalchemy": "SQL (SQLAlchemy)", "PIL": "Pillow", "gevent": "gevent",
}


def _library(frame: Any, current: str) -> str:
    """The library a frame's own time goes to: a library's frame names it (gevent only when no
    other library called it: a socket wait inside redis-py is redis-py's), falq's frame is
    falq's own code, anything else keeps its caller's."""
    path = frame.file_path or ""
    if "site-packages/" in path:
        lib = LIBRARIES.get(path.split("site-packages/", 1)[1].split("/", 1)[0])
        if lib == "gevent":
            return current if current != "other" else lib
        return lib or current
    if any(d in (frame.file_path_short or "") for d in FALQ_DIRS):
        return "profiler" if "/bench/" in path else "falq's own code"
    return current


def _by_library(frame: Any, acc: dict[str, float], current: str = "other") -> None:
    lib = _library(frame, current)
    kids = [c for c in frame.children if not c.is_synthetic]
    if not (frame.function == "run" and "gevent/hub.py" in (frame.file_path or "")):  # the idle hub
        acc[lib] = acc.get(lib, 0.0) + max(frame.time - sum(c.time for c in kids), 0.0)
    for c in kids:
        _by_library(c, acc, lib)


def _idle(fn: Fn) -> bool:
    return any(fn.name == name and path in fn.where for name, path in IDLE)


def top_table(session: Any, n_jobs: int, cpu_ms_per_job: float, command: str) -> str:
    """The Markdown page: header (command, date, figures) and the top functions by own time."""
    acc: dict[tuple[str, str], Fn] = {}
    root = session.root_frame()
    if root is not None:
        _walk(root, acc)
    fns = sorted(acc.values(), key=lambda f: f.own_s, reverse=True)
    idle = sum(f.own_s for f in fns if _idle(f))
    busy = [f for f in fns if not _idle(f)]
    busy_s = sum(f.own_s for f in busy)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Profile of one worker's job path",
        "",
        f"Generated {stamp} on {platform.node()} by `{command}` "
        f"(scenario `{NAME}`, `ops/bench/scenarios/profile.py`).",
        "",
        f"{n_jobs} jobs, one falq worker (gevent, every default on), emulator latency 0, 1 KB images. "
        "pyinstrument samples the worker from when it is idle to when the last job completed; "
        "the sampler's own cost is in the CPU figure (the unprofiled figure is the `cost` scenario's).",
        "",
        f"- worker CPU per job (from /proc, profiler overhead included): {cpu_ms_per_job:.1f} ms",
        f"- sampled wall time: {session.duration:.1f} s, of which idle in the gevent hub {idle:.1f} s; "
        f"busy {busy_s * 1000 / max(n_jobs, 1):.1f} ms per job",
        "",
        f"Top {TOP} functions by own time (time in the function itself, not in what it calls):",
        "",
        "| # | function | where | own ms/job | % of busy |",
        "|---:|---|---|---:|---:|",
    ]
    for i, f in enumerate(busy[:TOP], 1):
        share = 100 * f.own_s / busy_s if busy_s else 0.0
        lines.append(f"| {i} | `{f.name}` | `{f.where}` | {f.own_s * 1000 / max(n_jobs, 1):.2f} | {share:.1f} |")
    libs: dict[str, float] = {}
    if root is not None:
        _by_library(root, libs)
    lib_total = sum(libs.values())
    lines += ["", "Busy time by library (each sample given to the innermost library on its stack; falq's "
              "own code where none is):", "", "| library | ms/job | % of busy |", "|---|---:|---:|"]
    for name, t in sorted(libs.items(), key=lambda kv: kv[1], reverse=True):
        share = 100 * t / lib_total if lib_total else 0.0
        if share >= 0.5:
            lines.append(f"| {name} | {t * 1000 / max(n_jobs, 1):.2f} | {share:.1f} |")
    inc: dict[tuple[str, str], Fn] = {}
    if root is not None:
        _inclusive(root, inc, frozenset())
    lines += ["", f"Top {TOP} of falq's own functions by inclusive time (the function and all it calls):", "",
              "| # | function | where | ms/job | % of busy |", "|---:|---|---|---:|---:|"]
    for i, f in enumerate(sorted(inc.values(), key=lambda f: f.own_s, reverse=True)[:TOP], 1):
        share = 100 * f.own_s / busy_s if busy_s else 0.0
        lines.append(f"| {i} | `{f.name}` | `{f.where}` | {f.own_s * 1000 / max(n_jobs, 1):.2f} | {share:.1f} |")
    return "\n".join(lines) + "\n"


def run(h: Harness) -> list[Row]:
    from pyinstrument.session import Session

    n = h.size("profile.jobs", 300, 1000)
    h.reset()
    ctl = h.stack.workdir / f"profile-{time.monotonic_ns()}"
    ctl.mkdir(parents=True)
    log = open(h.stack.workdir / "profile-worker.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "falq.ops.bench.profile_worker", str(ctl), "-c", "100", "-l", "WARNING",
         "-n", f"profile-{os.getpid()}@%h"],
        cwd=ROOT, env=h.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    h.stack.workers.append(proc)
    wait_ready(h.falq(), 1)
    time.sleep(1.0)
    pids = children(proc.pid)
    (ctl / "start").touch()
    time.sleep(0.2)
    cpu0 = cpu_s(pids)
    h.enqueue(n, "profile")
    h.wait_until(lambda: h.completed() >= n, 600, 0.2, "profiled jobs")
    cpu_ms = (cpu_s(pids) - cpu0) * 1000 / n
    (ctl / "stop").touch()
    saved = ctl / "worker.pyisession"
    h.wait_until(saved.exists, 120, 0.1, "the profile")
    session = Session.load(str(saved))
    command = "python -m falq.ops.bench" + (" --quick" if h.quick else "") + " --only profile"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "profile.md").write_text(top_table(session, n, cpu_ms, command))
    print(f"bench: profile written to {OUT_DIR / 'profile.md'}", file=sys.stderr, flush=True)
    return []
