"""``python -m falq.ops.bench.catalogue``: what the catalogue costs and gives, measured.

Three figures (each on this machine, against a reference measured in the same run):

1. **Archive throughput** (PostgreSQL and SQLite): finished jobs are saved into Redis at a
   fixed rate (the pipeline's; ``--rate``, default 200 jobs/s, about twice one worker's
   benchmark rate) while one archiver (:class:`falq.workers.maintenance.archive.Archiver`) runs; printed:
   jobs/s completed against jobs/s archived and the largest backlog, then the drain rate of a
   backlog (``--drain`` jobs) with and without ``job.json`` to S3 (moto, in-process).
2. **Redis memory per finished job** at ``--memory-jobs`` (100,000) synthetic finished jobs:
   before (the record kept ``FALQ_RECORD_TTL_S``, 7 days) and after (archived: the record keeps
   ``FALQ_ARCHIVED_TTL_S``, 1 day, then nothing, its index entries pruned), from ``used_memory``.
3. **Search latency** over ``--rows`` (1,000,000) synthetic catalogue rows on PostgreSQL: text
   in the prompt, last 7 days, one endpoint; p50/p95 of ``--queries`` queries and the plan.

Example::

    python -m falq.ops.bench.catalogue                 # everything, ~5 minutes
    python -m falq.ops.bench.catalogue --only search --rows 200000
"""

from __future__ import annotations

import random
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import click
import psycopg
import redis
from pydantic import SecretStr

from falq.shared.catalogue.engine import make_engine, upgrade
from falq.shared.catalogue.store import Catalogue, CatalogueQuery, reset_catalogues
from falq.shared.jobs.records import JobRecord, StoredImage, Submission
from falq.shared.jobs.store import JobStore
from falq.shared.settings import Settings
from falq.testing.stack import RedisServer, S3Server

PG = "postgresql://postgres@127.0.0.1:5432"
EP = "fal-ai/qwen-image-2/text-to-image"
ENDPOINTS = [EP, "fal-ai/qwen-image-2/pro/text-to-image", "fal-ai/qwen-image-2/edit", "fal-ai/qwen-image-2/pro/edit"]
_VOCAB = ("red fox snow lighthouse cliff dusk dawn harbor city night neon forest river mountain portrait cat dog "
          "castle desert ocean storm garden robot dragon train market bridge winter summer autumn spring glass "
          "copper marble velvet paper ink oil watercolor photo cinematic macro aerial vintage golden silver")
WORDS = _VOCAB.split()


def _pg_admin(sql: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


class Database:
    """A scratch database for one measurement (dropped afterwards)."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        if kind == "postgresql":
            self.name = f"falq_bench_{uuid.uuid4().hex[:10]}"
            _pg_admin(f'CREATE DATABASE "{self.name}"')
            self.url = f"{PG}/{self.name}"
        else:
            self.url = f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:8]}.sqlite3"

    def drop(self) -> None:
        reset_catalogues()
        if self.kind == "postgresql":
            _pg_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def realistic_record(i: int, rng: random.Random) -> JobRecord:
    """A finished job as a worker leaves it: prompt, one output, submissions, logs tail."""
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18)))
    rec = JobRecord.new(endpoint=rng.choice(ENDPOINTS), input={
        "prompt": prompt, "image_size": "landscape_16_9", "num_images": 1, "seed": i, "output_format": "png",
        "enable_safety_checker": True, "enable_prompt_expansion": True, "negative_prompt": "blurry"},
        metadata={"project": f"p{i % 20}", "batch": f"b{i // 1000}"}, cost_estimate=0.035)
    now = time.time()
    for s in ("submitting", "in_queue", "in_progress", "mirroring", "completed"):
        rec.move(s)  # type: ignore[arg-type]
    rid = uuid.uuid4().hex
    rec.attempts, rec.request_id, rec.submitted_at = 1, rid, now
    rec.status_url = f"https://queue.fal.run/fal-ai/qwen-image-2/requests/{rid}/status"
    rec.response_url = f"https://queue.fal.run/fal-ai/qwen-image-2/requests/{rid}"
    rec.submissions = [Submission(attempt=1, request_id=rid, submitted_at=now)]
    rec.add_logs([f"step {n}/12 ({n * 8}%)" for n in range(1, 13)], [now] * 12)
    rec.outputs = [StoredImage(index=0, bucket="falq", key=f"falq/{rec.endpoint}/2026/05/28/{rec.id}/0.png",
                               size=1_600_000 + i % 1000, sha256=uuid.uuid4().hex * 2, content_type="image/png",
                               width=1344, height=768, source_host="v3.fal.media")]
    rec.inference_time, rec.queue_wait, rec.seed, rec.cost_billed = 4.2, 0.8, i, 0.035
    rec.cost_source = "fal_billable_units"
    return rec


def _finish_many(store: JobStore, recs: list[JobRecord]) -> None:
    """Create and save each record as terminal (pipelined creates, one save each)."""
    store.create_many([(r, None) for r in recs])
    for r in recs:
        r.version = 1
        store.save(r)


# --- 1. throughput ---------------------------------------------------------------------------------


def throughput(kind: str, tmp: Path, redis_url: str, *, rate: float, seconds: float, drain: int,
               s3_url: str) -> dict[str, Any]:
    from falq.shared.storage.s3 import Storage
    from falq.workers.maintenance.archive import Archiver

    db = Database(kind, tmp)
    try:
        out: dict[str, Any] = {"database": kind}
        s = Settings(_env_file=None, database_url=db.url, redis_url=redis_url, key_prefix=f"b{uuid.uuid4().hex[:6]}",
                     database_auto_upgrade="always", job_json=False)  # type: ignore[call-arg]
        r = redis.Redis.from_url(redis_url)
        store = JobStore(r, prefix=s.key_prefix, archive=True)
        archiver = Archiver(store, s, None)
        archiver.catalogue  # noqa: B018 - connect and migrate before the clock starts
        archiver._ensure_schema()
        rng = random.Random(1)
        stop = threading.Event()
        loop = threading.Thread(target=archiver.run, args=(stop,), daemon=True)
        loop.start()
        n = int(rate * seconds)
        t0 = time.monotonic()
        max_backlog = 0
        for i in range(n):
            rec = realistic_record(i, rng)
            _finish_many(store, [rec])
            due = t0 + (i + 1) / rate
            if i % 50 == 0:
                max_backlog = max(max_backlog, archiver.backlog())
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        completed_s = time.monotonic() - t0
        while archiver.backlog():
            time.sleep(0.01)
        archived_s = time.monotonic() - t0
        stop.set()
        loop.join(10)
        out.update(completed_per_s=n / completed_s, archived_per_s=archiver.archived / archived_s,
                   lag_s=archived_s - completed_s, max_backlog=max_backlog, jobs=n)
        # drain a backlog: without, then with job.json (moto S3 over HTTP)
        for with_json in (False, True):
            s2 = s.model_copy(update={"job_json": with_json, "s3_endpoint_url": s3_url,
                                      "s3_bucket": f"bench-{uuid.uuid4().hex[:8]}",
                                      "aws_access_key_id": SecretStr("bench"),
                                      "aws_secret_access_key": SecretStr("bench-secret")})
            storage = Storage(s2) if with_json else None
            if storage is not None:
                storage.ensure_bucket()
            recs = [realistic_record(100_000 + i, rng) for i in range(drain)]
            _finish_many(store, recs)
            a = Archiver(store, s2, storage, consumer=f"drain-{with_json}")
            t1 = time.monotonic()
            while a.backlog():
                a.tick()
            out["drain_json_per_s" if with_json else "drain_per_s"] = drain / (time.monotonic() - t1)
        r.close()
        return out
    finally:
        db.drop()


# --- 2. Redis memory -------------------------------------------------------------------------------


def memory(tmp: Path, n: int, kind: str = "postgresql") -> dict[str, Any]:
    from falq.workers.maintenance.archive import Archiver
    from falq.workers.maintenance.reaper import prune_expired

    rng = random.Random(2)
    out: dict[str, Any] = {"jobs": n}
    for mode in ("before", "after"):
        server = RedisServer(tmp / f"redis-{mode}").start()
        db = Database(kind, tmp) if mode == "after" else None
        try:
            r = redis.Redis.from_url(server.url)
            store = JobStore(r, prefix="falq", ttl_s=7 * 86400, archive=mode == "after")
            base = int(r.info("memory")["used_memory"])
            for start in range(0, n, 1000):
                _finish_many(store, [realistic_record(start + i, rng) for i in range(min(1000, n - start))])
            held = int(r.info("memory")["used_memory"]) - base
            out[f"{mode}_bytes_per_job"] = held / n
            if mode == "after":
                assert db is not None
                s = Settings(_env_file=None, database_url=db.url, redis_url=server.url, job_json=False,
                             database_auto_upgrade="always", archived_ttl_s=86400)  # type: ignore[call-arg]
                a = Archiver(store, s, None)
                t0 = time.monotonic()
                while a.backlog():
                    a.tick()
                out["archive_100k_s"] = time.monotonic() - t0
                a.trim()
                out["archived_window_bytes_per_job"] = (int(r.info("memory")["used_memory"]) - base) / n
                # the day passes: every archived record gets 1 s left, Redis expires them
                pipe = r.pipeline(transaction=False)
                for key in r.scan_iter(match="falq:job:*", count=10_000):
                    pipe.expire(key, 1)
                pipe.execute()
                time.sleep(1.5)
                while any(True for _ in r.scan_iter(match="falq:job:*", count=10_000)):
                    time.sleep(0.5)
                day_later = s.model_copy(update={"archived_ttl_s": 1})
                while prune_expired(store, day_later, batch=10_000):  # the reaper drops their index entries
                    pass
                out["after_expiry_bytes_per_job"] = max(0, int(r.info("memory")["used_memory"]) - base) / n
            r.close()
        finally:
            server.stop()
            if db is not None:
                db.drop()
    return out


# --- 3. search latency -----------------------------------------------------------------------------


_FILL_PG = """
INSERT INTO jobs (id, tenant, batch_id, endpoint, lane, state, prompt, negative_prompt, seed, input, metadata,
                  outputs, submissions, request_id, attempts, errors, error_type, moderation, cost_estimate,
                  cost_billed, cost_source, queued_at, completed_at, created_at, updated_at, finished_at,
                  inference_time, queue_wait, logs, parents, version, archived_at)
SELECT md5(g::text || :salt), 't' || (g % 5), 'b' || (g / 1000), ep, 'bulk', 'completed', p, 'blurry', g,
       jsonb_build_object('prompt', p, 'seed', g), jsonb_build_object('project', 'p' || (g % 20)),
       '[]'::jsonb, '[]'::jsonb, md5(g::text), 1, '[]'::jsonb, NULL, NULL, 0.035, 0.035, 'fal_billable_units',
       ts, ts + 5, ts, ts + 5, ts + 5, 4.2, 0.8, '[]'::jsonb, '[]'::jsonb, 1, ts + 6
FROM (
  SELECT g,
         (ARRAY[{eps}])[1 + (g % 4)] AS ep,
         CAST(:now AS double precision) - (g::double precision / CAST(:n AS integer)) * 90 * 86400 AS ts,
         (SELECT string_agg(w, ' ') FROM (
            SELECT (ARRAY[{words}])[1 + floor(random() * {nw})::int] AS w
            FROM generate_series(1, 6 + (g % 12)) WHERE g > 0) q) AS p
  FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) AS g
) s
"""


def search_latency(tmp: Path, rows: int, queries: int, kind: str = "postgresql") -> dict[str, Any]:
    db = Database(kind, tmp)
    try:
        engine = make_engine(db.url, timeout_s=600)
        upgrade(engine)
        cat = Catalogue(engine)
        now = time.time()
        t0 = time.monotonic()
        if kind == "postgresql":
            import sqlalchemy as sa

            sql = _FILL_PG.format(eps=", ".join(f"'{e}'" for e in ENDPOINTS),
                                  words=", ".join(f"'{w}'" for w in WORDS), nw=len(WORDS))
            with engine.begin() as conn:
                step = 100_000
                for lo in range(1, rows + 1, step):
                    conn.execute(sa.text(sql), {"salt": "x", "now": now, "n": rows, "lo": lo,
                                                "hi": min(rows, lo + step - 1)})
            with engine.begin() as conn:
                conn.execute(sa.text("ANALYZE jobs"))
        else:
            from falq.shared.catalogue.rows import row_from_record

            rng = random.Random(3)
            batch = []
            for i in range(rows):
                rec = JobRecord.new(endpoint=ENDPOINTS[i % 4], input={"prompt": " ".join(
                    rng.choice(WORDS) for _ in range(6 + i % 12))}, metadata={"project": f"p{i % 20}"})
                rec.created_at = now - (i / rows) * 90 * 86400
                rec.walk_to("completed")
                batch.append(row_from_record(rec, archived_at=now))
                if len(batch) >= 5000:
                    cat.upsert(batch)
                    batch = []
            cat.upsert(batch)
        fill_s = time.monotonic() - t0
        rng = random.Random(4)
        times = []
        counts = []
        for i in range(queries):
            text = " ".join(rng.sample(WORDS, 2 if i % 2 else 1))
            q = CatalogueQuery(text=text, endpoint=rng.choice(ENDPOINTS), since=now - 7 * 86400, limit=100)
            t1 = time.perf_counter()
            got = cat.search_rows(q)
            times.append((time.perf_counter() - t1) * 1000)
            counts.append(len(got))
        plan_q = CatalogueQuery(text="red fox", endpoint=EP, since=now - 7 * 86400, limit=100)
        times.sort()
        return {"database": kind, "rows": rows, "fill_s": fill_s, "queries": queries,
                "p50_ms": statistics.median(times), "p95_ms": times[int(len(times) * 0.95) - 1],
                "mean_hits": statistics.mean(counts), "plan": cat.explain(plan_q)}
    finally:
        db.drop()


@click.command()
@click.option("--only", type=click.Choice(["throughput", "memory", "search"]), multiple=True)
@click.option("--rate", type=float, default=200.0, show_default=True, help="Finished jobs/s fed to the archiver.")
@click.option("--seconds", type=float, default=15.0, show_default=True)
@click.option("--drain", type=int, default=5000, show_default=True, help="Backlog drained per run.")
@click.option("--memory-jobs", type=int, default=100_000, show_default=True)
@click.option("--rows", type=int, default=1_000_000, show_default=True, help="Catalogue rows for the search.")
@click.option("--queries", type=int, default=100, show_default=True)
@click.option("--sqlite-rows", type=int, default=0, show_default=True,
              help="Also time the search on SQLite at this many rows (0: no).")
def main(only: tuple[str, ...], rate: float, seconds: float, drain: int, memory_jobs: int, rows: int,
         queries: int, sqlite_rows: int) -> None:
    """Measure archive throughput, Redis memory per finished job and search latency."""
    todo = set(only or ("throughput", "memory", "search"))
    with tempfile.TemporaryDirectory(prefix="falq-bench-cat-") as d:
        tmp = Path(d)
        if "throughput" in todo:
            server = RedisServer(tmp / "redis-tp").start()
            s3 = S3Server().start()
            try:
                for kind in ("postgresql", "sqlite"):
                    t = throughput(kind, tmp, server.url, rate=rate, seconds=seconds, drain=drain, s3_url=s3.url)
                    print(f"archive {kind:10}: completed {t['completed_per_s']:7.1f} jobs/s, archived "
                          f"{t['archived_per_s']:7.1f} jobs/s (lag {t['lag_s']:.2f}s after the last, max backlog "
                          f"{t['max_backlog']}); backlog drain {t['drain_per_s']:7.0f} jobs/s, with job.json to "
                          f"S3 (moto) {t['drain_json_per_s']:6.0f} jobs/s", flush=True)
            finally:
                s3.stop()
                server.stop()
        if "memory" in todo:
            m = memory(tmp, memory_jobs)
            print(f"redis memory at {m['jobs']:,} finished jobs: before {m['before_bytes_per_job']:,.0f} B/job for "
                  f"FALQ_RECORD_TTL_S (7 d); after: {m['after_bytes_per_job']:,.0f} B/job until archived "
                  f"({m['archive_100k_s']:.1f}s for all), {m['archived_window_bytes_per_job']:,.0f} B/job for "
                  f"FALQ_ARCHIVED_TTL_S (1 d), then {m['after_expiry_bytes_per_job']:,.0f} B/job", flush=True)
            per_day = 1_000_000
            before = m["before_bytes_per_job"] * per_day * 7 / 2**30
            after = m["archived_window_bytes_per_job"] * per_day / 2**30
            print(f"  at 1,000,000 jobs/day: {before:,.1f} GiB of records before, {after:,.1f} GiB after", flush=True)
        if "search" in todo:
            for kind, n in (("postgresql", rows), ("sqlite", sqlite_rows)):
                if not n:
                    continue
                sres = search_latency(tmp, n, queries, kind)
                print(f"search {kind} over {sres['rows']:,} rows (filled in {sres['fill_s']:.0f}s): text + last 7 days "
                      f"+ one endpoint, {sres['queries']} queries: p50 {sres['p50_ms']:.1f} ms, p95 "
                      f"{sres['p95_ms']:.1f} ms ({sres['mean_hits']:.0f} rows each on average)")
                print("  plan (text 'red fox', 7 days, one endpoint):")
                for line in sres["plan"].splitlines():
                    print(f"    {line}")


if __name__ == "__main__":
    main()
