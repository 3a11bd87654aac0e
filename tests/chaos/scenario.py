"""The chaos scenario: every fault at once, then an audit of what falq promised.

Faults, all during one run:

* the emulator answers 10% of calls with 5xx, 5% with 429, drops 2% of connections,
  slows 2% down and finishes 2% of requests COMPLETED-with-error (transient);
* 5% of result GETs of requests that succeeded answer 500 *with* ``x-fal-request-id``
  (fal-ai/fal#694): falq must fetch the same result again, never pay a second time;
* fal's edge is down for submits for a while (nginx 502 pages, nothing created): no job may
  fail or spend an attempt on it;
* some running jobs are cancelled, and the emulator's running apps ignore half of all cancels
  (its default, as fal's own e2e test describes a normal app): what fal finished anyway is billed,
  so its images must be in S3 and its cost on the record;
* S3 fails a share of writes (503 SlowDown or a dropped connection) through a proxy;
* a worker process is SIGKILLed every few seconds and a new one started;
* Redis (with AOF, as in production) is killed and restarted once mid-run;
* the jobs belong to three tenants (weights 1, 1, 2; one with its own outstanding cap of 8)
  and go through fair dispatch (per-tenant ready sets) under a global cap of 30.

The audit checks: every job terminal; every completed job's images in S3 with the
recorded sha256; fal submissions per job never above the attempts the job recorded; no
job lost; every failure explained. :func:`run` returns the figures; :func:`table`
renders them.
"""

from __future__ import annotations

import hashlib
import io
import random
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from falq.testing.stack import DevStack
from tests.chaos.s3_faults import S3FaultProxy

ENDPOINTS = [
    "fal-ai/qwen-image-2/text-to-image",
    "fal-ai/qwen-image-2/pro/text-to-image",
    "fal-ai/qwen-image-2/edit",
    "fal-ai/qwen-image-2/pro/edit",
]
EMULATOR_FAULTS = {"fail_5xx": 0.10, "fail_429": 0.05, "drop": 0.02, "slow": 0.02, "completed_error": 0.02,
                   "submit_500_created": 0.02, "moderation_rate": 0.01, "result_5xx_with_id": 0.05}
#: Failures the faults above cause by design: a moderated prompt, and a submit whose answer
#: was dropped after it was sent (never sent again: FALQ_SUBMIT_UNCERTAIN=fail).
EXPECTED_FAILURES = frozenset({"content_policy", "submit_uncertain", "parent_failed"})
#: name -> (weight, own max_outstanding): every job is enqueued for one of them, in turn.
TENANTS = {"shop": (1.0, None), "ads": (1.0, 8), "batch": (2.0, None)}


@dataclass
class Report:
    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    unexplained_failures: int = 0
    images_checked: int = 0
    images_bad: int = 0
    submissions: int = 0
    paid_twice: int = 0
    over_attempts: int = 0
    multi_submission_jobs: int = 0
    #: Submissions beyond 1 + the request's own failures + submit_interrupted: what an ingress
    #: error (or any answer that said nothing about the request) would have cost.
    extra_submissions: int = 0
    failed_by_kind: dict[str, int] = field(default_factory=dict)
    worker_kills: int = 0
    redis_restarts: int = 0
    s3_faults: dict[str, int] = field(default_factory=dict)
    emulator_faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    #: Cancels sent to running jobs; of those ended ``cancelled``, how fal ended them.
    cancels_sent: int = 0
    cancelled_by_outcome: dict[str, int] = field(default_factory=dict)
    #: Cancelled jobs fal finished anyway whose images or cost falq did not keep.
    paid_output_dropped: int = 0
    submit_outage_s: float = 0.0
    #: The chained batch (generates, each with edits of its image): jobs, and batch states whose
    #: kept count differs from a recount from the records (must be none).
    chain_jobs: int = 0
    batch_count_mismatches: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Jobs per tenant, and fair-dispatch state left once every job is terminal (jobs still
    #: waiting in ready sets, holding dispatch room, or counted as dispatched): must be none.
    tenants: dict[str, int] = field(default_factory=dict)
    fair_leftover: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.unexplained_failures == 0 and self.images_bad == 0
                and self.over_attempts == 0 and self.states.get("terminal_missing", 0) == 0
                and self.extra_submissions == 0 and not self.batch_count_mismatches and not self.fair_leftover)

    @property
    def expected_failures(self) -> int:
        return sum(n for kind, n in self.failed_by_kind.items() if kind in EXPECTED_FAILURES)


def _edit_source() -> str:
    from falq.shared.storage.images import to_data_uri

    buf = io.BytesIO()
    Image.new("RGB", (400, 400), (30, 90, 160)).save(buf, "PNG")
    return to_data_uri(buf.getvalue(), "image/png")


def run(n_jobs: int, *, kill_every_s: float = 4.0, workers: int = 2, concurrency: int = 100,
        outage_s: float = 30.0,
        s3_failure_rate: float = 0.1, timeout_s: float = 600.0, seed: int = 7) -> Report:
    """Run the scenario with ``n_jobs`` jobs; returns the audit."""
    from falq.producers import Falq
    from falq.producers.client import JobRequest
    from falq.shared.storage.s3 import Storage

    rng = random.Random(seed)
    report = Report(jobs=n_jobs)
    env = {"FALQ_VISIBILITY_TIMEOUT_S": "20", "FALQ_LEASE_TTL_S": "4", "FALQ_MAX_ATTEMPTS": "10",
           "FALQ_RETRY_BASE_S": "0.2", "FALQ_RETRY_MAX_S": "2", "FALQ_SLOT_LEASE_S": "5"}
    emulator = {"latency": "uniform:0.2,1.5", "concurrency": 40, "tiny_images": True, "fault_seed": seed}
    t0 = time.monotonic()
    with DevStack(aof=True, emulator=emulator, env=env) as stack, \
            S3FaultProxy(stack.s3.url, put_failure_rate=s3_failure_rate, seed=seed) as proxy:
        stack.extra_env["FALQ_S3_ENDPOINT_URL"] = proxy.url  # workers write through the proxy
        direct = stack.settings(FALQ_S3_ENDPOINT_URL=stack.s3.url)
        falq = Falq(direct)
        from falq.shared.limits.store import write_config
        from falq.shared.tenants.store import Tenant, TenantStore

        for name, (weight, cap) in TENANTS.items():
            TenantStore(falq.redis).put(Tenant(name=name, weight=weight, max_outstanding=cap))
        write_config(falq.redis, falq.settings.key_prefix, {"max_outstanding": "30"})
        Storage(direct).ensure_bucket()
        source = _edit_source()
        requests = []
        for i in range(n_jobs):
            endpoint = ENDPOINTS[i % 4]
            data: dict[str, Any] = {"prompt": f"chaos {i}", "seed": i}
            if "edit" in endpoint:
                data["image_urls"] = [source]
            tenant = list(TENANTS)[i % len(TENANTS)]
            requests.append(JobRequest(endpoint, falq.validate(endpoint, data, tenant=tenant).input,
                                       lane="bulk" if i % 2 else "interactive", tenant=tenant))
            report.tenants[tenant] = report.tenants.get(tenant, 0) + 1
        job_ids = [job_id for job_id, _ in falq.submit_many(requests)]
        batch_id, chained = _chained_batch(falq, max(3, n_jobs // 20))
        job_ids += chained
        report.chain_jobs = len(chained)
        total = len(job_ids)
        stack.emu.configure(**EMULATOR_FAULTS)
        procs = [stack.start_worker(concurrency=concurrency) for _ in range(workers)]
        stop = threading.Event()

        cancel_budget = max(4, n_jobs // 25)

        def canceller() -> None:
            # Cancel running jobs only: a cancel before submit is the easy case; one fal is
            # running is where fal may finish (and bill) the generation anyway.
            while not stop.wait(0.3) and report.cancels_sent < cancel_budget:
                try:
                    sample = falq.store.get_many(rng.sample(job_ids, min(20, len(job_ids))))
                    for rec in sample:
                        if rec is not None and rec.state == "in_progress" and report.cancels_sent < cancel_budget:
                            falq.cancel(rec.id)
                            report.cancels_sent += 1
                            break
                except Exception:  # Redis is restarting
                    continue

        def killer() -> None:
            restarted = outage = False
            while not stop.wait(kill_every_s):
                victim = rng.choice([p for p in procs if p.poll() is None] or procs)
                stack.kill_worker(victim, signal.SIGKILL)
                procs.remove(victim)
                report.worker_kills += 1
                procs.append(stack.start_worker(concurrency=concurrency))
                done = falq.store.counts()
                finished = done["completed"] + done["failed"] + done["cancelled"]
                if not outage and outage_s and finished >= total // 6:
                    stack.emu.configure(submit_outage_s=outage_s)  # fal's edge down for submits from now
                    report.submit_outage_s = outage_s
                    outage = True
                if not restarted and finished >= total // 3:
                    stack.redis.restart()
                    report.redis_restarts += 1
                    restarted = True

        chaos = threading.Thread(target=killer, daemon=True)
        chaos.start()
        cancels = threading.Thread(target=canceller, daemon=True)
        cancels.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                counts = falq.store.counts()
            except Exception:  # Redis is restarting
                time.sleep(0.5)
                continue
            if counts["completed"] + counts["failed"] + counts["cancelled"] >= total:
                break
            time.sleep(1.0)
        stop.set()
        chaos.join(30)
        cancels.join(30)
        stack.emu.configure(fail_5xx=0, fail_429=0, drop=0, slow=0, completed_error=0, submit_500_created=0,
                            moderation_rate=0, result_5xx_with_id=0, submit_outage_s=0)
        report.seconds = time.monotonic() - t0
        _audit(report, stack, falq, Storage(direct), job_ids)
        from falq.shared.batches.store import BatchStore

        batches = BatchStore(falq.redis, prefix=falq.settings.key_prefix)
        kept, recount = batches.get(batch_id).counts, batches.recount(batch_id, falq.store.get_many)
        report.batch_count_mismatches = {s: (kept[s], recount[s]) for s in kept if kept[s] != recount[s]}
        report.jobs = total
        report.s3_faults = dict(proxy.injected)
    return report


def _chained_batch(falq: Any, n: int) -> tuple[str, list[str]]:
    """A batch of ``n`` generates, each edited twice from its own output (``falq:LINE_ID#0``)."""
    from falq.producers.bulk.batches import enqueue_batch, open_batch
    from falq.producers.bulk.parse import BulkLine

    lines = []
    for i in range(n):
        gen = falq.validate(ENDPOINTS[0], {"prompt": f"chain root {i}", "seed": i})
        lines.append(BulkLine(len(lines) + 1, f"root-{i}", replace(gen, idempotency_key=f"chaos-root-{i}")))
        for k in range(2):
            edit = falq.validate(ENDPOINTS[2], {"prompt": f"chain edit {i}.{k}", "image_urls": [f"falq:root-{i}#0"]})
            key = f"chaos-edit-{i}-{k}"
            lines.append(BulkLine(len(lines) + 1, f"edit-{i}-{k}", replace(edit, idempotency_key=key)))
    batch, _ = open_batch(falq, name="chaos chain", source_name="chaos", source_sha256="0" * 64, run_key="chaos")
    return batch.id, enqueue_batch(falq, lines, batch)


def _audit(report: Report, stack: DevStack, falq: Any, storage: Any, job_ids: list[str]) -> None:
    from tests.conftest import emulator_submissions

    records = falq.store.get_many(job_ids)
    subs = emulator_submissions(stack)
    snapshot = stack.emu.requests(since=time.time() + 3600)
    report.emulator_faults = dict(snapshot.get("faults") or snapshot.get("rejected") or {})
    states: dict[str, int] = {}
    for job_id, rec in zip(job_ids, records, strict=True):
        if rec is None:
            report.lost += 1
            report.failures.append(f"{job_id}: record missing")
            continue
        states[rec.state] = states.get(rec.state, 0) + 1
        if not rec.terminal:
            states["terminal_missing"] = states.get("terminal_missing", 0) + 1
            report.failures.append(f"{job_id}: still {rec.state} ({_where(stack, job_id)}; "
                                   f"attempts {rec.attempts}, last error {rec.error})")
        n = len(subs.get(job_id, []))
        report.submissions += n
        if n > rec.attempts:
            report.over_attempts += 1
            report.failures.append(f"{job_id}: {n} submissions > {rec.attempts} attempts "
                                   f"(errors {[(e.type, e.message[:80]) for e in rec.errors]})")
        if n > 1:
            report.multi_submission_jobs += 1
        justified = 1 + sum(1 for e in rec.errors if e.type in ("fal_request_failed_transient", "submit_interrupted"))
        if n > justified:
            report.extra_submissions += n - justified
            # The evidence to tell a second POST from a record that lost its explanation:
            # fal's request ids and times beside the record's, and every error with its time.
            at_fal = [(s["request_id"], round(s["submitted_at"], 2)) for s in subs.get(job_id, [])]
            kept = [(s.request_id, s.attempt, round(s.submitted_at, 2)) for s in rec.submissions]
            errs = [(e.type, e.attempt, round(e.at, 2), e.message[:60]) for e in rec.errors]
            report.failures.append(f"{job_id}: {n} submissions, {justified} justified; state {rec.state}, "
                                   f"attempts {rec.attempts}; at fal {at_fal}; recorded {kept}; errors {errs}")
        if rec.state == "failed" and not (rec.error and rec.error.message):
            report.unexplained_failures += 1
        if rec.state == "failed" and rec.error:
            report.failed_by_kind[rec.error.type] = report.failed_by_kind.get(rec.error.type, 0) + 1
        if rec.state == "cancelled":
            outcome = rec.fal_outcome or ("before_submit" if not rec.submissions else "none")
            report.cancelled_by_outcome[outcome] = report.cancelled_by_outcome.get(outcome, 0) + 1
            billed_at_fal = any(s.get("billable_units") for s in subs.get(job_id, []))
            if billed_at_fal and not (rec.fal_outcome == "finished" and rec.outputs and rec.cost_billed):
                report.paid_output_dropped += 1
                report.failures.append(f"{job_id}: fal billed its cancelled request but falq kept "
                                       f"{len(rec.outputs)} images, cost {rec.cost_billed}")
        if rec.state == "completed" or (rec.state == "cancelled" and rec.fal_outcome == "finished"):
            for img in rec.outputs:
                report.images_checked += 1
                data = storage.get_bytes(img.key)
                if hashlib.sha256(data).hexdigest() != img.sha256 or len(data) != img.size:
                    report.images_bad += 1
                    report.failures.append(f"{job_id}: image {img.key} differs from its record")
    report.states = states
    keys = falq.store.keys
    left = {"dispatched (inflight)": int(falq.redis.zcard(keys.inflight)),
            "dispatched, not admitted": int(falq.redis.zcard(keys.fair_unadmitted)),
            "counted per tenant": sum(int(v) for v in falq.redis.hvals(keys.fair_count)),
            "ledger entries": int(falq.redis.hlen(keys.ledger)),
            "waiting in ready sets": sum(int(falq.redis.zcard(k)) for k in falq.redis.scan_iter(
                match=f"{falq.settings.key_prefix}:fair:ready:*"))}
    # A terminal job still in a ready set (cancelled while waiting) is dropped by the next
    # dispatch and holds nothing; held room or a count left over would be a leak.
    report.fair_leftover = {k: v for k, v in left.items() if v and k != "waiting in ready sets"}


def _where(stack: DevStack, job_id: str) -> str:
    """Where the broker holds messages of a stuck job (for the failure report)."""
    import redis

    r = redis.Redis.from_url(stack.redis.url)
    found = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"list" and any(job_id.encode() in m for m in r.lrange(key, 0, -1)):
            found.append(f"queue {key.decode(errors='replace')}")
        elif kind == b"hash" and key == b"unacked":
            found += ["unacked" for v in r.hvals(key) if job_id.encode() in v]
    lease = r.get(f"falq:lease:{job_id}")
    found.append(f"lease {'held' if lease else 'free'}")
    return ", ".join(found) or "no message anywhere"


def table(r: Report) -> str:
    rows = [
        ("jobs enqueued", r.jobs),
        ("completed / failed / cancelled",
         f"{r.states.get('completed', 0)} / {r.states.get('failed', 0)} / {r.states.get('cancelled', 0)}"),
        ("not terminal", r.states.get("terminal_missing", 0)),
        ("lost (no record)", r.lost),
        ("failures without an explanation", r.unexplained_failures),
        ("images checked in S3 / sha256 mismatches", f"{r.images_checked} / {r.images_bad}"),
        ("fal submissions (accepted)", r.submissions),
        ("jobs with submissions > attempts", r.over_attempts),
        ("jobs submitted more than once (each a recorded new attempt)", r.multi_submission_jobs),
        ("extra submissions not justified by the request's own failure", r.extra_submissions),
        ("cancels of running jobs / how fal ended the cancelled",
         f"{r.cancels_sent} / {', '.join(f'{k} {v}' for k, v in sorted(r.cancelled_by_outcome.items())) or 'none'}"),
        ("cancelled jobs fal billed whose images or cost falq dropped", r.paid_output_dropped),
        ("submit edge outage (nginx 502, nothing created)", f"{r.submit_outage_s:.0f}s"),
        ("failed by reason", ", ".join(f"{k} {v}" for k, v in sorted(r.failed_by_kind.items())) or "none"),
        ("worker SIGKILLs / Redis restarts", f"{r.worker_kills} / {r.redis_restarts}"),
        ("S3 write faults injected", ", ".join(f"{k} {v}" for k, v in sorted(r.s3_faults.items()))),
        ("emulator faults injected", ", ".join(f"{k} {v}" for k, v in sorted(r.emulator_faults.items()))),
        ("jobs of the chained batch / batch counts off a recount",
         f"{r.chain_jobs} / {r.batch_count_mismatches or 'none'}"),
        ("jobs per tenant / fair-dispatch state left",
         f"{', '.join(f'{k} {v}' for k, v in sorted(r.tenants.items()))} / {r.fair_leftover or 'none'}"),
        ("duration", f"{r.seconds:.0f}s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
