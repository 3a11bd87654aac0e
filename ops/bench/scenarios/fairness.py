"""Fairness between tenants sharing one fal account (issue 15), against plain FIFO in the same run.

falq's cap is the bottleneck (``max_outstanding`` 8, no rate limit, emulator without a limit of
its own); one worker process. Submissions are counted where fal sees them, the emulator's log,
and attributed to tenants through the ``X-Falq-Job-Id`` header and the job records.

* **shares**: tenants a, b, c with weights 1, 1, 2 hold n bulk jobs each, all enqueued before
  the worker starts; over the steady state (from the dispatch target on, while all three still
  wait: about 1.8 n submissions) each tenant's share must be within 3 points of its weight's
  share (25/25/50 %). Reference: ``FALQ_FAIR_DISPATCH=false`` (falq before tenants: every job
  published at enqueue, FIFO).
* **no starvation**: tenant A holds 20,000 queued bulk jobs (quick: 2,000) and is running
  (latency uniform 1-3 s, so slots free at random times); then five new tenants (quick: three) arrive one after
  the other, each with 50 bulk jobs (the rest of them cancelled before the next arrives, so each
  meets A alone). Figure: the mean time from a newcomer's enqueue to its
  first submission at fal, against 2x the mean slot turnover (mean fal latency / cap). Reference:
  FIFO puts the newcomer behind every queued job of A; it is watched for 20 s (quick: 10 s; it must get
  nothing meanwhile) and its figure is A's queue ahead of it times the measured turnover.
* **cost**: worker CPU and Redis commands per job (Redis ``INFO`` ``total_commands_processed``
  deltas, the harness' own polling taken out) for three tenants with fair dispatch, beside the
  single-tenant figures with and without it.
* **scale**: 100,000 jobs (quick: 20,000) waiting across 20 tenants: Redis memory per waiting
  job (the record and its ready entry; the ready entry alone) and the dispatch script's time
  per dispatched job, with no worker (the script timed alone, one job per call).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from falq.ops.bench.harness import Harness, children, cpu_s
from falq.ops.bench.model import T2I, Goal, Row
from falq.shared.limits.store import write_config
from falq.shared.tenants.store import Tenant, TenantStore

NAME = "fairness"
REF_FIFO = "falq FIFO"
CAP = 8
FIFO = {"FALQ_FAIR_DISPATCH": "false"}


def _producer(h: Harness, fifo: bool) -> Any:
    from falq.producers import Falq

    return Falq(h.stack.settings(**h.production, **(FIFO if fifo else {})))


def _enqueue(falq: Any, tenant: str, n: int, tag: str, batch: int = 5000) -> list[str]:
    from falq.producers.client import JobRequest

    ids: list[str] = []
    for start in range(0, n, batch):
        reqs = [JobRequest(T2I, {"prompt": f"{tag} {tenant} {i}", "seed": i}, "bulk", tenant=tenant)
                for i in range(start, min(n, start + batch))]
        ids += [job_id for job_id, _ in falq.submit_many(reqs)]
    return ids


def _setup(h: Harness, latency: float | str, tenants: dict[str, float], cap: int = CAP) -> None:
    h.reset(latency=latency if isinstance(latency, str) else f"fixed:{latency:g}", concurrency=0)
    store = TenantStore(h.redis)
    for name, weight in tenants.items():
        store.put(Tenant(name=name, weight=weight))
    write_config(h.redis, h.stack.settings().key_prefix, {"max_outstanding": str(cap), "rate": "0"})


def _order(h: Harness, since: float, owner: dict[str, str]) -> list[dict[str, Any]]:
    """The emulator's submissions since ``since`` in arrival order, each with its ``tenant``."""
    out = []
    for req in sorted(h.emulator_requests(since), key=lambda r: r["submitted_at"]):
        job = {k.lower(): v for k, v in (req.get("headers") or {}).items()}.get("x-falq-job-id")
        if job in owner:
            out.append({**req, "tenant": owner[job]})
    return out


def _shares(h: Harness, n: int, latency: float, fifo: bool) -> tuple[float, float]:
    """``(largest deviation from the weighted shares in points, submissions per second)``."""
    weights = {"a": 1.0, "b": 1.0, "c": 2.0}
    _setup(h, latency, weights)
    falq = _producer(h, fifo)
    since = time.time() - 1
    owner = {j: t for t in weights for j in _enqueue(falq, t, n, "shares")}
    h.start_falq_workers(1, 200, env=FIFO if fifo else None)
    total = len(owner)
    h.wait_until(lambda: h.completed() >= total, 600 + 3 * total * latency / CAP, 0.5, f"{total} share jobs")
    subs = _order(h, since, owner)
    order = [r["tenant"] for r in subs]
    rate = (len(subs) - 1) / max(1e-9, subs[-1]["submitted_at"] - subs[0]["submitted_at"])
    # All three backlogged: from the dispatch target (the first CAP went to a, enqueued first)
    # until c (half the share) is close to running out, after about 2n submissions.
    steady = order[CAP:CAP + int(1.8 * n)]
    counts = Counter(steady)
    dev = max(abs(100 * counts[t] / len(steady) - 100 * w / sum(weights.values())) for t, w in weights.items())
    return dev, rate


def _starvation(h: Harness, n_a: int, latency: str, fifo: bool, watch_s: float,
                arrivals: int) -> tuple[list[float], float, int, float]:
    """``(per newly arriving tenant: s from its enqueue to its first submission (inf: none while
    watched), mean slot turnover s, A's jobs queued ahead of the first newcomer, submissions per
    second over the watch)``.

    Tenant A's backlog runs first; then ``arrivals`` tenants (b1, b2, ...) each submit 50 bulk
    jobs, one after the other, each measured on its own."""
    names = [f"b{i + 1}" for i in range(arrivals)]
    _setup(h, latency, {"a": 1.0, **dict.fromkeys(names, 1.0)})
    falq = _producer(h, fifo)
    owner = dict.fromkeys(_enqueue(falq, "a", n_a, "starve"), "a")
    h.start_falq_workers(1, 200, env=FIFO if fifo else None)
    since = time.time() - 1
    # Past the start, when the first CAP requests went out together: their completions spread out.
    h.wait_until(lambda: h.completed() >= 6 * CAP, 180, 0.2, "tenant a flowing")
    ahead = n_a - h.completed()
    waits = []
    for name in names:
        t0 = time.time()
        new = _enqueue(falq, name, 50, "starve")
        owner.update(dict.fromkeys(new, name))
        first = float("inf")
        end = time.monotonic() + watch_s
        while time.monotonic() < end:
            subs = [r["submitted_at"] for r in _order(h, since, owner) if r["tenant"] == name]
            if subs:
                first = min(subs) - t0
                break
            time.sleep(0.05)
        waits.append(first)
        if first == float("inf"):
            break  # FIFO: the next ones are behind this one too
        # Each newcomer meets A alone (as the B does), not the newcomers before it:
        # cancel what is left of this one's jobs before the next arrives.
        for job_id in new:
            falq.cancel(job_id)
        time.sleep(1.0)
    subs = _order(h, since, owner)
    done_a = [r for r in subs if r["tenant"] == "a" and r.get("completed_at")]
    mean_latency = sum(r["completed_at"] - r["submitted_at"] for r in done_a) / max(1, len(done_a))
    steady = [r["submitted_at"] for r in subs][6 * CAP:]
    rate = (len(steady) - 1) / max(1e-9, steady[-1] - steady[0]) if len(steady) > 1 else float("nan")
    return waits, mean_latency / CAP, ahead, rate


def _cost(h: Harness, n: int, tenants: list[str], fifo: bool) -> tuple[float, float]:
    """``(worker CPU ms per job, Redis commands per job)`` for ``n`` jobs spread over ``tenants``."""
    _setup(h, 0.0, dict.fromkeys(tenants, 1.0), cap=20)
    falq = _producer(h, fifo)
    pids = h.start_falq_workers(1, 100, env=FIFO if fifo else None)
    time.sleep(1.5)
    procs = [p for pid in pids for p in children(pid)]
    cpu0, cmd0 = cpu_s(procs), h.redis_commands()
    for i, t in enumerate(tenants):
        _enqueue(falq, t, n // len(tenants) + (1 if i < n % len(tenants) else 0), "cost")
    polls = 0

    def done() -> bool:
        nonlocal polls
        polls += 1
        return bool(h.completed() >= n)

    h.wait_until(done, 300, 0.2, "cost jobs")
    cpu1, cmd1 = cpu_s(procs), h.redis_commands()
    from falq.shared.jobs.records import STATES

    cmds = cmd1 - cmd0 - 1 - polls * len(STATES)
    return (cpu1 - cpu0) * 1000 / n, cmds / n


def _scale(h: Harness, n: int, tenants: int) -> tuple[float, float, float]:
    """``(bytes per waiting job, bytes per ready entry, dispatch script µs per job)``."""
    from falq.shared.fairshare.scheduler import FairShare

    # A cap of 1: the producers' own dispatches send one job in all, the rest waits.
    _setup(h, 0.0, {f"t{i:02d}": 1.0 + i % 3 for i in range(tenants)}, cap=1)
    falq = _producer(h, False)
    used0 = int(h.redis.info("memory")["used_memory"])
    fair = FairShare(h.redis, falq.settings)
    for i in range(tenants):
        _enqueue(falq, f"t{i:02d}", n // tenants, "scale")
    per_job = (int(h.redis.info("memory")["used_memory"]) - used0) / n
    ready_key = falq.store.keys.fair_ready("bulk", "t00")
    per_entry = int(h.redis.memory_usage(ready_key) or 0) / max(1, int(h.redis.zcard(ready_key)))
    # Time the script alone: each call dispatches one job (room 1), then the job "finishes".
    inflight = falq.store.keys.inflight
    took, calls = 0.0, 300
    for _ in range(calls):
        h.redis.delete(inflight, falq.store.keys.fair_unadmitted, falq.store.keys.fair_count)
        t0 = time.perf_counter()
        got = fair.take(1)
        took += time.perf_counter() - t0
        assert len(got) == 1, got
    return per_job, per_entry, took * 1e6 / calls


def run(h: Harness) -> list[Row]:
    quick = h.quick
    n = h.size("fairness.jobs", 100, 300)
    n_a = h.size("fairness.backlog", 2000, 20000)
    n_cost = h.size("fairness.cost_jobs", 300, 1000)
    n_scale = h.size("fairness.scale_jobs", 20000, 100000)
    lat_shares, lat_starve = 0.3, "uniform:1,3"
    q = " (quick: scaled down)" if quick else ""
    arrivals = 3 if quick else 5

    dev_fair, rate_fair = _shares(h, n, lat_shares, fifo=False)
    dev_fifo, rate_fifo = _shares(h, n, lat_shares, fifo=True)
    waits, turnover, _, rate2_fair = _starvation(h, n_a, lat_starve, fifo=False, watch_s=60, arrivals=arrivals)
    first_b = sum(waits) / len(waits)
    watch = 10.0 if quick else 20.0
    fifo_waits, turnover_fifo, ahead, rate2_fifo = _starvation(h, n_a, lat_starve, fifo=True, watch_s=watch,
                                                               arrivals=1)
    first_fifo = fifo_waits[0]
    fifo_estimate = first_fifo if first_fifo != float("inf") else ahead * turnover_fifo
    cpu3, cmd3 = _cost(h, n_cost, ["a", "b", "c"], fifo=False)
    cpu1, cmd1 = _cost(h, n_cost, ["default"], fifo=False)
    cpu0, cmd0 = _cost(h, n_cost, ["default"], fifo=True)
    per_job, per_entry, lua_us = _scale(h, n_scale, 20)
    h.reset()
    return [
        Row(NAME, "largest share deviation, weights 1:1:2", "points", dev_fair, dev_fifo, REF_FIFO,
            Goal("falq", "<=", 3.0), f"a, b, c hold {n} bulk jobs each; cap {CAP}, latency {lat_shares:g}s; "
                                    f"steady state: submissions {CAP}..{CAP + int(1.8 * n)}" + q),
        Row(NAME, "submissions per second under the cap", "per s", rate_fair, rate_fifo, REF_FIFO, None,
            f"the shares run: cap {CAP} / latency {lat_shares:g}s = {CAP / lat_shares:.1f}/s at most; fair "
            f"dispatch hands a freed slot on (publish, pick-up, POST) instead of a job waiting in the limiter"),
        Row(NAME, "submissions per second, latency 1-3 s", "per s", rate2_fair, rate2_fifo, REF_FIFO, None,
            f"the no-starvation run (A's backlog): cap {CAP} / mean latency 2 s = {CAP / 2:.1f}/s at most"),
        Row(NAME, "new tenant's first submission after its enqueue", "s", first_b, fifo_estimate, REF_FIFO,
            Goal("falq", "<=", 2 * turnover),
            f"A holds {n_a} queued bulk jobs; cap {CAP}, latency {lat_starve}, mean slot turnover "
            f"{turnover:.3f}s (goal 2x); mean of {arrivals} newcomers (each 50 jobs), each: "
            f"{', '.join(f'{w:.2f}' for w in waits)} s; FIFO: no newcomer submission in {watch:g}s"
            f"{'' if first_fifo == float('inf') else ' (it came)'}, so {ahead} of A's jobs ahead "
            f"x turnover" + q),
        Row(NAME, "worker CPU per job, 3 tenants", "ms", cpu3, cpu0, REF_FIFO, None,
            f"{n_cost} jobs, cap 20, latency 0; single tenant with fair dispatch: {cpu1:.2f} ms" + q),
        Row(NAME, "Redis commands per job, 3 tenants", "cmds", cmd3, cmd0, REF_FIFO, None,
            f"single tenant with fair dispatch: {cmd1:.1f}"),
        Row(NAME, "Redis memory per waiting job", "bytes", per_job, per_entry, "its ready entry", None,
            f"{n_scale} jobs waiting across 20 tenants (record + indexes + ready entry)" + q),
        Row(NAME, "dispatch script time per job", "us", lua_us, float("nan"), "-", None,
            f"{n_scale} jobs waiting across 20 tenants, one job per call (client round trip included)"),
    ]
